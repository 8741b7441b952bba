"""Run scripted queries over a log's frames with no ROS graph: regression tests on robot data.

Each query is answered by the node's own logic (:meth:`QueryProcessor.answer` on the
engine), on the frame its stamp names (nearest within the tolerance, as the node's frame
buffer does) or on every Nth frame, and becomes one JSON line with the fields of a
``RegionResult`` (masks as size and area; PNGs on request).

:func:`run_follow` follows one object through the log's frames instead (the ``~/follow``
action's logic, started by a callable the command line gives), one JSON line per frame with
the fields of the action's feedback.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TextIO

import numpy as np

from ..common.status import Status
from ..service.frame_buffer import Frame
from ..service.query_processor import Outcome, QueryProcessor, QuerySpec
from . import LogError
from .cdr import header_stamp_ns
from .reader import LogReader, decode_frame
from .script import ScriptQuery


@dataclass
class Job:
    query: ScriptQuery
    query_id: str
    frame_index: int | None  # None: no frame for its stamp
    error: str = ""


def roi(box: list[float]) -> dict[str, int]:
    """A box as ``sensor_msgs/RegionOfInterest`` fields, rounded as the node rounds it."""
    if not box:
        return {"x_offset": 0, "y_offset": 0, "height": 0, "width": 0, "do_rectify": False}
    x0, y0, x1, y1 = box
    return {
        "x_offset": max(0, int(round(x0))),
        "y_offset": max(0, int(round(y0))),
        "height": max(0, int(round(y1 - y0))),
        "width": max(0, int(round(x1 - x0))),
        "do_rectify": False,
    }


def result_record(outcome: Outcome, stamp_ns: int, frame_id: str, model: str, weights_random: bool) -> dict[str, Any]:
    """The fields of the RegionResult the node would publish for this outcome."""
    res = outcome.result
    rec: dict[str, Any] = {
        "header": {
            "stamp": {"sec": stamp_ns // 1_000_000_000, "nanosec": stamp_ns % 1_000_000_000},
            "frame_id": frame_id,
        },
        "query_id": outcome.query_id,
        "task": int(outcome.task),
        "status": int(outcome.status),
        "status_name": Status(outcome.status).name,
        "error": outcome.error,
        "outputs": [],
        "selected_index": -1,
        "candidate_scores": [],
        "candidate_boxes": [],
        "model": res.model if res else model,
        "weights_random": bool(res.weights_random) if res else weights_random,
        "queue_ms": outcome.queue_ms,
        "inference_ms": outcome.inference_ms,
        "latency_ms": outcome.latency_ms,
        "notes": [],
    }
    if res is None:
        return rec
    for out in res.outputs:
        mask = out.mask
        rec["outputs"].append(
            {
                "name": out.name,
                "text": out.text,
                "label": out.label,
                "score": float(out.score),
                "labels": list(out.labels),
                "label_scores": [float(s) for s in out.label_scores],
                "bbox": roi(out.box),
                "mask": {
                    "width": 0 if mask is None else int(mask.shape[1]),
                    "height": 0 if mask is None else int(mask.shape[0]),
                    "area": 0 if mask is None else int(np.count_nonzero(mask)),
                },
                **_location_fields(out.location),
            }
        )
    rec["selected_index"] = int(res.selected_index)
    rec["candidate_scores"] = [float(s) for s in res.candidate_scores]
    rec["candidate_boxes"] = [roi(b) for b in res.candidate_boxes]
    rec["notes"] = [str(n) for n in res.notes]
    if outcome.position_frame_id:
        rec["header"]["frame_id"] = outcome.position_frame_id  # the positions' frame, as the node says
    return rec


def _location_fields(location: Any) -> dict[str, Any]:
    """RegionOutput's 3D fields (has_position false and zeros without a position, as the message)."""
    if location is None or location.position is None:
        fraction = float(location.valid_fraction) if location is not None else 0.0
        zero = {"x": 0.0, "y": 0.0, "z": 0.0}
        return {"has_position": False, "position": zero, "size": dict(zero), "depth_valid_fraction": fraction}
    (x, y, z), (sx, sy, sz) = location.position, location.size
    return {
        "has_position": True,
        "position": {"x": x, "y": y, "z": z},
        "size": {"x": sx, "y": sy, "z": sz},
        "depth_valid_fraction": float(location.valid_fraction),
    }


