"""Draw a query's answer on its image: masks, boxes, clicked points, captions/labels."""

from __future__ import annotations

import cv2
import numpy as np

from ..geometry.regions import PointsRegion, Region, ScribbleRegion

_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240)]


def _label(img: np.ndarray, text: str, x: int, y: int, color: tuple[int, int, int]) -> None:
    text = text if len(text) <= 60 else text[:57] + "..."
    scale, thick = 0.5, 1
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
