"""Several sentences scored over the same encoded rows, several sentences per decoder call (REFER)."""

from __future__ import annotations

import numpy as np

from ..common.timing import Timings


def _rows(chunk) -> int:
    return (chunk[0] if isinstance(chunk, tuple) else chunk).shape[0]


def _repeat(chunk, times: int):
    """A chunk of encoded rows (a tensor, or a tuple of tensors) repeated along the row axis."""
    if isinstance(chunk, tuple):
        return tuple(_repeat(t, times) for t in chunk)
    return chunk.repeat(times, *[1] * (chunk.dim() - 1))


def sentence_losses(
    model, encoded: list, sentences: list[str], row_budget: int = 128, timings: Timings | None = None
) -> list[np.ndarray]:
    """Per-row loss of each sentence over the same encoded rows: (sentences, rows) as a list of arrays.

    A chunk of B rows is repeated for as many sentences as fit ``row_budget`` rows, so several
    sentences share one decoder call; each row's loss is the one it would get alone.
    """
    widest = max(_rows(c) for c in encoded)
    per_call = max(1, row_budget // widest)
    out: list[np.ndarray] = []
    for start in range(0, len(sentences), per_call):
        group = sentences[start : start + per_call]
        chunks = [_repeat(c, len(group)) for c in encoded]
        texts = [s for c in encoded for s in group for _ in range(_rows(c))]
        flat = np.asarray(model.rows_loss(chunks, texts, timings=timings), dtype=np.float64)
        per_sentence: list[list[np.ndarray]] = [[] for _ in group]
        offset = 0
        for c in encoded:
            n = _rows(c)
            for j in range(len(group)):
                per_sentence[j].append(flat[offset : offset + n])
                offset += n
        out += [np.concatenate(parts) for parts in per_sentence]
    return out