class DepthFeed:
    """A log's depth frames and CameraInfo for the 3D step, read as the colour frames go by.

    Only the depth frame nearest each answered colour frame is read (one forward pass over the
    depth topic), so memory stays one frame whatever the log's length; the CameraInfo is the
    log's first on its topic.
    """

    def __init__(self, reader: LogReader, depth_topic: str, info_topic: str | None, settings: Any) -> None:
        self.reader, self.topic, self.settings = reader, depth_topic, settings
        self.stamps = np.array([header_stamp_ns(m.data) for m in reader.messages([depth_topic])], dtype=np.int64)
        self.info = None
        if info_topic:
            first = next(iter(reader.messages([info_topic])), None)
            self.info = reader.decode(first) if first is not None else None
        self.info_topic = info_topic or "(none in the log)"
        self._iter = None
        self._pos = -1
        self._current = None

    def _message(self, index: int):
        if self._iter is None or index < self._pos:  # (re)start the pass
            self._iter, self._pos = iter(self.reader.messages([self.topic])), -1
        while self._pos < index:
            self._current = next(self._iter)
            self._pos += 1
        return self._current

    def source_for(self, stamp_ns: int):
        """A DepthSource holding the depth frame nearest ``stamp_ns`` (it judges the tolerance)."""
        from ..geometry.depth import DepthSettings, depth_msg_to_metres
        from ..service.depth_source import DepthSource

        settings = DepthSettings(**{**vars(self.settings), "wait_ms": 0.0, "buffer_size": 1})
        source = DepthSource(settings, depth_topic=self.topic, camera_info_topic=self.info_topic)
        if self.info is not None:
            source.set_camera_info(self.info.k, self.info.width, self.info.height, str(self.info.header.frame_id))
        if len(self.stamps):
            j = int(np.argmin(np.abs(self.stamps - stamp_ns)))
            msg = self.reader.decode(self._message(j))
            source.add_depth(int(self.stamps[j]), str(msg.header.frame_id), msg,
                             lambda m: depth_msg_to_metres(m, settings.scale))
        return source


def schedule(queries: list[ScriptQuery], stamps: list[int], tolerance_ns: int) -> list[Job]:
    """Which frame answers each query (every-N queries become one job per frame)."""
    jobs: list[Job] = []
    arr = np.array(stamps, dtype=np.int64)
    for q in queries:
        if q.every:
            jobs += [Job(q, f"{q.query_id}@{i}", i) for i in range(0, len(stamps), q.every)]
            continue
        if not stamps:
            jobs.append(Job(q, q.query_id, None, "the log has no frames on this topic"))
            continue
        if q.at_ns == 0:
            jobs.append(Job(q, q.query_id, len(stamps) - 1))
            continue
        i = int(np.argmin(np.abs(arr - q.at_ns)))
        if abs(int(arr[i]) - q.at_ns) <= tolerance_ns:
            jobs.append(Job(q, q.query_id, i))
        else:
            span = f"{arr.min() / 1e9:.3f}..{arr.max() / 1e9:.3f} s"
            jobs.append(Job(q, q.query_id, None, f"no frame within {tolerance_ns / 1e9:g} s of stamp "
                                                 f"{q.at_ns / 1e9:.3f} s (log frames span {span})"))  # fmt: skip
    return jobs


def spec_for(job: Job, stamp_ns: int) -> QuerySpec:
    q = job.query
    return QuerySpec(
        query_id=job.query_id,
        task=q.task,
        stamp_ns=stamp_ns,
        regions=[r.to_core() for r in q.regions],
        text=q.text,
        labels=list(q.labels),
        rank_labels=q.rank,
        max_new_tokens=q.max_new_tokens,
        num_beams=q.num_beams,
        timeout_s=q.timeout_s,
    )


