"""The ways a user can point at part of an image, their validation and conversions.

All coordinates are pixels of the query's image (x right, y down, origin at the top-left
corner). Validation raises :class:`RegionError` with a message naming the problem, so
that a query with a bad region gets an error result instead of a crash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np

MAX_POINTS = 1024  # more points than this in one region is a client bug, not a region


class RegionError(ValueError):
    """A region that cannot be used with this image; the message says why."""


@dataclass(frozen=True)
class PointsRegion:
    """Clicked points, shape (N, 2), x then y."""

    points: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class ScribbleRegion:
    """A polyline drawn over the object; its vertices, shape (N >= 2, 2)."""

    points: np.ndarray
    name: str = ""
    width: int = 5  # stroke width in pixels when rasterised


@dataclass(frozen=True)
class BoxRegion:
    """An axis-aligned box (x_min, y_min, x_max, y_max)."""

    box: np.ndarray
    name: str = ""


@dataclass(frozen=True)
class MaskRegion:
    """A binary mask of the image's size."""

    mask: np.ndarray = field(repr=False)
    name: str = ""


@dataclass(frozen=True)
class WholeImage:
    """The whole image (RegionVLM's empty region text)."""

    name: str = ""


Region = PointsRegion | ScribbleRegion | BoxRegion | MaskRegion | WholeImage


