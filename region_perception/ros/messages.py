"""RegionQuery / RegionResult messages <-> the core's QuerySpec / Outcome."""

from __future__ import annotations

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point, Vector3
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header

from region_perception.msg import Region as RegionMsg
from region_perception.msg import RegionOutput, RegionQuery, RegionResult

from ..engine.settings import source_lines
from ..geometry.regions import BoxRegion, MaskRegion, PointsRegion, Region, RegionError, ScribbleRegion, WholeImage
from ..service.query_processor import Outcome, QuerySpec
from .image_conversion import ImageConversionError, SerializedImage, mask_msg_to_bool, mask_to_msg

MAX_REGIONS = 32


def stamp_ns(stamp) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def region_from_msg(msg: RegionMsg) -> Region:
    """One Region message as a core region (validation against the image comes later)."""
    pts = np.array([[p.x, p.y] for p in msg.points], dtype=np.float64).reshape(-1, 2)
    if msg.kind == RegionMsg.POINTS:
        return PointsRegion(pts, msg.name)
    if msg.kind == RegionMsg.SCRIBBLE:
        return ScribbleRegion(pts, msg.name)
    if msg.kind == RegionMsg.BOX:
        return BoxRegion(np.asarray(msg.box, dtype=np.float64), msg.name)
    if msg.kind == RegionMsg.MASK:
        try:
            return MaskRegion(mask_msg_to_bool(msg.mask), msg.name)
        except ImageConversionError as exc:
            raise RegionError(f"mask: {exc}") from None
    if msg.kind == RegionMsg.WHOLE_IMAGE:
        return WholeImage(msg.name)
    raise RegionError(f"unknown region kind {msg.kind}: expected 0..4 (POINTS, SCRIBBLE, BOX, MASK, WHOLE_IMAGE)")


def spec_from_query(msg: RegionQuery) -> QuerySpec:
    """Raises RegionError for regions that cannot even be read."""
    if len(msg.regions) > MAX_REGIONS:
        raise RegionError(f"{len(msg.regions)} regions is more than the limit of {MAX_REGIONS}")
    return QuerySpec(
        query_id=msg.query_id,
        task=int(msg.task),
        stamp_ns=stamp_ns(msg.header.stamp),
        regions=[region_from_msg(r) for r in msg.regions],
        text=msg.text,
        labels=list(msg.labels),
        rank_labels=bool(msg.rank_labels),
        max_new_tokens=int(msg.max_new_tokens),
        num_beams=int(msg.num_beams),
        timeout_s=float(msg.timeout_s),
        conversation_id=str(getattr(msg, "conversation_id", "")),
        context=msg,
    )


def _roi(box: list[float]) -> RegionOfInterest:
    if not box:
        return RegionOfInterest()
    x0, y0, x1, y1 = box
    return RegionOfInterest(
        x_offset=max(0, int(round(x0))),
        y_offset=max(0, int(round(y0))),
        width=max(0, int(round(x1 - x0))),
        height=max(0, int(round(y1 - y0))),
    )


def result_msg(outcome: Outcome, model_name: str, weights_random: bool, include_masks: bool = True) -> RegionResult:
    msg = RegionResult()
    frame = outcome.frame
    query = outcome.spec.context if outcome.spec is not None else None
    if frame is not None and getattr(frame.raw, "header", None) is not None:
        msg.header = frame.raw.header
    elif frame is not None and isinstance(frame.raw, SerializedImage):  # a camera frame kept serialized
        raw = frame.raw
        msg.header = Header(stamp=Time(sec=raw.sec, nanosec=raw.nanosec), frame_id=raw.frame_id)
    elif isinstance(query, RegionQuery):
        msg.header = query.header
    msg.query_id = outcome.query_id
    msg.task = max(0, min(255, int(outcome.task)))
    msg.status = int(outcome.status)
    msg.error = outcome.error
    msg.selected_index = -1
    msg.model = model_name
    msg.weights_random = bool(weights_random)
    msg.queue_ms, msg.inference_ms, msg.latency_ms = outcome.queue_ms, outcome.inference_ms, outcome.latency_ms
    msg.batch_size = max(1, min(65535, int(getattr(outcome, "batch_size", 1))))  # queries in its engine call
    result = outcome.result
    if result is None:
        return msg
    msg.weights_random = bool(result.weights_random)
    msg.model = result.model
    for out in result.outputs:
        o = RegionOutput(name=out.name, text=out.text, label=out.label, score=float(out.score))
        o.labels = list(out.labels)
        o.label_scores = [float(s) for s in out.label_scores]
        if include_masks and out.mask is not None:
            o.mask = mask_to_msg(out.mask, msg.header)
        o.bbox = _roi(out.box)
        _set_location(o, out.location)
        msg.outputs.append(o)
    msg.selected_index = int(result.selected_index)
    msg.candidate_scores = [float(s) for s in result.candidate_scores]
    msg.candidate_boxes = [_roi(b) for b in result.candidate_boxes]
    msg.notes = [str(n) for n in result.notes]
    msg.settings = source_lines(result.settings)
    if getattr(outcome, "position_frame_id", ""):
        # the frame the positions are in (aligned depth: the colour frame); a new header, as
        # msg.header may be the frame's own message header
        msg.header = Header(stamp=msg.header.stamp, frame_id=outcome.position_frame_id)
    return msg


def _set_location(o: RegionOutput, location) -> None:
    """RegionOutput's 3D fields from a depth3d.Location (None or no position: has_position false)."""
    if location is None:
        return
    o.depth_valid_fraction = float(location.valid_fraction)
    if location.position is None:
        return
    o.has_position = True
    o.position = Point(x=location.position[0], y=location.position[1], z=location.position[2])
    o.size = Vector3(x=location.size[0], y=location.size[1], z=location.size[2])
