"""The state of one followed object: tracking, occluded, lost, reacquired.

Why: propagation alone cannot tell an object that slid behind another from one it lost, and
must not run the language model every frame. A :class:`Track` propagates every frame, and calls
the injected re-check (the region-VLM's "is this still the red circle?" in the node, a colour
check in the measurements) only every ``recheck_every`` frames, when the score drops, or while
the object is out of sight (every ``search_every`` frames) to re-acquire it. The re-check is a
plain callable, so this module needs neither rclpy nor an engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np

from .propagate import Box, centroid, mask_box, propagate


class TrackState(str, Enum):
    TRACKING = "tracking"
    OCCLUDED = "occluded"  # out of sight for now; searched for
    LOST = "lost"  # out of sight longer than ``lost_after`` frames; still searched for
    REACQUIRED = "reacquired"  # found again this frame after being out of sight


@dataclass
class RecheckResult:
    """A re-check's answer: is the object there (and where, when the check can say)."""

    found: bool
    mask: np.ndarray | None = None  # the object's mask when found (a correction, or a re-detection)
    score: float = 0.0
    note: str = ""


#: ``recheck(image, mask_or_None, near_xy_or_None)``: with a mask, "is this still the object?";
#: with None, "find the object" (near the last position when given).
Recheck = Callable[[np.ndarray, "np.ndarray | None", "tuple[float, float] | None"], RecheckResult]


@dataclass
class TrackConfig:
    """How often to re-check and when to give up on the mask in hand."""

    recheck_every: int = 10  # frames between re-checks while tracking (0: only when the score drops)
    score_drop: float = 0.5  # a propagation score below this triggers a re-check
    search_every: int = 2  # frames between searches while the object is out of sight
    occluded_fraction: float = 0.15  # a mask smaller than this fraction of the reference area: out of sight
    lost_after: int = 30  # out of sight this many frames: LOST


@dataclass
class TrackUpdate:
    """What one frame gave: the state, the mask (None while out of sight) and its score."""

    frame: int
    state: TrackState
    mask: np.ndarray | None
    box: Box | None
    score: float
    rechecked: bool  # the re-check (the model, in the node) ran on this frame
    frames_unseen: int  # consecutive frames out of sight (0 while tracking)
    propagate_ms: float = 0.0
    recheck_ms: float = 0.0


@dataclass
class Track:
    """One followed object. Create with the first frame and its mask, then :meth:`update` per frame."""

    track_id: int
    image: np.ndarray
    mask: np.ndarray
    recheck: Recheck | None = None
    segmenter: Any = None
    colour: Any = None  # a ColourModel (appearance.py): redraws the mask, or trims the segmenter's
    config: TrackConfig = field(default_factory=TrackConfig)
    state: TrackState = TrackState.TRACKING
    frame: int = 0
    frames_unseen: int = 0
    since_check: int = 0
    rechecks: int = 0  # how many times the re-check ran (the language model's calls, in the node)
    reference_area: float = 0.0
    last_center: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        self.mask = np.asarray(self.mask, bool)
        if not self.mask.any():
            raise ValueError("a track starts from a non-empty mask")
        self.reference_area = float(self.mask.sum())
        self.last_center = _center(self.mask)

    @property
    def visible(self) -> bool:
        return self.state in (TrackState.TRACKING, TrackState.REACQUIRED)

    def _check(self, image: np.ndarray, mask: np.ndarray | None) -> RecheckResult:
        self.rechecks += 1
        self.since_check = 0
        assert self.recheck is not None
        return self.recheck(image, mask, self.last_center)

    def update(self, image: np.ndarray, image_key: str = "") -> TrackUpdate:
        """Follow the object onto ``image`` (the next frame)."""
        self.frame += 1
        cfg = self.config
        rechecked, score, mask = False, 0.0, None
        t0 = time.perf_counter()
        prop_ms = check_ms = 0.0
        if self.visible:
            prop = propagate(self.image, self.mask, image, segmenter=self.segmenter, colour=self.colour,
                             image_key=image_key or f"track{self.track_id}-{self.frame}")
            prop_ms = (time.perf_counter() - t0) * 1e3
            mask, score = prop.mask, prop.score
            self.since_check += 1
            big_enough = mask.sum() >= cfg.occluded_fraction * self.reference_area
            due = cfg.recheck_every > 0 and self.since_check >= cfg.recheck_every
            if self.recheck is not None and big_enough and (due or score < cfg.score_drop):
                t1 = time.perf_counter()
                res = self._check(image, mask)
                check_ms = (time.perf_counter() - t1) * 1e3
                rechecked = True
                if res.found and res.mask is not None and res.mask.any():
                    mask, score = np.asarray(res.mask, bool), max(score, res.score)
                elif not res.found:
                    mask = None  # not the object any more: search for it from here on
            if mask is None or not big_enough:
                self.state, self.frames_unseen, mask, score = TrackState.OCCLUDED, 1, None, 0.0
            else:
                self.state, self.frames_unseen = TrackState.TRACKING, 0
        else:
            self.frames_unseen += 1
            if self.recheck is not None and (self.frames_unseen - 1) % max(1, cfg.search_every) == 0:
                t1 = time.perf_counter()
                res = self._check(image, None)
                check_ms = (time.perf_counter() - t1) * 1e3
                rechecked = True
                if res.found and res.mask is not None and res.mask.sum() >= cfg.occluded_fraction * self.reference_area:
                    mask, score = np.asarray(res.mask, bool), res.score
                    self.state, self.frames_unseen = TrackState.REACQUIRED, 0
            if mask is None:
                self.state = TrackState.LOST if self.frames_unseen >= cfg.lost_after else TrackState.OCCLUDED
        self.image = image
        if mask is not None:
            self.mask = mask
            self.last_center = _center(mask)
        return TrackUpdate(self.frame, self.state, mask, mask_box(mask) if mask is not None else None, score,
                           rechecked, self.frames_unseen, prop_ms, check_ms)


def _center(mask: np.ndarray) -> tuple[float, float] | None:
    return centroid(mask)