def run_log(
    reader: LogReader,
    queries: list[ScriptQuery],
    processor: QueryProcessor,
    out: TextIO,
    *,
    topic: str | None = None,
    tolerance_s: float = 0.05,
    masks_dir: Path | None = None,
    model_name: str = "",
    progress: Callable[[int, int], None] | None = None,
    depth: DepthFeed | None = None,
) -> dict[str, Any]:
    """Answer every scripted query over the log; one JSON line each on ``out``; the summary.

    With ``depth`` each OK answer gets the node's 3D step on the depth frame nearest its frame.
    """
    topic = reader.image_topic(topic)
    stamps = [header_stamp_ns(m.data) for m in reader.messages([topic])]  # pass 1: stamps only
    jobs = schedule(queries, stamps, int(tolerance_s * 1e9))
    by_frame: dict[int, list[Job]] = {}
    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    engine = processor.engine
    weights_random = bool(engine.weights_random) if engine is not None else False
    started = time.perf_counter()
    for job in jobs:
        if job.frame_index is None:
            outcome = Outcome(job.query_id, job.query.task, Status.FRAME_EXPIRED, job.error)
            rec = result_record(outcome, job.query.at_ns or 0, "", model_name, weights_random)
            out.write(json.dumps(rec) + "\n")
            statuses[rec["status_name"]] += 1
        else:
            by_frame.setdefault(job.frame_index, []).append(job)
    done = 0
    for index, message in enumerate(reader.messages([topic])):  # pass 2: decode the frames asked about
        if index not in by_frame:
            continue
        decoded = reader.decode(message)
        kind = message.msgtype
        frame = Frame(stamps[index], str(decoded.header.frame_id), decoded, lambda m, k=kind: decode_frame(m, k))
        for job in by_frame[index]:
            spec = spec_for(job, stamps[index])
            t0 = time.perf_counter()
            try:
                outcome = processor.answer(spec, frame)
            except Exception as exc:  # as the node's worker: a model fault is this query's error
                outcome = Outcome(spec.query_id, spec.task, Status.MODEL_ERROR, f"{type(exc).__name__}: {exc}")
            if depth is not None and outcome.status == Status.OK and outcome.result is not None:
                source = depth.source_for(frame.stamp_ns)
                outcome.position_frame_id = source.locate(outcome.result, frame.stamp_ns, frame.frame_id)
            outcome.inference_ms = outcome.latency_ms = (time.perf_counter() - t0) * 1000.0
            rec = result_record(outcome, frame.stamp_ns, frame.frame_id, model_name, weights_random)
            rec["frame_index"] = index
            if masks_dir is not None and outcome.result is not None:
                rec["mask_files"] = _write_masks(masks_dir, spec.query_id, outcome)
            out.write(json.dumps(rec) + "\n")
            statuses[rec["status_name"]] += 1
            if outcome.status == Status.OK:
                latencies.append(outcome.latency_ms)
            done += 1
            if progress is not None:
                progress(done, len(jobs))
    return {
        "log": str(reader.path),
        "topic": topic,
        "frames": len(stamps),
        "results": sum(statuses.values()),
        "statuses": dict(statuses),
        "latency_ms": {
            "median": round(statistics.median(latencies), 1) if latencies else None,
            "max": round(max(latencies), 1) if latencies else None,
        },
        "seconds": round(time.perf_counter() - started, 2),
        "model": model_name,
        "weights_random": weights_random,
        "depth_topic": depth.topic if depth is not None else None,
    }


def _write_masks(masks_dir: Path, query_id: str, outcome: Outcome) -> list[str]:
    import cv2

    masks_dir.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in "-_.@" else "_" for c in query_id)
    files = []
    for i, out in enumerate(outcome.result.outputs):
        if out.mask is None:
            continue
        path = masks_dir / f"{safe}_{i}.png"
        if not cv2.imwrite(str(path), out.mask.astype(np.uint8) * 255):
            raise LogError(f"{path}: could not write the mask PNG")
        files.append(str(path))
    return files


