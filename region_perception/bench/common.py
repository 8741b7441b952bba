"""What the engine and batching benchmarks share: the sentences, a figure, median timing, fake proposals."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SENTENCES = ("the woman in the white space suit", "the helmet on the right")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None  # None: no goal
    detail: dict[str, Any] = field(default_factory=dict)


def timed(
    fn: Callable[[], Any], runs: int = 3, warmup: Callable[[], Any] | None = None
) -> tuple[float, list[float], Any]:
    """Median seconds of ``runs`` calls, after one warm-up call (``warmup`` or ``fn``)."""
    (warmup or fn)()
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def synthetic_proposals(size: tuple[int, int], n: int = 20, seed: int = 0) -> list[np.ndarray]:
    """``n`` rectangles of 5-15 % of the image, off the borders: they pass RegionVLM's filter."""
    h, w = size
    rng = np.random.default_rng(seed)
    masks = []
    while len(masks) < n:
        area = rng.uniform(0.05, 0.15) * h * w
        aspect = rng.uniform(0.5, 2.0)
        bh, bw = int(np.sqrt(area / aspect)), int(np.sqrt(area * aspect))
        if bh >= h - 2 or bw >= w - 2:
            continue
        y0, x0 = rng.integers(1, h - bh - 1), rng.integers(1, w - bw - 1)
        m = np.zeros(size, dtype=bool)
        m[y0 : y0 + bh, x0 : x0 + bw] = True
        masks.append(m)
    return masks
