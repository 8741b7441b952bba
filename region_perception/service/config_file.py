"""Read the node's YAML parameters file, so the CLI and the node share one config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def load_parameters(path: str | Path, node_name: str = "region_perception") -> dict[str, Any]:
    """The ``ros__parameters`` of ``node_name`` (or ``/**``) in a ROS 2 params file.

    Nested mappings become dotted names (``proposal_filter.min_area_fraction``), as ROS 2 reads them.
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    for key in (node_name, f"/{node_name}", "/**", "**"):
        section = data.get(key)
        if isinstance(section, dict) and "ros__parameters" in section:
            return _flatten(section["ros__parameters"] or {})
    raise ValueError(f"{path}: no '{node_name}: ros__parameters:' section")


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def engine_values(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters that configure the engine (flat names; ``proposal_filter.*`` nested)."""
    values: dict[str, Any] = {}
    pf: dict[str, Any] = {}
    for key, value in params.items():
        if key.startswith("proposal_filter."):
            pf[key.split(".", 1)[1]] = value
        elif isinstance(value, dict) and key == "proposal_filter":
            pf.update(value)
        else:
            values[key] = value
    if pf:
        values["proposal_filter"] = pf
    return values


def read_vocabulary(name_or_path: str, config_dir: Path | None = None) -> list[str]:
    """A label vocabulary: ``coco80`` (shipped in config/) or a text file, one label a line."""
    here = config_dir or Path(__file__).resolve().parents[2] / "config"
    candidates = [
        Path(name_or_path),
        here / f"{name_or_path}.txt",
        Path(__file__).resolve().parents[1] / "data" / f"{name_or_path}.txt",
    ]
    for path in candidates:
        if path.is_file():
            return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    raise FileNotFoundError(f"vocabulary {name_or_path!r}: no such file (looked in {', '.join(map(str, candidates))})")


VOCABULARY_NAMES = {"coco80": "COCO-80"}


def vocabulary_display_name(name_or_path: str) -> str:
    """How a task-guided prompt names a shipped vocabulary ("COCO-80"); "" for a file."""
    return VOCABULARY_NAMES.get(name_or_path, "")
