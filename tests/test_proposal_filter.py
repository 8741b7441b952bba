"""REFER's proposal filter: the optional rules that drop near-duplicate and part-of-object masks."""

from __future__ import annotations

import numpy as np

from region_perception.geometry.proposals import ProposalFilter, filter_proposals


def _square(y0: int, x0: int, h: int, w: int, size: tuple[int, int] = (100, 100)) -> np.ndarray:
    m = np.zeros(size, dtype=bool)
    m[y0 : y0 + h, x0 : x0 + w] = True
    return m


WHOLE = _square(20, 20, 30, 30)  # an object
DUPLICATE = _square(21, 20, 30, 31)  # the same object, a pixel off (IoU 0.91)
PART = _square(25, 25, 10, 10)  # entirely inside WHOLE
OTHER = _square(60, 60, 25, 25)  # another object
TOUCHING = _square(45, 45, 20, 20)  # overlaps WHOLE's corner: 25 of its 400 pixels inside it
RULES = ProposalFilter(min_area_fraction=0.0, max_overlap_iou=0.4, max_inside_fraction=0.5)


def test_default_filter_keeps_duplicates_and_parts_as_regionvlm_does():
    masks = [WHOLE, DUPLICATE, PART, OTHER]
    assert filter_proposals(masks, [0.9, 0.8, 0.7, 0.6], ProposalFilter(min_area_fraction=0.0)) == [0, 1, 2, 3]


def test_duplicates_and_parts_of_better_scored_masks_are_dropped():
    masks = [PART, OTHER, DUPLICATE, WHOLE, TOUCHING]
    kept = filter_proposals(masks, [0.5, 0.8, 0.7, 0.9, 0.6], RULES)
    assert kept == [3, 1, 4]  # best score first; the duplicate and the part of WHOLE are gone, TOUCHING is not a part


def test_a_part_scored_above_its_whole_is_kept():
    # only a better-scored host makes a mask a part: the segmenter's own ranking decides which one is the object
    assert filter_proposals([WHOLE, PART], [0.5, 0.9], RULES) == [1, 0]


def test_at_most_max_proposals_survive_after_dropping():
    masks = [WHOLE, PART, DUPLICATE, OTHER]
    rules = ProposalFilter(min_area_fraction=0.0, max_overlap_iou=0.4, max_inside_fraction=0.5, max_proposals=2)
    assert filter_proposals(masks, None, rules) == [0, 3]  # the dropped masks do not take the places
    assert filter_proposals(masks, None, ProposalFilter(min_area_fraction=0.0, max_proposals=2)) == [0, 1]


def test_a_smaller_better_scored_mask_does_not_make_its_whole_a_part():
    whole = _square(20, 20, 30, 50)  # 1500 pixels, 60 % of it the better-scored WHOLE
    rules = ProposalFilter(min_area_fraction=0.0, max_inside_fraction=0.5)  # parts only, duplicates kept
    assert filter_proposals([WHOLE, whole], [0.9, 0.8], rules) == [0, 1]
