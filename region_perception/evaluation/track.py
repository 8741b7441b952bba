"""``eval track``: how well an object is followed through a synthetic motion sequence.

Why: following is judged by the video-object-segmentation measures, on sequences whose every
frame has its truth (``datasets.synthetic_motion``): J (region similarity: mean IoU over the
frames), F (boundary F-measure, DAVIS style: outlines matched within a tolerance of 0.8 % of the
image diagonal), J&F (their mean), identity switches (frames where the followed mask starts
covering another object more than its own) and frames to re-acquire after a full occlusion.
The first frame (the given mask) is not scored, as in DAVIS. Each method runs beside baselines
(the first mask held still; flow alone, with no colour, segmenter or re-check).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from ..tracking import ColourModel, Track, TrackConfig, colour_recheck
from ..tracking.propagate import iou
from ..tracking.recheck import first_caption, model_recheck

METHODS = ("follow", "flow", "hold")
BACK_IN_VIEW = 0.5  # after a full occlusion the object is "back" once this fraction of it is visible
REACQUIRED_IOU = 0.5  # ... and re-acquired on the first frame from then whose IoU reaches this


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's one-pixel outline (the mask less its 3x3 erosion; the image border counts as outside)."""
    m = np.pad(np.asarray(mask, np.uint8), 1)
    return (m.astype(bool) & ~cv2.erode(m, np.ones((3, 3), np.uint8)).astype(bool))[1:-1, 1:-1]


