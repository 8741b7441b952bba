"""Zero-shot referring segmentation as RegionVLM does it: score proposals by language loss.

For each mask proposal, K points are drawn inside it several times; each draw is written
as region text and the referring sentence is scored by the language model's loss given
that region. A proposal's score is the minimum over its draws of the mean token loss; the
proposal with the lowest score is the answer (RegionVLM: RefCOCO val mIoU 38.74 zero-shot).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .region_text import Rounding, points_to_text
from .regions import normalize_points, sample_points_in_mask


@dataclass
class ReferOutcome:
    selected_index: int
    scores: np.ndarray  # (proposals,) min over draws of the mean loss; lower is better
    draw_losses: np.ndarray  # (proposals, draws)
    region_texts: list[str]  # proposals * draws, proposal-major


def draw_region_texts(
    masks: Sequence[np.ndarray],
    *,
    points_per_draw: int = 10,
    draws: int = 5,
    seed: int = 0,
    rounding: Rounding = "truncate",
) -> list[str]:
    """Region text of every (proposal, draw) row, proposal-major; same seed, same texts."""
    rng = np.random.default_rng(seed)
    texts = []
    for mask in masks:
        size = mask.shape
        for _ in range(draws):
            pts = sample_points_in_mask(mask, points_per_draw, rng)
            texts.append(points_to_text(normalize_points(pts, size), rounding))
    return texts


def select(draw_losses: np.ndarray, region_texts: list[str]) -> ReferOutcome:
    scores = draw_losses.min(axis=1)
    return ReferOutcome(int(np.argmin(scores)), scores, draw_losses, region_texts)


def refer_batched(
    score_rows: Callable[[list[str]], np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    points_per_draw: int = 10,
    draws: int = 5,
    seed: int = 0,
    rounding: Rounding = "truncate",
) -> ReferOutcome:
    """Ours: all proposal x draw rows scored in one batched call (image encoded once)."""
    texts = draw_region_texts(masks, points_per_draw=points_per_draw, draws=draws, seed=seed, rounding=rounding)
    losses = np.asarray(score_rows(texts), dtype=np.float64).reshape(len(masks), draws)
    return select(losses, texts)


def refer_reference(
    score_one: Callable[[str], float],
    masks: Sequence[np.ndarray],
    **draw_options,
) -> ReferOutcome:
    """RegionVLM's released procedure: one full forward (vision encoder included) per row."""
    return refer_batched(lambda rows: [score_one(row) for row in rows], masks, **draw_options)
