"""Mask proposals for referring segmentation, filtered as RegionVLM's evaluation does.

RegionVLM scores SAM's automatic masks with the referring sentence. Before scoring, its
evaluation drops masks smaller than 4% of the image and masks lying along more than 70%
of an image border (background, walls, floor), and keeps at most 20.

Two optional rules (off by default, RegionVLM has neither) keep whole objects for a segmenter whose
automatic masks include near-duplicates and parts of objects (toy-sam: about 12 masks for 4 objects):
``max_overlap_iou`` drops a mask overlapping a better-scored kept one by more than that mask IoU (a
duplicate), and ``max_inside_fraction`` drops a mask with more than that share of its area inside a
larger, better-scored kept one (a part of it). Each is a distractor the sentence's loss may prefer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ProposalFilter:
    min_area_fraction: float = 0.04
    max_border_fraction: float = 0.70
    max_proposals: int = 20
    max_overlap_iou: float = 1.0  # duplicates: mask IoU above this with a better-scored kept mask (1.0 = off)
    max_inside_fraction: float = 1.0  # parts: share of the mask inside a larger, better-scored kept one (1.0 = off)


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
    dedupe = rules.max_overlap_iou < 1.0
    parts = rules.max_inside_fraction < 1.0
    kept: list[int] = []
    area: dict[int, int] = {}
    inter: dict[tuple[int, int], int] = {}  # pixel overlaps, each pair counted once for both rules

    def overlap(i: int, k: int) -> int:
        if (i, k) not in inter:
            inter[(i, k)] = int(np.count_nonzero(masks[i] & masks[k]))
        return inter[(i, k)]

    for i in map(int, order):
        mask = masks[i]
        area[i] = int(np.count_nonzero(mask))
        if area[i] < rules.min_area_fraction * mask.size:
            continue
        if border_fraction(mask) > rules.max_border_fraction:
            continue
        if dedupe and any(overlap(i, k) > rules.max_overlap_iou * (area[i] + area[k] - overlap(i, k)) for k in kept):
            continue
        kept.append(i)
        if len(kept) == rules.max_proposals and not parts:
            break
    if parts:  # a part of a larger mask scored better: each against every mask kept before it
        kept = [i for n, i in enumerate(kept)
                if not any(area[k] > area[i] and overlap(i, k) > rules.max_inside_fraction * area[i]
                           for k in kept[:n])]
    return kept[: rules.max_proposals]
