"""Draw a query's answer on its image (masks, boxes, clicked points, captions/labels), and the outlines
of followed objects with their track ids."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..geometry.regions import PointsRegion, Region, ScribbleRegion

_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _label(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int], scale: float = 0.5) -> None:
    text = text if len(text) <= 60 else text[:57] + "..."
    thick = 1
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    x = int(np.clip(x, 0, max(0, img.shape[1] - w - 4)))
    y = int(np.clip(y, h + base + 2, img.shape[0] - 1))
    cv2.rectangle(img, (x, y - h - base - 2), (x + w + 4, y), color, -1)
    cv2.putText(img, text, (x + 2, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)


def draw_overlay(
    image_rgb: np.ndarray,
    *,
    task: str,
    outputs: list,
    regions: list[Region] | None = None,
    candidate_boxes: list[list[float]] | None = None,
    weights_random: bool = False,
    error: str = "",
) -> np.ndarray:
    """An RGB copy of the image with the answer drawn on it."""
    img = image_rgb.copy()
    for box in candidate_boxes or []:  # REFER: every candidate, thin and grey
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (160, 160, 160), 1)
    for i, out in enumerate(outputs):
        color = _COLORS[i % len(_COLORS)]
        if out.mask is not None and out.mask.any():
            tint = np.zeros_like(img)
            tint[out.mask] = color
            img = np.where(out.mask[:, :, None], (0.55 * img + 0.45 * tint).astype(np.uint8), img)
            contours, _ = cv2.findContours(out.mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(img, contours, -1, color, 2)
        if out.box:
            x0, y0, x1, y1 = (int(round(v)) for v in out.box)
            cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), color, 2)
        words = out.label or out.text
        if task == "refer":
            words = f'"{out.text}"'
        if words:
            prefix = f"{out.name}: " if out.name else ""
            x, y = (int(out.box[0]), int(out.box[1]) - 2) if out.box else (2, 20 + 20 * i)
            _label(img, prefix + words, x, y, color)
    for i, region in enumerate(regions or []):
        color = _COLORS[i % len(_COLORS)]
        if isinstance(region, PointsRegion):
            for x, y in region.points:
                cv2.circle(img, (int(x), int(y)), 5, (255, 255, 255), -1)
                cv2.circle(img, (int(x), int(y)), 3, color, -1)
        elif isinstance(region, ScribbleRegion):
            pts = np.round(region.points).astype(np.int32).reshape(-1, 1, 2)
            cv2.polylines(img, [pts], False, color, 2)
    bottom = img.shape[0] - 4
    if weights_random:  # bottom-left, where it does not hide a region's label
        _label(img, "RANDOM WEIGHTS - not predictions", 2, bottom, (0, 0, 0))
        bottom -= 22
    if error:
        _label(img, f"error: {error}", 2, bottom, (200, 0, 0))
    return img


# -- followed objects (~/follow) ------------------------------------------------------------------
@dataclass
class TrackOutline:
    """One followed object on one frame: its mask (None while out of sight), state and score."""

    track_id: int
    mask: np.ndarray | None
    state: str
    score: float = 0.0


def track_color(track_id: int) -> tuple[int, int, int]:
    """The colour a track is drawn in (RGB): one per track id, the same on every frame."""
    return _COLORS[(int(track_id) - 1) % len(_COLORS)]


def _label_size(text: str, scale: float) -> tuple[int, int]:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    return w + 5, h + base + 3  # the rectangle _label fills, both ends included


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def draw_tracks(image_rgb: np.ndarray, tracks: list[TrackOutline]) -> np.ndarray:
    """An RGB copy of the image with each followed object's outline in its track's colour and its
    track id (``#3``; ``#3 reacquired`` when not plainly tracking) beside it; an object out of sight
    gets its label only (``#3 occluded``), down the left side.

    Outlines only, no tint: the object's own pixels stay visible, so a viewer judges the fit. The
    outline is the mask's boundary: its outermost pixels and the pixels just outside (1 + 1 px on
    images up to 256 px, 2 + 2 above). A label goes above its object, else below, left or right of
    it, where it covers no followed object's outline and no other label."""
    img = image_rgb.copy()
    h, w = img.shape[:2]
    thick = 1 if max(h, w) <= 256 else 2
    scale = 0.35 if max(h, w) <= 256 else 0.5
    kernel = np.ones((2 * thick + 1, 2 * thick + 1), np.uint8)
    shown = sorted((t for t in tracks if t.mask is not None and np.asarray(t.mask).any()), key=lambda t: t.track_id)
    boxes = {}
    for t in shown:
        mask = np.asarray(t.mask, np.uint8)
        ring = cv2.dilate(mask, kernel).astype(bool) & ~cv2.erode(mask, kernel).astype(bool)
        img[ring] = track_color(t.track_id)
        ys, xs = np.nonzero(ring)
        boxes[t.track_id] = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    taken = list(boxes.values())
    for t in shown:
        text = f"#{t.track_id}" if t.state == "tracking" else f"#{t.track_id} {t.state}"
        lw, lh = _label_size(text, scale)
        x0, y0, x1, y1 = boxes[t.track_id]
        spots = [(x0, y0 - lh), (x0, y1), (x0 - lw, y0), (x1, y0)]  # top-left corners: above, below, left, right
        spots = [(x, y) for x, y in spots if 0 <= x and x + lw <= w and 0 <= y and y + lh <= h] or [(x0, y0 - lh)]
        x, y = next(((x, y) for x, y in spots if not any(_overlaps((x, y, x + lw, y + lh), r) for r in taken)),
                    spots[0])
        taken.append((x, y, x + lw, y + lh))
        _label(img, text, x, y + lh - 1, track_color(t.track_id), scale)
    for i, t in enumerate(sorted((t for t in tracks if t not in shown), key=lambda t: t.track_id)):
        _label(img, f"#{t.track_id} {t.state}", 2, 14 + 14 * i, track_color(t.track_id), scale)
    return img
