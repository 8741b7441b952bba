"""Starting a follow: from what the user named (a region or a sentence) to a :class:`Track`.

Why: the node's ``~/follow`` action and ``run-log --follow`` must start an object's track the same
way: the first mask (the trained segmenter prompted by the click or box, trimmed to the clicked
colour; a colour grown from the click without one; REFER for a sentence), the colour model learnt
from it, and the re-check (the region-VLM naming the object when a trained model is loaded, the
colour alone otherwise). The engine is handed in (duck-typed: ``refer``, ``caption``,
``segmenter``, ``lock``, ``weights_random``); no rclpy, no engine import.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..geometry.regions import BoxRegion, MaskRegion, PointsRegion, ScribbleRegion
from .appearance import ColourModel, colour_recheck
from .recheck import first_caption, model_recheck
from .tracker import Track, TrackConfig


class FollowError(ValueError):
    """The object cannot be followed from this frame (nothing under the region, REFER found nothing...)."""


class LockedSegmenter:
    """The engine's segmenter, called under the engine's lock.

    The node's queries use the same segmenter (one predictor holding one image at a time) from its
    worker thread; a follow calling it from its own thread must take turns, as every model call does."""

    def __init__(self, segmenter: Any, lock: Any) -> None:
        self.segmenter = segmenter
        self.lock = lock

    def __getattr__(self, name: str) -> Any:  # name, weights_random, last_quality, ...
        return getattr(self.segmenter, name)

    def segment(self, image_key: str, image: np.ndarray, **prompts: Any) -> np.ndarray:
        with self.lock:
            return self.segmenter.segment(image_key, image, **prompts)


def trained_segmenter(engine: Any) -> Any:
    """The engine's segmenter when it is trained (a random-weight one draws noise: the colour model
    does better), under the engine's lock; None otherwise."""
    segmenter = getattr(engine, "segmenter", None) if engine is not None else None
    if segmenter is None or getattr(segmenter, "weights_random", True):
        return None
    lock = getattr(engine, "lock", None)
    return LockedSegmenter(segmenter, lock) if lock is not None else segmenter


def initial_mask(image: np.ndarray, region: Any, segmenter: Any = None, key: str = "") -> np.ndarray:
    """The object's mask on the first frame from a region (``geometry.regions``' points, scribble,
    box or mask).

    A mask is taken as given; points, a scribble or a box prompt the segmenter when one is given
    (trained: see :func:`trained_segmenter`), its mask trimmed to the clicked colour when it spilled
    onto a neighbour; without one the colour under the prompt grows into the connected
    object-coloured area (clipped to the box). Raises :class:`FollowError` when nothing is found there.
    """
    h, w = image.shape[:2]
    if isinstance(region, MaskRegion):
        mask = np.asarray(region.mask, bool)
        if mask.shape != (h, w):
            raise FollowError(f"the mask is {mask.shape[1]}x{mask.shape[0]}, the frame {w}x{h}")
        if not mask.any():
            raise FollowError("the mask region is empty")
        return mask
    if isinstance(region, BoxRegion):
        box = np.clip(np.asarray(region.box, np.float32).reshape(4), 0, [w, h, w, h])
        if not (box[2] > box[0] and box[3] > box[1]):
            raise FollowError(f"the box {region.box.tolist()} is empty within the {w}x{h} frame")
        pts = np.array([[(box[0] + box[2]) / 2, (box[1] + box[3]) / 2]], np.float32)
    elif isinstance(region, (PointsRegion, ScribbleRegion)):
        box = None
        pts = np.asarray(region.points, np.float32).reshape(-1, 2)
        if not len(pts):
            raise FollowError("the region has no points")
    else:
        raise FollowError(f"a {type(region).__name__} names no object to follow: give points, a box or a mask")
    if ((pts[:, 0] < 0) | (pts[:, 0] >= w) | (pts[:, 1] < 0) | (pts[:, 1] >= h)).any():
        raise FollowError(f"a point lies outside the {w}x{h} frame")
    seed = np.zeros((h, w), bool)
    for x, y in pts.astype(int):
        cv2.circle(seed.view(np.uint8), (int(x), int(y)), 2, 1, -1)
    if segmenter is not None:
        mask = np.asarray(segmenter.segment(key, image, box=box, points=pts if box is None else None,
                                            labels=np.ones(len(pts), np.int32) if box is None else None), bool)
        if mask.any():
            # A click's mask often spills onto a touching neighbour or the background; the first mask
            # is what the colour model, the reference caption and every later frame start from, so
            # keep only its part of the object's colour (the clicked colour; a box: the majority colour
            # of the mask inside the box).
            if box is None:
                colour = ColourModel.from_mask(image, seed)
            else:
                inside = np.zeros_like(mask)
                inside[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))] = True
                colour = ColourModel.from_mask(image, mask & inside if (mask & inside).any() else mask)
            if colour.agreement(image, mask) < 0.9:
                trimmed = colour.refine(image, colour.match(image, mask) | (seed if box is None else False))
                if box is not None:
                    trimmed &= mask
                if trimmed.any():
                    mask = trimmed
            return mask
    colour = ColourModel.from_mask(image, seed)
    grown = colour.refine(image, seed, margin=max(h, w))
    if box is not None:
        clip = np.zeros_like(grown)
        clip[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))] = True
        grown &= clip
    if not grown.any():
        raise FollowError("no object found under the region")
    if box is None and grown.mean() > 0.5:
        raise FollowError("the colour under the region covers most of the frame: the background, not an object")
    return grown


