"""Load a region model or segmenter by registry name, Hugging Face id or local path.

Released weights load with ``from_pretrained`` (downloaded once, then cached by
huggingface_hub). Tiny models are built offline on first use into the cache directory
and then loaded through that same ``from_pretrained`` path.

A model that cannot be loaded raises :class:`ModelLoadError` saying why (see
``sources.py``). Only where the user did not choose is another model used instead, with
a loud notice: the shipped default (``registry.offline_fallback``) when the hub cannot be
reached, or whatever ``fallback_model`` names explicitly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import loud_notice
from .registry import MODELS, TINY_MODELS, TINY_SAM, TOY_MODELS, offline_fallback
from .sources import ModelLoadError, Source, from_pretrained, is_hub_id, locate, one_line, read_config
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
        elif name == "tiny-regiongpt":
            from .regiongpt.tiny import build_tiny_regiongpt

            build_tiny_regiongpt(path)
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


@dataclass(frozen=True)
class Backend:
    """How one architecture loads: its transformers class and the wrapper the engine drives.

    To add a backend, add a row to BACKENDS: the config ``model_type`` values it accepts,
    a function returning the model class (imported lazily), and
    ``wrap(model, processor, name=, device=, weights_random=, path=)``.
    """

    model_types: tuple[str, ...]
    model_class: Callable[[], type]
    wrap: Callable[..., object]


def _florence2_class() -> type:
    from transformers import Florence2ForConditionalGeneration

    return Florence2ForConditionalGeneration


def _instructblip_class() -> type:
    from .regionvlm_model import RegionVLMForConditionalGeneration  # InstructBLIP (+ the toy's conv stem)

    return RegionVLMForConditionalGeneration


def _wrap_florence2(model, processor, *, name: str, device: torch.device, weights_random: bool, path: Path | None):
    from .florence2 import Florence2Region

    return Florence2Region(model, processor, name=name, device=device, weights_random=weights_random)


def _wrap_regionvlm(model, processor, *, name: str, device: torch.device, weights_random: bool, path: Path | None):
    from .regionvlm import RegionVLMModel

    meta = path / "region_perception.json" if path is not None else None
    trained_on_points = bool(meta and meta.exists() and json.loads(meta.read_text()).get("regionvlm_points", False))
    if not weights_random and not trained_on_points:
        loud_notice(NOT_POINT_TRAINED.format(name=name))
    return RegionVLMModel(
        model, processor, name=name, device=device, weights_random=weights_random, trained_on_points=trained_on_points
    )


def _regiongpt_class() -> type:
    from .regiongpt import RegionGPTForConditionalGeneration

    return RegionGPTForConditionalGeneration


def _wrap_regiongpt(model, processor, **kwargs):
    from .regiongpt.backend import wrap_regiongpt

    return wrap_regiongpt(model, processor, **kwargs)


BACKENDS: dict[str, Backend] = {
    "florence2": Backend(("florence2",), _florence2_class, _wrap_florence2),
    "regionvlm": Backend(("instructblip",), _instructblip_class, _wrap_regionvlm),
    # a LLaVA checkpoint loads as RegionGPT's starting point (new, untrained refinement)
    "regiongpt": Backend(("regiongpt", "llava"), _regiongpt_class, _wrap_regiongpt),
}


def backend_for(config: dict, source: Source) -> tuple[str, Backend]:
    """The backend whose ``model_types`` include the config's, or unknown_architecture."""
    model_type = str(config.get("model_type", ""))
    for key, backend in BACKENDS.items():
        if model_type in backend.model_types:
            return key, backend
    known = sorted(t for b in BACKENDS.values() for t in b.model_types)
    raise source.error(
        "unknown_architecture",
        f"config.json model_type {model_type!r} is none of {', '.join(known)} (read from {source.ref})",
    )


def region_model_names() -> list[str]:
    return sorted(set(MODELS) | TINY_MODELS)


