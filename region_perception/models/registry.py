"""Every model this package knows by name: backend, where its weights come from, licence,
size and what it supports. ``region-perception models`` prints this table."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str  # "regionvlm" | "florence2"
    source: str  # Hugging Face id, "built offline", or how to obtain it
    license: str
    size: str
    tasks: tuple[str, ...]
    notes: str = ""
    tiny_fallback: str = ""  # the offline model used when this one cannot be had


ALL_TASKS = ("caption", "ask", "classify", "refer")
FLORENCE_TASKS = ("caption", "classify", "refer")

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
            "tiny-florence2",
        ),
        ModelSpec(
            "florence-community/Florence-2-large",
            "florence2",
            "Hugging Face",
            "MIT",
            "0.77B",
            FLORENCE_TASKS,
            "as base, more accurate",
            "tiny-florence2",
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
            "tiny-regionvlm",
        ),
        ModelSpec(
            "Salesforce/instructblip-flan-t5-xl",
            "regionvlm",
            "Hugging Face",
            "MIT",
            "4.0B",
            ALL_TASKS,
            "same architecture, but NEVER trained on point text: region answers ignore the region",
            "tiny-regionvlm",
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
    )
}

DEFAULT_MODEL = "florence-community/Florence-2-base"
TINY_MODELS = {"tiny-regionvlm", "tiny-florence2", "bench-regionvlm"}
TINY_SAM = "tiny-sam"


def backend_of(name_or_path: str) -> str:
    """The backend for a registry name, local directory (its config.json) or Hugging Face id."""
    spec = MODELS.get(name_or_path)
    if spec:
        return spec.backend
    config = Path(name_or_path) / "config.json"
    if config.is_file():
        model_type = json.loads(config.read_text()).get("model_type", "")
        return "florence2" if model_type.startswith("florence") else "regionvlm"
    return "florence2" if "florence" in name_or_path.lower() else "regionvlm"


def tiny_fallback(name_or_path: str) -> str:
    spec = MODELS.get(name_or_path)
    if spec and spec.tiny_fallback:
        return spec.tiny_fallback
    return "tiny-florence2" if backend_of(name_or_path) == "florence2" else "tiny-regionvlm"


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