class PromptSegmenter(Protocol):
    """Anything that turns a box or points into a mask (SAM's predictor)."""

    def segment(
        self, image_key: str, image: np.ndarray, *, box: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> np.ndarray: ...


def _finite_xy(values: object, what: str, min_count: int, max_points: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RegionError(f"{what}: coordinates are not numbers ({exc})") from None
    if arr.size == 0:
        arr = arr.reshape(0, 2)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise RegionError(f"{what}: expected an (N, 2) array of x, y pixels, got shape {arr.shape}")
    if len(arr) < min_count:
        raise RegionError(f"{what}: needs at least {min_count} point(s), got {len(arr)}")
    if len(arr) > max_points:
        raise RegionError(f"{what}: {len(arr)} points is more than the limit of {max_points}")
    if not np.all(np.isfinite(arr)):
        raise RegionError(f"{what}: coordinates contain NaN or infinity")
    return arr


def _inside(arr: np.ndarray, what: str, width: int, height: int) -> None:
    bad = (arr[:, 0] < 0) | (arr[:, 0] >= width) | (arr[:, 1] < 0) | (arr[:, 1] >= height)
    if bad.any():
        x, y = arr[np.argmax(bad)]
        raise RegionError(f"{what}: point ({x:g}, {y:g}) is outside the {width}x{height} image")


def validate(region: Region, image_size: tuple[int, int], max_points: int = MAX_POINTS) -> Region:
    """Check ``region`` against an image of ``image_size`` = (height, width).

    Returns the region with its arrays normalised (float64 points, bool mask).
    """
    height, width = image_size
    if height <= 0 or width <= 0:
        raise RegionError(f"image size {width}x{height} is empty")
    if isinstance(region, WholeImage):
        return region
    if isinstance(region, PointsRegion):
        arr = _finite_xy(region.points, "points", 1, max_points)
        _inside(arr, "points", width, height)
        return PointsRegion(arr, region.name)
    if isinstance(region, ScribbleRegion):
        arr = _finite_xy(region.points, "scribble", 2, max_points)
        _inside(arr, "scribble", width, height)
        if region.width < 1:
            raise RegionError(f"scribble: stroke width must be at least 1 pixel, got {region.width}")
        return ScribbleRegion(arr, region.name, region.width)
    if isinstance(region, BoxRegion):
        box = np.asarray(region.box, dtype=np.float64).reshape(-1)
        if box.size != 4:
            raise RegionError(f"box: expected 4 numbers x_min, y_min, x_max, y_max, got {box.size}")
        if not np.all(np.isfinite(box)):
            raise RegionError("box: coordinates contain NaN or infinity")
        x0, y0, x1, y1 = box
        if x1 <= x0 or y1 <= y0:
            raise RegionError(f"box: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is empty (need x_max > x_min, y_max > y_min)")
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            raise RegionError(f"box: ({x0:g}, {y0:g}, {x1:g}, {y1:g}) is outside the {width}x{height} image")
        return BoxRegion(box, region.name)
    if isinstance(region, MaskRegion):
        mask = np.asarray(region.mask)
        if mask.ndim == 3 and mask.shape[2] == 1:
            mask = mask[:, :, 0]
        if mask.shape != (height, width):
            raise RegionError(f"mask: size {mask.shape[::-1]} does not match the {width}x{height} image")
        mask = mask.astype(bool)
        if not mask.any():
            raise RegionError("mask: it is empty (no pixel is set)")
        return MaskRegion(mask, region.name)
    raise RegionError(f"unknown region type {type(region).__name__}")


def mask_to_box(mask: np.ndarray) -> np.ndarray:
    """Tight box (x_min, y_min, x_max, y_max) in pixels; max is exclusive (pixel edge)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise RegionError("mask: it is empty (no pixel is set)")
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def box_to_mask(box: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """The pixels whose centres lie in the box."""
    height, width = image_size
    x0, y0, x1, y1 = box
    xs = np.arange(width) + 0.5
    ys = np.arange(height) + 0.5
    inside_x = (xs >= x0) & (xs <= x1)
    inside_y = (ys >= y0) & (ys <= y1)
    mask = inside_y[:, None] & inside_x[None, :]
    if not mask.any():  # a sub-pixel box still covers the pixel it lies in
        mask[min(int(y0), height - 1), min(int(x0), width - 1)] = True
    return mask


def scribble_to_mask(points: np.ndarray, image_size: tuple[int, int], width: int = 5) -> np.ndarray:
    """Rasterise the polyline with the given stroke width."""
    canvas = np.zeros(image_size, dtype=np.uint8)
    cv2.polylines(canvas, [np.round(points).astype(np.int32).reshape(-1, 1, 2)], False, 1, int(width))
    return canvas.astype(bool)


def points_to_mask(points: np.ndarray, image_size: tuple[int, int], radius: int = 3) -> np.ndarray:
    """Small disks around clicked points (used when no segmenter is available)."""
    canvas = np.zeros(image_size, dtype=np.uint8)
    for x, y in np.round(points).astype(np.int32):
        cv2.circle(canvas, (int(x), int(y)), radius, 1, -1)
    return canvas.astype(bool)


def region_mask(
    region: Region,
    image_size: tuple[int, int],
    *,
    image: np.ndarray | None = None,
    image_key: str = "",
    segmenter: PromptSegmenter | None = None,
) -> np.ndarray:
    """The region as a boolean mask of the image.

    Boxes and points go through ``segmenter`` (SAM) when one is given, so a click on a cup
    becomes the cup; without one they become the box / small disks themselves.
    """
    if isinstance(region, MaskRegion):
        return region.mask.astype(bool)
    if isinstance(region, WholeImage):
        return np.ones(image_size, dtype=bool)
    if isinstance(region, ScribbleRegion):
        return scribble_to_mask(region.points, image_size, region.width)
    if segmenter is not None and image is not None:
        if isinstance(region, BoxRegion):
            mask = segmenter.segment(image_key, image, box=region.box)
        else:
            mask = segmenter.segment(image_key, image, points=region.points)
        if mask.any():
            return mask
    if isinstance(region, BoxRegion):
        return box_to_mask(region.box, image_size)
    return points_to_mask(region.points, image_size)


def region_box(region: Region, image_size: tuple[int, int]) -> np.ndarray:
    """Bounding box of the region (whole image for WholeImage)."""
    height, width = image_size
    if isinstance(region, BoxRegion):
        return np.asarray(region.box, dtype=np.float64)
    if isinstance(region, MaskRegion):
        return mask_to_box(region.mask)
    if isinstance(region, WholeImage):
        return np.array([0, 0, width, height], dtype=np.float64)
    pts = region.points
    x0, y0 = pts.min(axis=0)
    x1, y1 = pts.max(axis=0) + 1
    return np.array([x0, y0, min(x1, width), min(y1, height)], dtype=np.float64)


def sample_points_in_mask(mask: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K pixel centres drawn uniformly inside the mask (with replacement if it is small)."""
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        raise RegionError("mask: it is empty (no pixel is set)")
    idx = rng.choice(xs.size, size=k, replace=xs.size < k)
    return np.stack([xs[idx] + 0.5, ys[idx] + 0.5], axis=1).astype(np.float64)


def sample_points_on_polyline(points: np.ndarray, k: int) -> np.ndarray:
    """K points evenly spaced by arc length along the polyline (deterministic)."""
    seg = np.diff(points, axis=0)
    lengths = np.hypot(seg[:, 0], seg[:, 1])
    total = lengths.sum()
    if total == 0:
        return np.repeat(points[:1], k, axis=0)
    cum = np.concatenate([[0.0], np.cumsum(lengths)])
    targets = np.linspace(0.0, total, k)
    xs = np.interp(targets, cum, points[:, 0])
    ys = np.interp(targets, cum, points[:, 1])
    return np.stack([xs, ys], axis=1)


def region_points(
    region: Region, image_size: tuple[int, int], k: int, rng: np.random.Generator, mask: np.ndarray | None = None
) -> np.ndarray:
    """The K points (pixels) that stand for the region in RegionVLM's region text.

    Clicked points are used as given (at most K, drawn without replacement if more);
    a scribble is resampled along its length; boxes and masks are sampled inside.
    WholeImage has no points (empty region text).
    """
    if isinstance(region, WholeImage):
        return np.zeros((0, 2))
    if isinstance(region, PointsRegion):
        pts = region.points
        if len(pts) > k:
            pts = pts[np.sort(rng.choice(len(pts), size=k, replace=False))]
        return pts
    if isinstance(region, ScribbleRegion):
        return sample_points_on_polyline(region.points, k)
    if mask is None:
        mask = region_mask(region, image_size)
    return sample_points_in_mask(mask, k, rng)


def normalize_points(points: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Pixels to [0, 1] coordinates of the image (x / width, y / height)."""
    height, width = image_size
    return np.asarray(points, dtype=np.float64) / np.array([width, height], dtype=np.float64)