def named_directory(name: str) -> Path | None:
    """The local directory of a registry name whose files are built or shipped here (not on
    the hub); None for any other name. Add a line here for a new kind of local model."""
    if name in TINY_MODELS:
        return tiny_path(name)
    if name in TOY_MODELS:
        return _toy_directory(name)
    return None


def _toy_directory(name: str) -> Path:
    """A packaged toy model's directory; never built or replaced on the fly (that would be untrained)."""
    from .toy import toy_path

    path = toy_path(name)
    if not (path / "config.json").is_file() or (path / RANDOM_WEIGHTS_MARKER).exists():
        raise ModelLoadError("not_found_local", "model", name,
                             f"{path} holds no trained weights: run `make train-toy` to train them")
    return path


def _load_one(name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool, revision: str = ""):
    """Load exactly ``name`` (no fallback) at ``revision`` (hub ids only), or ModelLoadError."""
    from transformers import AutoProcessor

    quiet_transformers()
    directory = named_directory(name)
    if directory is not None:
        if revision:
            raise ModelLoadError("unknown_revision", "model", name,
                                 f"revision {revision!r} given for a model built or shipped here (hub ids only)")
        source = Source("model", name, str(directory), on_hub=False)
    elif name in MODELS and MODELS[name].source != "Hugging Face" and not Path(name).exists():
        raise ModelLoadError("not_found_local", "model", name, f"not downloadable: {MODELS[name].source}")
    else:
        source = locate(
            "model", name, region_model_names(), hint=" (region-perception models lists the names)", revision=revision
        )
    _, backend = backend_for(read_config(source), source)
    model_class = backend.model_class()  # first: importing it registers its config type (RegionGPT's)
    processor = from_pretrained(AutoProcessor, source, trust_remote_code=trust_remote_code)
    model = from_pretrained(model_class, source, dtype=dtype, trust_remote_code=trust_remote_code)
    local = None if source.on_hub else Path(source.ref)
    weights_random = bool(local and (local / RANDOM_WEIGHTS_MARKER).exists())
    if weights_random:
        loud_notice(
            f"{name}: RANDOM WEIGHTS (tiny offline model); outputs exercise the code, they are not predictions."
        )
    try:
        wrapped = backend.wrap(
            model.to(device), processor, name=name, device=device, weights_random=weights_random, path=local
        )
        wrapped.trained_note = _trained_note(local)
        wrapped.commit, wrapped.revision = source.commit, source.revision  # what a hub id resolved to
        wrapped.refer_prompt = bool(_meta(local).get("refer_prompt", False))  # trained with REFER_INSTRUCTION
        return wrapped
    except (ModelLoadError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:
        raise source.error("unreadable_checkpoint", f"wrapping the loaded model failed: {one_line(exc)}") from exc


def _meta(local: Path | None) -> dict:
    """A local model's ``region_perception.json`` (what this package's own tools wrote beside the weights)."""
    meta = local / "region_perception.json" if local is not None else None
    if meta is None or not meta.is_file():
        return {}
    try:
        info = json.loads(meta.read_text())
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _trained_note(local: Path | None) -> str:
    """What a directory written by `region-perception train` says it learnt from (e.g. "toy model trained
    on synthetic shapes"); every result of the model carries it. "" for any other model."""
    info = _meta(local)
    return str(info.get("note", "")) if info.get("trained") else ""


def fallback_target(name: str, error: ModelLoadError, fallback_model: str = "", revision: str = "") -> str:
    """What to load instead of ``name`` after ``error``; "" = nothing (the error stands).

    An explicit ``fallback_model`` is used whatever the reason; otherwise only the shipped
    default falls back, only when the hub cannot be reached, and not when a revision was
    pinned (then the user chose exactly that model).
    """
    if fallback_model and fallback_model != name:
        return fallback_model
    if error.reason == "no_network" and not revision:
        return offline_fallback(name)
    return ""


def load_region_model(
    name_or_path: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    trust_remote_code: bool = False,
    allow_fallback: bool = True,
    fallback_model: str = "",
    revision: str = "",
):
    """A region backend from a registry name, Hugging Face id or directory, or ModelLoadError.

    ``revision`` pins a hub id to a branch, tag or commit; the loaded commit is the backend's
    ``commit``. See :func:`fallback_target` for when another model is loaded instead (always
    loudly, and the model it replaced is kept in the returned backend's ``fallback_from``).
    """
    try:
        return _load_one(name_or_path, device, dtype, trust_remote_code, revision)
    except ModelLoadError as exc:
        target = fallback_target(name_or_path, exc, fallback_model, revision) if allow_fallback else ""
        if not target:
            raise
        error = exc
    try:
        model = _load_one(target, device, torch.float32 if target in TINY_MODELS else dtype, trust_remote_code)
    except ModelLoadError as exc:
        raise ModelLoadError(exc.reason, "model", name_or_path, f"{error.detail}; and its fallback: {exc}") from exc
    random_note = " with RANDOM WEIGHTS: its outputs are not predictions." if model.weights_random else "."
    loud_notice(f"could not load {error}; FALLING BACK to {target}{random_note}")
    model.fallback_from = f"{name_or_path}: {error.reason}"
    return model


def load_segmenter(spec: str, backend: str, cache, device: torch.device, revision: str = ""):
    """SAM by spec for ``backend`` ``sam`` (segment-anything) or ``hf-sam`` (transformers).

    ``sam``: ``tiny-sam``, ``vit_b:/path/sam_vit_b_01ec64.pth``, a tiny-SAM directory or a hub
    repository laid out as one. ``hf-sam``: a Hugging Face id (``facebook/sam-vit-base``) or a
    saved directory. ``revision`` pins a hub id; the segmenter's ``commit`` says what loaded.
    A segmenter that cannot be loaded raises ModelLoadError (no fallback: the user named it).
    """
    from .sam import SegmentAnythingSegmenter, TransformersSamSegmenter, load_segment_anything

    if backend not in ("sam", "hf-sam"):
        raise ModelLoadError(
            "unknown_architecture", "segmenter", spec, f"segmenter_backend {backend!r}: expected sam or hf-sam"
        )
    if backend == "sam":
        try:
            import segment_anything  # noqa: F401
        except ImportError:
            raise ModelLoadError(
                "unknown_architecture",
                "segmenter",
                spec,
                "segment-anything is not installed (pip install segment-anything), or use segmenter_backend hf-sam",
            ) from None
    if backend == "hf-sam":
        from transformers import SamModel, SamProcessor

        source = locate(
            "segmenter", spec, [], hint=" (hf-sam: a Hugging Face id such as facebook/sam-vit-base)", revision=revision
        )
        model = from_pretrained(SamModel, source)
        processor = from_pretrained(SamProcessor, source)
        segmenter = TransformersSamSegmenter(spec, cache, device, model=model, processor=processor)
        segmenter.commit = source.commit
        return segmenter
    commit = ""
    if spec == TINY_SAM:
        path = str(tiny_path(TINY_SAM))
    elif is_hub_id(spec):  # a hub repository holding a SAM directory (config.json + model.safetensors)
        source = locate("segmenter", spec, [], revision=revision)
        path, commit = source.ref, source.commit
    else:
        path = spec
    if revision and not commit:
        raise ModelLoadError("unknown_revision", "segmenter", spec, f"revision {revision!r} given for a local SAM")
    sam, generator_kwargs, weights_random = load_segment_anything(path, device)
    if weights_random:
        loud_notice(f"{spec}: SAM with RANDOM WEIGHTS (tiny offline model); its masks are not segmentations.")
    segmenter = SegmentAnythingSegmenter(
        sam, cache, name=spec, weights_random=weights_random, generator_kwargs=generator_kwargs
    )
    segmenter.commit = commit
    return segmenter
