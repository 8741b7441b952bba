"""Outlines of followed objects on the overlay (``service/overlay.py::draw_tracks``)."""

from __future__ import annotations

import cv2
import numpy as np

from region_perception.service.overlay import TrackOutline, draw_tracks, track_color


def _scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    img = np.full((128, 128, 3), 90, np.uint8)
    a = np.zeros((128, 128), bool)
    a[60:80, 30:50] = True
    b = np.zeros((128, 128), bool)
    cv2.circle(b.view(np.uint8), (95, 95), 12, 1, -1)
    img[a] = (200, 40, 40)
    img[b] = (40, 200, 40)
    return img, a, b


def _ring(mask: np.ndarray) -> np.ndarray:
    k = np.ones((3, 3), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), k).astype(bool) & ~cv2.erode(mask.astype(np.uint8), k).astype(bool)


def test_each_followed_object_is_outlined_in_its_tracks_colour():
    img, a, b = _scene()
    out = draw_tracks(img, [TrackOutline(1, a, "tracking", 0.9), TrackOutline(2, b, "reacquired", 0.7)])
    assert track_color(1) != track_color(2)
    for tid, mask in ((1, a), (2, b)):
        assert (out[_ring(mask)] == track_color(tid)).all(), f"track {tid}: its outline"
        inside = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        assert (out[inside] == img[inside]).all(), "outlines only: the object's own pixels stay"
    changed = (out != img).any(axis=2)
    near = np.zeros_like(a)  # an object's box, and a label's height above or below it
    for mask in (a, b):
        ys, xs = np.nonzero(mask)
        near[max(0, ys.min() - 14) : ys.max() + 15, max(0, xs.min() - 80) : xs.max() + 81] = True
    assert changed.any() and not changed[~near].any(), "nothing drawn away from the objects and their labels"
    assert (img == draw_tracks(img, [])).all()


def test_the_track_id_is_drawn_and_an_object_out_of_sight_gets_its_label_only():
    img, a, _ = _scene()
    one, seven = draw_tracks(img, [TrackOutline(1, a, "tracking")]), draw_tracks(img, [TrackOutline(7, a, "tracking")])
    assert track_color(1) == track_color(7)  # the same colour: only the drawn id tells them apart
    differ = (one != seven).any(axis=2)
    assert differ.any() and not (differ & _ring(a)).any() and not differ[a].any(), "the id, beside the outline"
    occluded = draw_tracks(img, [TrackOutline(3, None, "occluded")])
    changed = (occluded != img).any(axis=2)
    assert changed.any() and not changed[:, 64:].any(), "a label on the left, no outline"
    assert not (changed & _ring(a)).any()
