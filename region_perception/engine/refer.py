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

from ..geometry.region_text import Rounding, points_to_text
from ..geometry.regions import mask_to_box, normalize_points, sample_points_in_mask
from ..models.backend import RegionCue


@dataclass
class ReferOutcome:
    selected_index: int
    scores: np.ndarray  # (proposals,) min over draws of the mean loss; lower is better
    draw_losses: np.ndarray  # (proposals, draws)
    cues: list[RegionCue]  # proposals * draws, proposal-major


def draw_cues(
    masks: Sequence[np.ndarray],
    *,
    points_per_draw: int = 10,
    draws: int = 5,
    seed: int = 0,
    rounding: Rounding = "truncate",
) -> list[RegionCue]:
    """The region cue of every (proposal, draw) row, proposal-major; same seed, same rows.

    Each draw samples new points inside the proposal (RegionVLM); the box is the
    proposal's own, so a backend that reads boxes needs only one draw.
    """
    rng = np.random.default_rng(seed)
    cues = []
    for mask in masks:
        h, w = mask.shape
        x0, y0, x1, y1 = mask_to_box(mask)
        box = (x0 / w, y0 / h, x1 / w, y1 / h)
        for _ in range(draws):
            pts = sample_points_in_mask(mask, points_per_draw, rng)
            cues.append(RegionCue(points_to_text(normalize_points(pts, mask.shape), rounding), box))
    return cues


def select(draw_losses: np.ndarray, cues: list[RegionCue]) -> ReferOutcome:
    scores = draw_losses.min(axis=1)
    return ReferOutcome(int(np.argmin(scores)), scores, draw_losses, cues)


def refer_batched(
    score_rows: Callable[[list[RegionCue]], np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    points_per_draw: int = 10,
    draws: int = 5,
    seed: int = 0,
    rounding: Rounding = "truncate",
) -> ReferOutcome:
    """Ours: all proposal x draw rows scored in one batched call (image encoded once)."""
    cues = draw_cues(masks, points_per_draw=points_per_draw, draws=draws, seed=seed, rounding=rounding)
    losses = np.asarray(score_rows(cues), dtype=np.float64).reshape(len(masks), draws)
    return select(losses, cues)


def refer_reference(
    score_one: Callable[[RegionCue], float],
    masks: Sequence[np.ndarray],
    **draw_options,
) -> ReferOutcome:
    """RegionVLM's released procedure: one full forward (vision encoder included) per row."""
    return refer_batched(lambda rows: [score_one(row) for row in rows], masks, **draw_options)
