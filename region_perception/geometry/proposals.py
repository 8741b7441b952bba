"""Mask proposals for referring segmentation, filtered as RegionVLM's evaluation does.

RegionVLM scores SAM's automatic masks with the referring sentence. Before scoring, its
evaluation drops masks smaller than 4% of the image and masks lying along more than 70%
of an image border (background, walls, floor), and keeps at most 20.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProposalFilter:
    min_area_fraction: float = 0.04
    max_border_fraction: float = 0.70
    max_proposals: int = 20


def border_fraction(mask: np.ndarray) -> float:
    """The largest fraction of any one image border covered by the mask."""
    return float(max(mask[0, :].mean(), mask[-1, :].mean(), mask[:, 0].mean(), mask[:, -1].mean()))


def filter_proposals(
    masks: list[np.ndarray], scores: list[float] | None = None, rules: ProposalFilter = ProposalFilter()
) -> list[int]:
    """Indices of the masks kept, best score first (input order when no scores)."""
    if not masks:
        return []
    order = range(len(masks)) if scores is None else np.argsort(-np.asarray(scores), kind="stable")
    kept: list[int] = []
    for i in order:
        mask = masks[i]
        if mask.mean() < rules.min_area_fraction:
            continue
        if border_fraction(mask) > rules.max_border_fraction:
            continue
        kept.append(int(i))
        if len(kept) == rules.max_proposals:
            break
    return kept
