"""Region prompts: validation names the problem; conversions keep pixels where they belong."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from region_perception.geometry.regions import (
    BoxRegion,
    MaskRegion,
    PointsRegion,
    RegionError,
    ScribbleRegion,
    WholeImage,
    box_to_mask,
    mask_to_box,
    normalize_points,
    region_mask,
    region_points,
    sample_points_in_mask,
    sample_points_on_polyline,
    scribble_to_mask,
    validate,
)

SIZE = (48, 64)  # height, width


@pytest.mark.parametrize(
    ("region", "message"),
    [
        (PointsRegion(np.array([[70.0, 10.0]])), "outside the 64x48 image"),
        (PointsRegion(np.array([[-1.0, 10.0]])), "outside"),
        (PointsRegion(np.array([[np.nan, 10.0]])), "NaN"),
        (PointsRegion(np.array([[np.inf, 10.0]])), "NaN or infinity"),
        (PointsRegion(np.zeros((0, 2))), "at least 1"),
        (PointsRegion(np.ones((5000, 2))), "more than the limit"),
        (PointsRegion(np.ones((3, 3))), "(N, 2)"),
        (ScribbleRegion(np.array([[1.0, 1.0]])), "at least 2"),
        (BoxRegion(np.array([10.0, 10.0, 5.0, 20.0])), "is empty"),
        (BoxRegion(np.array([10.0, 10.0, 80.0, 20.0])), "outside"),
        (BoxRegion(np.array([1.0, 2.0, 3.0])), "expected 4 numbers"),
        (BoxRegion(np.array([np.nan, 2.0, 3.0, 4.0])), "NaN"),
        (MaskRegion(np.zeros(SIZE, dtype=bool)), "empty"),
        (MaskRegion(np.ones((10, 10), dtype=bool)), "does not match"),
    ],
)
def test_validation_names_the_problem(region, message):
    with pytest.raises(RegionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate(region, SIZE)


def test_valid_regions_pass_and_normalise():
    mask = np.zeros(SIZE, dtype=np.uint8)
    mask[5:10, 6:9] = 255
    assert validate(MaskRegion(mask), SIZE).mask.dtype == bool
    assert validate(PointsRegion([[0, 0], [63.9, 47.9]]), SIZE).points.dtype == np.float64
    assert isinstance(validate(WholeImage(), SIZE), WholeImage)
    assert validate(BoxRegion([0, 0, 64, 48]), SIZE).box.tolist() == [0, 0, 64, 48]


def test_mask_box_round_trip():
    mask = np.zeros(SIZE, dtype=bool)
    mask[5:10, 6:9] = True
    box = mask_to_box(mask)
    assert box.tolist() == [6, 5, 9, 10]
    assert np.array_equal(box_to_mask(box, SIZE), mask)


def test_scribble_mask_follows_the_line():
    mask = scribble_to_mask(np.array([[5.0, 5.0], [50.0, 5.0]]), SIZE, width=3)
    assert mask[5, 5:50].all() and not mask[20:].any()


def test_region_mask_without_segmenter_uses_the_geometry():
    assert region_mask(WholeImage(), SIZE).all()
    box_mask = region_mask(BoxRegion(np.array([0.0, 0.0, 10.0, 10.0])), SIZE)
    assert box_mask.sum() == 100
    point_mask = region_mask(PointsRegion(np.array([[30.0, 20.0]])), SIZE)
    assert point_mask[20, 30] and point_mask.sum() < 50


class _FakeSegmenter:
    """Records the prompt it got and answers with a fixed mask."""

    def __init__(self):
        self.calls = []

    def segment(self, image_key, image, *, box=None, points=None):
        self.calls.append((box, points))
        out = np.zeros(image.shape[:2], dtype=bool)
        out[1:3, 1:3] = True
        return out


def test_region_mask_sends_boxes_and_points_to_the_segmenter():
    seg = _FakeSegmenter()
    image = np.zeros((*SIZE, 3), dtype=np.uint8)
    m = region_mask(BoxRegion(np.array([0.0, 0.0, 10.0, 10.0])), SIZE, image=image, segmenter=seg)
    assert m.sum() == 4 and seg.calls[0][0] is not None
    region_mask(PointsRegion(np.array([[3.0, 3.0]])), SIZE, image=image, segmenter=seg)
    assert seg.calls[1][1] is not None


def test_sampling_is_seedable_and_inside():
    mask = np.zeros(SIZE, dtype=bool)
    mask[10:20, 30:40] = True
    a = sample_points_in_mask(mask, 10, np.random.default_rng(7))
    b = sample_points_in_mask(mask, 10, np.random.default_rng(7))
    c = sample_points_in_mask(mask, 10, np.random.default_rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert mask[a[:, 1].astype(int), a[:, 0].astype(int)].all()


def test_polyline_sampling_spans_the_line():
    pts = sample_points_on_polyline(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]), 5)
    assert pts[0].tolist() == [0, 0] and pts[-1].tolist() == [10, 10] and len(pts) == 5


def test_region_points_per_kind():
    rng = np.random.default_rng(0)
    assert region_points(WholeImage(), SIZE, 10, rng).shape == (0, 2)
    clicked = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert np.array_equal(region_points(PointsRegion(clicked), SIZE, 10, rng), clicked)
    many = PointsRegion(np.tile(clicked, (10, 1)))
    assert len(region_points(many, SIZE, 10, rng)) == 10
    box_pts = region_points(BoxRegion(np.array([0.0, 0.0, 8.0, 8.0])), SIZE, 10, rng)
    assert len(box_pts) == 10 and (box_pts <= 8).all()


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(0, 30), st.integers(0, 30), st.integers(0, 10**6))
def test_sampled_points_always_fall_in_the_mask(h, w, y0, x0, seed):
    mask = np.zeros((48, 64), dtype=bool)
    mask[y0 : y0 + h, x0 : x0 + w] = True
    pts = sample_points_in_mask(mask, 10, np.random.default_rng(seed))
    norm = normalize_points(pts, mask.shape)
    assert ((norm >= 0) & (norm < 1)).all()
    assert mask[pts[:, 1].astype(int), pts[:, 0].astype(int)].all()


def test_all_ones_mask_is_the_whole_image():
    region = validate(MaskRegion(np.ones(SIZE, dtype=np.uint8)), SIZE)
    assert region.mask.all() and mask_to_box(region.mask).tolist() == [0, 0, 64, 48]
