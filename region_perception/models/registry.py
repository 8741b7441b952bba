"""Every model this package knows by name: backend, where its weights come from, licence,
size and what it supports. ``region-perception models`` prints this table."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backend: str  # "regionvlm"
    source: str  # Hugging Face id, "built offline", or how to obtain it
    license: str
    size: str
    tasks: tuple[str, ...]
    notes: str = ""


ALL_TASKS = ("caption", "ask", "classify", "refer")

MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "tiny-regionvlm",
            "regionvlm",
            "built offline from a config (RANDOM weights)",
            "BSD-3-Clause",
            "0.4M",
            ALL_TASKS,
            "for tests and offline demos: outputs are not predictions",
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
    )
}

TINY_MODELS = {"tiny-regionvlm"}
TINY_SAM = "tiny-sam"


def backend_of(name_or_path: str) -> str:
    """The backend for a registry name, Hugging Face id or local directory."""
    spec = MODELS.get(name_or_path)
    return spec.backend if spec else "regionvlm"


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
