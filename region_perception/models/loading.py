"""Load a region model or segmenter by registry name, Hugging Face id or local path.

Released weights load with ``from_pretrained`` (downloaded once, then cached by
huggingface_hub). Tiny models are built offline on first use into the cache directory
and then loaded through that same ``from_pretrained`` path. If a released model cannot
be had (no network and nothing cached), the tiny model is used instead with a loud
notice: the caller's outputs are then flagged as random.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch

from .registry import TINY_MODELS, TINY_SAM, backend_of, tiny_fallback
from .tiny import (
    BENCH_REGIONVLM_SIZES,
    RANDOM_WEIGHTS_MARKER,
    build_tiny_florence2,
    build_tiny_regionvlm,
    cache_dir,
    is_current_tiny,
)

log = logging.getLogger("region_perception")

NOT_POINT_TRAINED = (
    "{name}: this InstructBLIP checkpoint was never trained on RegionVLM's point text; it loads and "
    "runs, but its answers ignore the region. Use the released RegionVLM weights "
    "(region-perception convert-regionvlm) for region answers."
)


def loud_notice(message: str) -> None:
    """A notice nobody can miss: logged and written to stderr in a banner."""
    log.debug(message)
    bar = "!" * 78
    print(f"{bar}\n!! {message}\n{bar}", file=sys.stderr, flush=True)


def resolve_device(device: str) -> torch.device:
    if device in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype in ("", "auto"):
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
    }
    if dtype not in table:
        raise ValueError(f"dtype {dtype!r}: expected one of auto, {', '.join(table)}")
    return table[dtype]


def tiny_path(name: str) -> Path:
    """The directory of a tiny model, built on first use."""
    path = cache_dir() / name
    if not is_current_tiny(path):
        if name == "tiny-regionvlm":
            build_tiny_regionvlm(path)
        elif name == "tiny-florence2":
            build_tiny_florence2(path)
        elif name == "bench-regionvlm":
            build_tiny_regionvlm(path, name=name, sizes=BENCH_REGIONVLM_SIZES)
        elif name == TINY_SAM:
            from .sam import build_tiny_sam

            build_tiny_sam(path)
        else:
            raise ValueError(f"unknown tiny model {name!r}")
    return path


def quiet_transformers() -> None:
    """No per-tensor progress bars: start-up output is for notices that matter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Can weights be downloaded now? (transformers itself retries for minutes when not.)"""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _from_pretrained(cls, source: str, **kwargs):
    """Cached copy first (no network); then a download if the hub can be reached."""
    try:
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        if Path(source).exists() or not hub_reachable():
            raise
    return cls.from_pretrained(source, **kwargs)


def load_region_model(
    name_or_path: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    trust_remote_code: bool = False,
    allow_fallback: bool = True,
):
    """A region backend (RegionVLM or Florence-2) from a name, Hugging Face id or directory.

    A released model that cannot be loaded (no network and nothing cached) is replaced by
    the tiny offline model of the same backend, with a loud notice.
    """
    from transformers import AutoProcessor, Florence2ForConditionalGeneration, InstructBlipForConditionalGeneration

    from .florence2 import Florence2Region
    from .regionvlm import RegionVLMModel

    quiet_transformers()
    backend = backend_of(name_or_path)
    source = str(tiny_path(name_or_path)) if name_or_path in TINY_MODELS else name_or_path
    model_cls = Florence2ForConditionalGeneration if backend == "florence2" else InstructBlipForConditionalGeneration
    try:
        processor = _from_pretrained(AutoProcessor, source, trust_remote_code=trust_remote_code)
        model = _from_pretrained(model_cls, source, dtype=dtype, trust_remote_code=trust_remote_code)
    except OSError as exc:
        if not allow_fallback or name_or_path in TINY_MODELS:
            raise
        tiny = tiny_fallback(name_or_path)
        loud_notice(
            f"could not load {name_or_path!r} ({str(exc).splitlines()[0][:160]}); no network and nothing "
            f"cached? FALLING BACK to {tiny} with RANDOM WEIGHTS: its outputs are not predictions."
        )
        return load_region_model(tiny, device, torch.float32, allow_fallback=False)
    local = Path(source)
    weights_random = (local / RANDOM_WEIGHTS_MARKER).exists()
    if weights_random:
        loud_notice(
            f"{name_or_path}: RANDOM WEIGHTS (tiny offline model); outputs exercise the code, they are not predictions."
        )
    if backend == "florence2":
        return Florence2Region(
            model.to(device), processor, name=name_or_path, device=device, weights_random=weights_random
        )
    meta = local / "region_perception.json"
    trained_on_points = json.loads(meta.read_text()).get("regionvlm_points", False) if meta.exists() else False
    if not weights_random and not trained_on_points:
        loud_notice(NOT_POINT_TRAINED.format(name=name_or_path))
    return RegionVLMModel(
        model.to(device),
        processor,
        name=name_or_path,
        device=device,
        weights_random=weights_random,
        trained_on_points=trained_on_points,
    )


def load_segmenter(spec: str, backend: str, cache, device: torch.device):
    """SAM by spec for ``backend`` ``sam`` (segment-anything) or ``hf-sam`` (transformers).

    ``sam``: ``tiny-sam``, ``vit_b:/path/sam_vit_b_01ec64.pth`` or a tiny-SAM directory.
    ``hf-sam``: a Hugging Face id (``facebook/sam-vit-base``) or a saved directory.
    Falls back to ``hf-sam`` when segment-anything is not installed.
    """
    from .sam import SegmentAnythingSegmenter, TransformersSamSegmenter, load_segment_anything

    if backend == "sam":
        try:
            import segment_anything  # noqa: F401
        except ImportError:
            loud_notice(
                "segment-anything is not installed; using transformers' SamModel (facebook/sam-vit-base) instead"
            )
            backend, spec = "hf-sam", "facebook/sam-vit-base"
    if backend == "hf-sam":
        return TransformersSamSegmenter(spec, cache, device)
    path = str(tiny_path(TINY_SAM)) if spec == TINY_SAM else spec
    sam, generator_kwargs, weights_random = load_segment_anything(path, device)
    if weights_random:
        loud_notice(f"{spec}: SAM with RANDOM WEIGHTS (tiny offline model); its masks are not segmentations.")
    return SegmentAnythingSegmenter(
        sam, cache, name=spec, weights_random=weights_random, generator_kwargs=generator_kwargs
    )