# -- following one object through a log --------------------------------------------------------------
def follow_record(update: Any, index: int, stamp_ns: int, frame_id: str, track_id: int,
                  shape: tuple[int, int], ms: float) -> dict[str, Any]:
    """One followed frame as JSON: the fields of the action's feedback (masks as size and area)."""
    mask = update.mask
    return {
        "track_id": track_id,
        "frame_index": index,
        "header": {"stamp": {"sec": stamp_ns // 1_000_000_000, "nanosec": stamp_ns % 1_000_000_000},
                   "frame_id": frame_id},
        "state": update.state if isinstance(update.state, str) else update.state.value,
        "score": round(float(update.score), 4),
        "rechecked": bool(update.rechecked),
        "bbox": roi(list(update.box) if update.box is not None else []),
        "mask": {"width": int(shape[1]), "height": int(shape[0]),
                 "area": 0 if mask is None else int(np.count_nonzero(mask))},
        "ms": round(ms, 2),
    }


def run_follow(
    reader: LogReader,
    start: Callable[[np.ndarray, str], Any],
    out: TextIO,
    *,
    topic: str | None = None,
    start_ns: int = 0,
    tolerance_s: float = 0.05,
    masks_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    depth: DepthFeed | None = None,
    model_name: str = "",
    weights_random: bool = False,
) -> dict[str, Any]:
    """Follow one object through the log's frames; one JSON line per followed frame on ``out``; the summary.

    ``start(image, frame_key)`` starts the follow on the first frame (``tracking.follow.start_track``
    with the object's region or sentence bound in: the command line does that, as this floor is below
    the tracking one) and returns its ``Started`` (``track``, ``mask``, ``model_calls``); it raises
    ValueError when the object cannot be found there. ``start_ns``: the first frame's stamp (nearest
    within ``tolerance_s``; 0 = the log's first frame). Every later frame is followed, as a camera
    at the log's rate would be; with ``depth`` each frame with a mask gets the node's 3D step.
    """
    topic = reader.image_topic(topic)
    stamps = [header_stamp_ns(m.data) for m in reader.messages([topic])]
    summary: dict[str, Any] = {"log": str(reader.path), "topic": topic, "frames": len(stamps), "followed": 0,
                               "model": model_name, "weights_random": weights_random,
                               "depth_topic": depth.topic if depth is not None else None}
    if not stamps:
        raise LogError(f"{reader.path}: no frames on {topic}")
    first = 0
    if start_ns:
        arr = np.array(stamps, dtype=np.int64)
        first = int(np.argmin(np.abs(arr - start_ns)))
        if abs(int(arr[first]) - start_ns) > int(tolerance_s * 1e9):
            span = f"{arr.min() / 1e9:.3f}..{arr.max() / 1e9:.3f} s"
            raise LogError(f"no frame within {tolerance_s:g} s of stamp {start_ns / 1e9:.3f} s "
                           f"(log frames span {span})")
    summary["start_frame"] = first
    states: Counter[str] = Counter()
    scores: list[float] = []
    ms: list[float] = []
    started = time.perf_counter()
    follow = None
    for index, message in enumerate(reader.messages([topic])):
        if index < first:
            continue
        decoded = reader.decode(message)
        kind = message.msgtype
        frame = Frame(stamps[index], str(decoded.header.frame_id), decoded, lambda m, k=kind: decode_frame(m, k))
        image = frame.image()
        t0 = time.perf_counter()
        if follow is None:
            try:
                follow = start(image, frame.key)
            except ValueError as exc:
                summary.update(error=str(exc), seconds=round(time.perf_counter() - started, 2))
                out.write(json.dumps({"frame_index": index, "state": "failed", "error": str(exc)}) + "\n")
                return summary
            track = follow.track
            update = SimpleNamespace(state="tracking", mask=follow.mask, score=1.0, rechecked=False,
                                     box=_mask_box(follow.mask))
        else:
            update = track.update(image, image_key=frame.key)
        took = (time.perf_counter() - t0) * 1000.0
        rec = follow_record(update, index, frame.stamp_ns, frame.frame_id, track.track_id, image.shape[:2], took)
        if depth is not None:  # the feedback's 3D fields: has_position false while out of sight
            if update.mask is not None:
                rec["header"]["frame_id"] = _locate_mask(depth, frame, update.mask, rec) or frame.frame_id
            else:
                rec.update(_location_fields(None))
        if masks_dir is not None and update.mask is not None:
            rec["mask_file"] = _write_follow_mask(masks_dir, track.track_id, index, update.mask)
        out.write(json.dumps(rec) + "\n")
        states[rec["state"]] += 1
        scores.append(rec["score"])
        if index > first:
            ms.append(took)
        summary["followed"] += 1
        if progress is not None:
            progress(index - first + 1, len(stamps) - first)
    summary.update(
        states=dict(states),
        rechecks=int(track.rechecks),
        model_calls=int(follow.model_calls[0]),
        mean_score=round(float(np.mean(scores)), 3) if scores else 0.0,
        ms_per_frame={"median": round(statistics.median(ms), 2) if ms else None,
                      "max": round(max(ms), 2) if ms else None},
        seconds=round(time.perf_counter() - started, 2),
    )
    return summary


def _mask_box(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] if xs.size else None


def _locate_mask(depth: DepthFeed, frame: Frame, mask: np.ndarray, rec: dict[str, Any]) -> str:
    """The node's 3D step for one followed mask: its position fields into ``rec``; the positions' frame."""
    out = SimpleNamespace(mask=mask, location=None, name="")
    res = SimpleNamespace(outputs=[out], image_size=mask.shape[:2], notes=[], timings_ms={})
    frame_id = depth.source_for(frame.stamp_ns).locate(res, frame.stamp_ns, frame.frame_id)
    rec.update(_location_fields(out.location))
    if res.notes:
        rec["notes"] = [str(n) for n in res.notes]
    return frame_id


def _write_follow_mask(masks_dir: Path, track_id: int, index: int, mask: np.ndarray) -> str:
    import cv2

    masks_dir.mkdir(parents=True, exist_ok=True)
    path = masks_dir / f"track{track_id}_{index:06d}.png"
    if not cv2.imwrite(str(path), mask.astype(np.uint8) * 255):
        raise LogError(f"{path}: could not write the mask PNG")
    return str(path)
