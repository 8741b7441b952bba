"""A colour model of the followed object: the segmenter-free baseline and a cheap re-detector.

Why: without a trained segmenter the flow-moved mask drifts off a flat-coloured object within
frames, and after a full occlusion flow has nothing to follow. The object's colour, learnt once
from the first mask, redraws the mask where flow put it and finds candidates anywhere in the
image when it comes back; the region-VLM then only confirms a candidate, it does not search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from .tracker import RecheckResult


def _lab(image: np.ndarray) -> np.ndarray:
    """Lab of an RGB image (H, W, 3) or of a list of RGB pixels (N, 3), float32, same shape."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    if image.ndim == 2:  # pixels: converted one by one, as the image's would be
        if not len(image):
            return np.zeros((0, 3), np.float32)
        return cv2.cvtColor(image.reshape(-1, 1, 3), cv2.COLOR_RGB2LAB).reshape(-1, 3).astype(np.float32)
    return cv2.cvtColor(image, cv2.COLOR_RGB2LAB).astype(np.float32)


def _disk(radius: int) -> np.ndarray:
    r = max(1, int(radius))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def components(mask: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a bool mask, largest first."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    order = sorted(range(1, n), key=lambda k: -stats[k, cv2.CC_STAT_AREA])
    return [labels == k for k in order]


@dataclass
class ColourModel:
    """Median Lab colour of the object and how far its own pixels stray from it.

    ``threshold``: pixels nearer than this (lightness counted half, shading varies it) are the
    object's colour; ``area``: its pixel count when learnt (a re-detection must reach a fraction).
    """

    mean: np.ndarray
    threshold: float
    area: float
    min_threshold: float = 14.0

    @classmethod
    def from_mask(cls, image: np.ndarray, mask: np.ndarray, min_threshold: float = 14.0) -> ColourModel:
        mask = np.asarray(mask, bool)
        if not mask.any():
            raise ValueError("cannot learn a colour from an empty mask")
        core = cv2.erode(mask.astype(np.uint8), _disk(1)).astype(bool)
        if core.sum() < 10:
            core = mask
        pixels = _lab(image[core])
        mean = np.median(pixels, axis=0)
        d = _weighted(pixels - mean)
        # The object is the mask's majority colour. A mask that spilled onto a neighbour or the
        # background (a segmenter's click mask often does) must not stretch the threshold out to
        # their colours: only pixels near the median colour say how much the object's own vary.
        own = d <= max(min_threshold, 3.0 * float(np.median(d)))
        mean = np.median(pixels[own], axis=0)
        d = _weighted(pixels[own] - mean)
        return cls(mean, max(min_threshold, 2.0 * float(np.percentile(d, 95))), float(mask.sum()), min_threshold)

    def distance(self, image: np.ndarray) -> np.ndarray:
        """Each pixel's colour distance to the object's (an image, or a list of pixels)."""
        return _weighted(_lab(image) - self.mean)

    def match(self, image: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """Pixels of the object's colour; with ``where`` (a bool mask) only those are looked at (the
        rest False): at a camera's resolution a mask's pixels cost far less than the frame's."""
        if where is None:
            return self.distance(image) < self.threshold
        where = np.asarray(where, bool)
        out = np.zeros(where.shape, bool)
        out[where] = self.distance(image[where]) < self.threshold
        return out

    def agreement(self, image: np.ndarray, mask: np.ndarray) -> float:
        """Fraction of the mask's pixels that have the object's colour (0 for an empty mask)."""
        mask = np.asarray(mask, bool)
        n = int(mask.sum())
        return float((self.distance(image[mask]) < self.threshold).sum()) / n if n else 0.0

    def refine(self, image: np.ndarray, guide: np.ndarray, margin: int = 4) -> np.ndarray:
        """The object's colour where ``guide`` (a flow-moved mask) lies: every object-coloured
        component that touches it, whole (within a window around it), so pixels a moving occluder
        uncovers beyond the guide are kept, not clipped away frame after frame."""
        guide = np.asarray(guide, bool)
        rows, cols = np.flatnonzero(guide.any(axis=1)), np.flatnonzero(guide.any(axis=0))
        if not rows.size:
            return guide
        grow = max(int(margin), int(0.5 * max(cols[-1] - cols[0], rows[-1] - rows[0])) + 1)
        y0, y1 = max(0, rows[0] - grow), rows[-1] + grow + 1
        x0, x1 = max(0, cols[0] - grow), cols[-1] + grow + 1
        near = cv2.dilate(guide[y0:y1, x0:x1].astype(np.uint8), _disk(1)).astype(bool)
        found = np.zeros(near.shape, bool)
        for comp in components(self.match(image[y0:y1, x0:x1])):  # within the window only
            if (comp & near).any():
                found |= comp
        out = np.zeros_like(guide)
        out[y0:y1, x0:x1] = found
        return out

    def search(
        self, image: np.ndarray, near: tuple[float, float] | None = None, min_fraction: float = 0.25
    ) -> np.ndarray | None:
        """The best group of object-coloured components anywhere (a partly covered object shows in
        pieces): big enough together, similar in area to the object, near ``near``."""
        h, w = image.shape[:2]
        comps = [c for c in components(self.match(image))[:16] if c.sum() >= 4]
        if not comps:
            return None
        centres = [(float(np.nonzero(c)[1].mean()), float(np.nonzero(c)[0].mean())) for c in comps]
        reach = 2.0 * float(np.sqrt(self.area / np.pi))  # pieces of one object lie within its diameter
        best, best_cost = None, np.inf
        for cx, cy in centres:
            group = [c for c, (x, y) in zip(comps, centres, strict=True) if np.hypot(x - cx, y - cy) <= reach]
            union = np.logical_or.reduce(group)
            area = float(union.sum())
            if area < min_fraction * self.area:
                continue
            ys, xs = np.nonzero(union)
            cost = abs(np.log(area / self.area))
            if near is not None:
                cost += float(np.hypot(xs.mean() - near[0], ys.mean() - near[1])) / max(h, w)
            if cost < best_cost:
                best, best_cost = union, cost
        return best


def _weighted(diff: np.ndarray) -> np.ndarray:
    return np.sqrt(0.25 * diff[..., 0] ** 2 + diff[..., 1] ** 2 + diff[..., 2] ** 2)


def colour_recheck(model: ColourModel, min_fraction: float = 0.15, min_agreement: float = 0.6) -> Callable:
    """A re-check by colour alone: confirms a followed mask (most of it the object's colour) or,
    when the object is not in hand, finds it (a large enough component of its colour).

    The baseline for measuring (no model), and the candidate finder a model-backed re-check
    confirms."""

    def recheck(image: np.ndarray, mask: np.ndarray | None, near: tuple[float, float] | None) -> RecheckResult:
        if mask is not None and mask.any():
            # confirming the mask in hand: keep its part of the object's colour, never grow it (growing
            # by colour would take in a touching object of the same colour, the identity switch)
            a = model.agreement(image, mask)
            kept = model.match(image, mask)
            return RecheckResult(a >= min_agreement, kept if a >= min_agreement and kept.any() else None, a)
        found = model.search(image, near, min_fraction)
        if found is None:
            return RecheckResult(False, None, 0.0, "no candidate of the object's colour")
        return RecheckResult(True, found, min(1.0, float(found.sum()) / model.area))

    return recheck