@dataclass
class Started:
    """A started follow: the track, and the model's calls so far (the list the re-check counts in)."""

    track: Track
    mask: np.ndarray  # the first frame's mask
    model_calls: list[int] = field(default_factory=lambda: [0])
    judge: str = "colour"  # who re-checks: "colour" or "model"


def start_track(
    track_id: int,
    image: np.ndarray,
    *,
    region: Any = None,
    text: str = "",
    engine: Any = None,
    key: str = "",
    recheck_every: int = 10,
    model_judge: bool = True,
) -> Started:
    """The track of the object named by ``region`` or ``text`` on ``image`` (its first frame).

    ``engine``: None (no model: colour re-checks; a sentence cannot be followed), else a loaded
    engine: its trained segmenter draws the masks, and when its weights are trained it re-checks
    (a caption matching the first frame's; for a sentence, REFER landing on the candidate).
    ``model_judge``: False keeps the colour re-checks even with a trained model (its segmenter still
    draws). Raises :class:`FollowError` with the reason when the object cannot be found."""
    text = text.strip()
    segmenter = trained_segmenter(engine)
    calls = [0]
    if text:
        if engine is None:
            raise FollowError("a sentence needs the model, and none is loaded")
        res = engine.refer(image, text, frame_key=key or None)
        calls[0] += 1
        mask = res.outputs[0].mask if res.outputs and res.outputs[0].mask is not None else None
        if mask is None or not np.asarray(mask).any():
            raise FollowError(f"REFER found nothing for {text!r}")
        mask = np.asarray(mask, bool)
    else:
        mask = initial_mask(image, region, segmenter, key)
    colour = ColourModel.from_mask(image, mask)
    recheck, judge = colour_recheck(colour), "colour"
    if model_judge and engine is not None and not getattr(engine, "weights_random", False):  # random: no judge
        reference = ""
        if not text:
            reference = first_caption(engine, image, mask, key or None)
            calls[0] += 1
        recheck, judge = model_recheck(engine, colour, reference, text, calls), "model"
    track = Track(track_id, image, mask, recheck=recheck, segmenter=segmenter, colour=colour,
                  config=TrackConfig(recheck_every=recheck_every))
    return Started(track, mask, calls, judge)


__all__ = ["FollowError", "LockedSegmenter", "Started", "initial_mask", "start_track", "trained_segmenter"]
