"""One step of following: the last mask carried to the new frame by sparse optical flow.

Why: the language model costs far more than a frame; flow (corners inside the mask, pyramidal
Lucas-Kanade, forward-backward checked) says where the object went for almost nothing, and the
segmenter, prompted with the moved box and interior points, redraws its outline on the new frame.
The agreement of the redrawn mask with the flow-moved one is the score the tracker watches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

if TYPE_CHECKING:
    from .appearance import ColourModel

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (pixels, exclusive end)


@dataclass
class Propagation:
    """The new frame's mask and how it was found."""

    mask: np.ndarray  # bool HxW: the redrawn mask (segmenter, colour, or the flow-moved one)
    flow_mask: np.ndarray  # the last mask moved by the flow alone
    box: Box | None  # of ``mask``
    points: np.ndarray  # (N, 2) interior points moved by the flow, the segmenter's prompt
    score: float  # IoU(mask, flow_mask), times the segmenter's own quality when it gives one
    tracked_points: int  # flow vectors that passed the forward-backward check
    motion: tuple[float, float]  # the mask's centroid shift (dx, dy) in pixels by the flow


def gray(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image, np.uint8), cv2.COLOR_RGB2GRAY)


def mask_box(mask: np.ndarray) -> Box | None:
    """The mask's box (x0, y0, x1, y1), exclusive end; None for an empty mask. (Rows and columns
    that hold the mask, not its pixels' coordinates: at 640x480 that is several times cheaper.)"""
    rows = np.flatnonzero(np.asarray(mask).any(axis=1))
    if not rows.size:
        return None
    cols = np.flatnonzero(np.asarray(mask).any(axis=0))
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """The mask's centre of mass (x, y); None for an empty mask."""
    m = cv2.moments(np.asarray(mask, np.uint8), binaryImage=True)
    return (m["m10"] / m["m00"], m["m01"] / m["m00"]) if m["m00"] else None


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two bool masks; 1 when both are empty (nothing claimed, nothing there)."""
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum()) / union if union else 1.0


def interior_points(mask: np.ndarray, n: int = 3) -> np.ndarray:
    """Up to ``n`` pixels deep inside the mask (x, y): a prompt surely on the object."""
    box = mask_box(mask)
    if box is None:
        return np.zeros((0, 2), np.float32)
    x0, y0, x1, y1 = (int(v) for v in box)  # the mask's box, and a ring of zeros round it: the same distances
    dist = cv2.distanceTransform(np.pad(mask[y0:y1, x0:x1].astype(np.uint8), 1), cv2.DIST_L2, 3)[1:-1, 1:-1]
    ys, xs = np.nonzero(dist >= max(1.0, 0.6 * float(dist.max())))
    order = np.argsort(-dist[ys, xs])
    pick = order[:: max(1, len(order) // n)][:n]
    return np.stack([xs[pick] + x0, ys[pick] + y0], axis=1).astype(np.float32)


def flow_transform(prev_gray: np.ndarray, new_gray: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, int]:
    """A 2x3 similarity moving ``mask`` from the last frame to the new one, and the vectors behind it.

    Corners are taken in the mask grown by two pixels (a flat-coloured object has its corners on
    its outline); a vector counts when tracking it back lands within a pixel of where it started.
    Three or more: a RANSAC similarity; one or two: their median shift; none: no motion.
    """
    region = cv2.dilate(mask.astype(np.uint8) * 255, np.ones((5, 5), np.uint8))
    identity = np.array([[1, 0, 0], [0, 1, 0]], np.float64)
    box = mask_box(region)
    if box is None:
        return identity, 0
    # corners are looked for around the mask only (at a camera's resolution the frame costs ~10x more);
    # the margin keeps each corner's neighbourhood, so the corners are those of the whole frame
    h, w = prev_gray.shape[:2]
    x0, y0 = max(0, int(box[0]) - 8), max(0, int(box[1]) - 8)
    x1, y1 = min(w, int(box[2]) + 8), min(h, int(box[3]) + 8)
    p0 = cv2.goodFeaturesToTrack(np.ascontiguousarray(prev_gray[y0:y1, x0:x1]), maxCorners=80, qualityLevel=0.01,
                                 minDistance=2, mask=np.ascontiguousarray(region[y0:y1, x0:x1]))
    if p0 is None or len(p0) == 0:
        return identity, 0
    p0 = (p0 + np.array([x0, y0], np.float32)).astype(np.float32)
    lk: dict[str, Any] = {"winSize": (15, 15), "maxLevel": 3,
                          "criteria": (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03)}
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(prev_gray, new_gray, p0, None, **lk)
    back, st2, _ = cv2.calcOpticalFlowPyrLK(new_gray, prev_gray, p1, None, **lk)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (np.linalg.norm((back - p0).reshape(-1, 2), axis=1) < 1.0)
    a, b = p0.reshape(-1, 2)[ok], p1.reshape(-1, 2)[ok]
    if len(a) == 0:
        return identity, 0
    if len(a) >= 3:
        m, inliers = cv2.estimateAffinePartial2D(a, b, method=cv2.RANSAC, ransacReprojThreshold=1.5)
        if m is not None and inliers is not None and int(inliers.sum()) >= 3:
            scale = float(np.hypot(m[0, 0], m[1, 0]))
            if 0.8 < scale < 1.25:  # a shape does not grow or shrink by a quarter between frames
                return m, int(inliers.sum())
    shift = np.median(b - a, axis=0)
    return np.array([[1, 0, shift[0]], [0, 1, shift[1]]], np.float64), len(a)


def propagate(
    prev_image: np.ndarray,
    prev_mask: np.ndarray,
    image: np.ndarray,
    *,
    segmenter: Any = None,
    colour: ColourModel | None = None,
    image_key: str = "",
) -> Propagation:
    """Carry ``prev_mask`` onto ``image``: flow first, then the segmenter (or the colour model) redraws it.

    ``segmenter`` follows the ``Segmenter`` protocol of ``models.sam``; it is prompted with the
    moved box and interior points, and its ``last_quality`` (when it has one) scales the score.
    Without one, ``colour`` keeps the object-coloured pixels near the moved mask; with both, the
    colour model trims a segmenter mask that is mostly not the object's colour (a mask spilling
    onto a crossing neighbour), and adds back what the segmenter cut off an object the flow
    carried whole (the moved mask all of the object's colour). Without either, the flow-moved mask
    is the answer (score 1).
    """
    prev_mask = np.asarray(prev_mask, bool)
    h, w = image.shape[:2]
    m, n = flow_transform(gray(prev_image), gray(image), prev_mask)
    moved = cv2.warpAffine(prev_mask.astype(np.uint8), m, (w, h), flags=cv2.INTER_NEAREST).astype(bool)
    c0, c1 = centroid(prev_mask), centroid(moved)
    motion = (c1[0] - c0[0], c1[1] - c0[1]) if c0 and c1 else (0.0, 0.0)
    points = interior_points(moved)
    box = mask_box(moved)
    quality = 1.0
    if segmenter is not None and box is not None:
        mask = np.asarray(
            segmenter.segment(image_key, image, box=np.asarray(box, np.float32), points=points,
                              labels=np.ones(len(points), np.int32)),
            bool,
        )
        q = getattr(segmenter, "last_quality", None)
        quality = float(q) if isinstance(q, (int, float)) else 1.0
        if colour is not None and colour.agreement(image, mask) < 0.9:
            # the segmenter's mask spilled onto a neighbour (a crossing): keep the object's colour in it
            mask = colour.refine(image, mask & moved if (mask & moved).any() else moved)
        if colour is not None and iou(mask, moved) < 0.9:
            # the segmenter cut the object (a star's points, a shape's far side): the object's colour
            # where the flow carried the object stays, so a still object's outline does not flicker
            carried = colour.match(image, moved)
            if carried.sum() >= 0.9 * moved.sum():
                mask = mask | carried
    elif colour is not None:
        mask = colour.refine(image, moved)
    else:
        mask = moved
    return Propagation(mask, moved, mask_box(mask), points, iou(mask, moved) * quality, n, motion)
