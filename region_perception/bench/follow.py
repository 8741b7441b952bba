"""What following costs: per frame and object, with and without the segmenter and the model's re-checks.

Why: ``~/follow`` promises an object's mask on every frame without the language model on every frame.
This section measures, on the moving synthetic sequences (the crossing and the occlusion of
``eval track``), what one followed frame costs per object at the toy models' 128 px and at a camera's
640x480, what three objects followed on one frame cost together against a 30 Hz camera's frame time,
and how often the language model runs. The node's received camera rate while following is the node
bench's (it needs the ROS graph, floor 9).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict
from typing import Any

import cv2
import numpy as np

from .common import Figure

FRAME_MS_30HZ = 1000.0 / 30.0
ROLES = ("crossing_near", "crossing_far", "occluded")  # the three followed objects of each sequence


def _frames(seq: Any, size: tuple[int, int] | None) -> list[tuple[np.ndarray, dict[int, np.ndarray]]]:
    """The sequence's frames (and visible masks) at ``size`` (w, h), or as rendered."""
    out = []
    for t in range(seq.frames):
        f = seq.render(t)
        if size is None:
            out.append((f.image, f.visible))
            continue
        image = cv2.resize(f.image, size, interpolation=cv2.INTER_LINEAR)
        masks = {k: cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)
                 for k, m in f.visible.items()}
        out.append((image, masks))
    return out


def _iou(a: np.ndarray | None, b: np.ndarray) -> float:
    if a is None:
        return 1.0 if not b.any() else 0.0
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def follow_run(seqs: list[Any], size: tuple[int, int] | None, engine: Any = None, model_judge: bool = False,
               recheck_every: int = 10) -> dict[str, Any]:
    """Follow the three objects of each sequence, all three on every frame (as three goals on one camera).

    Per object and frame: the update's milliseconds; per frame: the three updates together. The
    first frame (the start: the first mask, a first caption) is timed apart, as a goal's start."""
    from ..geometry.regions import MaskRegion
    from ..tracking.follow import start_track

    per_object: list[float] = []
    per_frame: list[float] = []
    start_ms: list[float] = []
    ious: list[float] = []
    frames = model_calls = rechecks = 0
    for seq in seqs:
        rendered = _frames(seq, size)
        ids = [seq.by_role(r).object_id for r in ROLES]
        image0, masks0 = rendered[0]
        tracks = []
        for i, oid in enumerate(ids):
            t0 = time.perf_counter()
            st = start_track(i + 1, image0, region=MaskRegion(masks0[oid]), engine=engine,
                             key=f"bench-follow:{seq.index}:0", recheck_every=recheck_every, model_judge=model_judge)
            start_ms.append((time.perf_counter() - t0) * 1000.0)
            tracks.append((oid, st))
        for t, (image, masks) in enumerate(rendered[1:], start=1):
            together = 0.0
            for oid, st in tracks:
                t0 = time.perf_counter()
                u = st.track.update(image, image_key=f"bench-follow:{seq.index}:{t}")
                ms = (time.perf_counter() - t0) * 1000.0
                per_object.append(ms)
                together += ms
                ious.append(_iou(u.mask, masks[oid]))
            per_frame.append(together)
            frames += 1
        model_calls += sum(st.model_calls[0] for _, st in tracks)
        rechecks += sum(st.track.rechecks for _, st in tracks)
    followed = frames * len(ROLES)
    return {
        "ms_per_object_median": round(statistics.median(per_object), 2),
        "ms_per_object_mean": round(statistics.fmean(per_object), 2),
        "ms_per_object_max": round(max(per_object), 1),
        "ms_three_objects_median": round(statistics.median(per_frame), 2),
        "ms_three_objects_p90": round(float(np.percentile(per_frame, 90)), 2),
        "start_ms_median": round(statistics.median(start_ms), 1),
        "J": round(100 * statistics.fmean(ious), 1),
        "followed_frames": followed,
        "rechecks": rechecks,
        "model_calls": model_calls,
        "frames_per_model_call": round(followed / model_calls, 1) if model_calls else None,
    }


def bench_follow(model: str = "toy-regionvlm", sequences: int = 2, seed: int = 1) -> dict[str, Any]:
    """The follow section: the colour propagation alone, with the model's segmenter, and with the model
    re-checking, at 128 px and 640x480; three objects on every frame of ``sequences`` held-out sequences."""
    from ..datasets.synthetic_motion import motion_sequence
    from ..engine import RegionEngine, UserSettings

    seqs = [motion_sequence(seed, i) for i in range(sequences)]
    engine = RegionEngine.load(UserSettings(config={"model": model, "device": "cpu"}))
    segmenter = getattr(engine.segmenter, "name", None) or "none"
    camera = (640, 480)
    runs = {
        "colour, 128 px": follow_run(seqs, None),
        "colour, 640x480": follow_run(seqs, camera),
        f"{segmenter}, 640x480": follow_run(seqs, camera, engine),
        f"{segmenter} + {model} re-checking, 640x480": follow_run(seqs, camera, engine, model_judge=True),
    }
    figures = []
    for name, r in runs.items():
        detail = {"mean ms": r["ms_per_object_mean"], "max ms": r["ms_per_object_max"], "J": r["J"],
                  "start ms": r["start_ms_median"], "re-checks": r["rechecks"]}
        figures.append(Figure(f"follow ({name}): one object, one frame", r["ms_per_object_median"], "ms", "", None,
                              detail))
    for name in ("colour, 640x480", f"{segmenter}, 640x480", f"{segmenter} + {model} re-checking, 640x480"):
        r = runs[name]
        figures.append(Figure(f"follow ({name}): three objects, one frame", r["ms_three_objects_median"], "ms",
                              f"< {FRAME_MS_30HZ:.1f} ms (a 30 Hz frame)",
                              r["ms_three_objects_median"] < FRAME_MS_30HZ, {"p90 ms": r["ms_three_objects_p90"]}))
    judged = runs[f"{segmenter} + {model} re-checking, 640x480"]
    every = judged["frames_per_model_call"]
    figures.append(Figure("followed frames per language-model call", every if every is not None else 0.0, "frames",
                          "> 1 (not on every frame)", every is not None and every > 1,
                          {"model calls": judged["model_calls"], "followed frames": judged["followed_frames"]}))
    weights = " (RANDOM WEIGHTS)" if engine.weights_random else ""
    notes = [
        "- The follow section: three objects (two that cross, one that passes behind a still occluder) followed on "
        f"every frame of {sequences} held-out moving sequences of {seqs[0].frames} frames, started from their "
        "first-frame masks, on CPU, in one process (no ROS graph). Per object: one tracker update (flow, the "
        "segmenter or the colour model, and the re-check when due); three objects: the three updates of one frame "
        "together, the share of a 30 Hz frame that following takes on one core. `start ms`: a goal's start (the "
        "colour model, with a model its first caption). J: mean IoU with the truth, 0 on frames where the object "
        "is reported out of sight. The node's received camera rate while following: the section after this one."
    ]
    return {"model": f"follow {model}{weights}",
            "title": f"Following objects: {model} (segmenter {segmenter}){weights}",
            "figures": [asdict(f) for f in figures], "notes": notes, "runs": runs}