def f_measure(pred: np.ndarray, truth: np.ndarray, bound_th: float = 0.008) -> float:
    """Boundary F-measure: precision and recall of the outlines matched within ``bound_th`` of the
    image diagonal (pixels, rounded up). Both empty: 1; one empty: 0."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() and not truth.any():
        return 1.0
    if not pred.any() or not truth.any():
        return 0.0
    h, w = truth.shape
    tol = max(1, math.ceil(bound_th * math.hypot(h, w)))
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    bp, bt = boundary(pred), boundary(truth)
    near_t = cv2.dilate(bt.astype(np.uint8), disk).astype(bool)
    near_p = cv2.dilate(bp.astype(np.uint8), disk).astype(bool)
    precision = float((bp & near_t).sum()) / max(1, int(bp.sum()))
    recall = float((bt & near_p).sum()) / max(1, int(bt.sum()))
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def identity(pred: np.ndarray, instances: np.ndarray) -> int | None:
    """The object id the mask covers most (None: empty, or only background)."""
    ids = instances[np.asarray(pred, bool)]
    ids = ids[ids > 0]
    return int(np.bincount(ids).argmax()) if ids.size else None


def identity_switches(preds: Iterable[np.ndarray | None], instances: Iterable[np.ndarray], target: int) -> int:
    """How many times the followed mask moves onto another object (each wrong stretch counts once)."""
    switches, on_wrong = 0, False
    for pred, inst in zip(preds, instances, strict=True):
        who = identity(pred, inst) if pred is not None else None
        wrong = who is not None and who != target
        switches += int(wrong and not on_wrong)
        on_wrong = wrong if who is not None else on_wrong
    return switches


def reacquire_frames(ious: list[float], visibility: list[float]) -> list[int | None]:
    """Per full occlusion (a run of frames with nothing visible): frames from "back in view"
    (``BACK_IN_VIEW`` of the object visible) to the first frame with IoU >= ``REACQUIRED_IOU``;
    None when that never happens (or the object never comes back)."""
    out: list[int | None] = []
    t, n = 0, len(visibility)
    while t < n:
        if visibility[t] > 0:
            t += 1
            continue
        while t < n and visibility[t] == 0:
            t += 1
        back = next((k for k in range(t, n) if visibility[k] >= BACK_IN_VIEW), None)
        if back is None:
            break
        got = next((k for k in range(back, n) if ious[k] >= REACQUIRED_IOU), None)
        out.append(None if got is None else got - back)
        t = back
    return out


@dataclass
class TargetScore:
    """One followed object of one sequence."""

    sequence: str
    target: int
    j: float
    f: float
    switches: int
    reacquire: list[int | None]
    rechecks: int
    frames: int
    ms_per_frame: float
    model_calls: int = 0  # the region-VLM's calls (first caption included), with a model
    states: str = ""
    ious: list[float] = field(default_factory=list, repr=False)


def follow_sequence(
    seq: Any, target: int, method: str = "follow", *, segmenter: Any = None, config: TrackConfig | None = None,
    engine: Any = None,
) -> TargetScore:
    """Follow ``target`` of a loaded sequence from its first-frame mask; score every later frame.

    ``engine`` (a loaded RegionEngine): ``follow`` re-checks with the region-VLM (the first
    frame's caption must still be said) instead of colour alone, and counts its calls."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    first = seq.mask(0, target)
    n = len(seq.images)
    preds: list[np.ndarray | None] = [first]
    states = "T"
    track = None
    calls = [0]
    if method == "follow":
        colour = ColourModel.from_mask(seq.images[0], first)
        recheck = colour_recheck(colour)
        if engine is not None:
            reference = first_caption(engine, seq.images[0], first)
            calls[0] += 1
            recheck = model_recheck(engine, colour, reference, "", calls)
        track = Track(target, seq.images[0], first, recheck=recheck, segmenter=segmenter,
                      colour=colour, config=config or TrackConfig())
    elif method == "flow":
        track = Track(target, seq.images[0], first, config=config or TrackConfig())
    t0 = time.perf_counter()
    for t in range(1, n):
        if track is None:  # hold: the first mask, still
            preds.append(first)
            states += "T"
            continue
        u = track.update(seq.images[t], image_key=f"{seq.name}-{target}-{t}")
        preds.append(u.mask)
        states += u.state.value[0].upper()
    ms = (time.perf_counter() - t0) * 1e3 / max(1, n - 1)
    empty = np.zeros_like(first)
    truths = [seq.mask(t, target) for t in range(n)]
    ious = [iou(p if p is not None else empty, g) for p, g in zip(preds, truths, strict=True)]
    fs = [f_measure(p if p is not None else empty, g) for p, g in zip(preds, truths, strict=True)]
    vis = [o["visibility"] for fr in seq.info["frame_truth"] for o in fr["objects"] if o["id"] == target]
    return TargetScore(
        seq.name, target, float(np.mean(ious[1:])), float(np.mean(fs[1:])),
        identity_switches(preds[1:], seq.instances[1:], target), reacquire_frames(ious, vis),
        track.rechecks if track is not None else 0, n - 1, ms, calls[0], states, ious,
    )


def summarize(scores: list[TargetScore]) -> dict[str, Any]:
    """J, F, J&F in percent (mean over followed objects), switches, re-acquisition, re-check rate."""
    if not scores:
        return {"targets": 0}
    j = 100 * float(np.mean([s.j for s in scores]))
    f = 100 * float(np.mean([s.f for s in scores]))
    events = [r for s in scores for r in s.reacquire]
    got = [r for r in events if r is not None]
    frames = sum(s.frames for s in scores)
    rechecks = sum(s.rechecks for s in scores)
    return {
        "targets": len(scores), "J": round(j, 2), "F": round(f, 2), "J&F": round((j + f) / 2, 2),
        "identity_switches": sum(s.switches for s in scores),
        "occlusions": len(events), "reacquired": len(got),
        "reacquire_frames_max": max(got) if got else None,
        "reacquire_frames_mean": round(float(np.mean(got)), 2) if got else None,
        "rechecks": rechecks, "recheck_every_frames": round(frames / rechecks, 2) if rechecks else None,
        "model_calls": sum(s.model_calls for s in scores),
        "frames_per_model_call": (round(frames / sum(s.model_calls for s in scores), 2)
                                  if any(s.model_calls for s in scores) else None),
        "ms_per_frame": round(float(np.mean([s.ms_per_frame for s in scores])), 2),
    }


def evaluate_tracking(
    sequences: list[Any], methods: Iterable[str] = METHODS, *, segmenter: Any = None,
    config: TrackConfig | None = None, engine: Any = None,
) -> dict[str, Any]:
    """Every method over every target of every sequence: a summary per method, the first one's per target."""
    out: dict[str, Any] = {"task": "track", "sequences": len(sequences)}
    per_target: list[dict[str, Any]] = []
    for k, method in enumerate(methods):
        scores = [follow_sequence(seq, target, method, segmenter=segmenter, config=config, engine=engine)
                  for seq in sequences for target in seq.info["targets"]]
        out[method] = summarize(scores)
        if k == 0:
            per_target = [{"sequence": s.sequence, "target": s.target, "J": round(100 * s.j, 1),
                           "F": round(100 * s.f, 1), "switches": s.switches, "reacquire": s.reacquire,
                           "states": s.states} for s in scores]
    out["per_target"] = per_target
    return out
