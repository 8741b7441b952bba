"""``region-perception-view``: the node, live in the Foxglove app, from a pip-only install.

A ROS node of its own, in its own process, that subscribes the region_perception node's topics and
serves them through the Foxglove SDK's in-process WebSocket server (``ws://localhost:8765`` by
default). What it serves, each on its own Foxglove channel:

- ``/image``: the camera image as a JPEG ``CompressedImage`` (passed through when the camera is
  already compressed); ``/region_perception/overlay``: the node's overlay, likewise;
- ``/region_perception_view/annotations``: the answers on the newest answered frame as
  ``ImageAnnotations`` (each region's mask outline, its box and its words; REFER's other
  candidates faintly; the viewer's click), and ``/region_perception_view/answered_image``: that frame;
- ``/region_perception_view/scene``: a ``SceneUpdate`` of 3D boxes in the camera frame, for answers
  whose regions have a position from depth; ``/tf``: the camera's optical frame under ``--parent-frame``;
- ``/region_perception_view/log``: each answer, and each refused viewer message, as a ``Log``;
  ``/region_perception_view/diagnostics``: the node's ``/diagnostics``, as ``Log`` lines.

A viewer asks too (the server's ``clientPublish`` capability): JSON on ``/region_perception_view/query``
or ``/clicked_point`` (see :func:`region_perception.service.view_annotations.parse_view_query`)
becomes a ``RegionQuery`` on ``region_queries``; a message the view cannot answer is refused with
its reason (a server status and a log line), and nothing is published.

Why it never slows the node: it is another process; the images it takes are best-effort with a
history of one (a busy view gets the newest frame, never a queue); it subscribes the image and the
overlay only while some viewer (or the MCAP file of ``--mcap``) watches them, and encodes a channel
only while it has one (the node draws overlays only while someone subscribes ``~/overlay``); the
answers it reads are a reliable keep-last history, which never makes the node's publisher wait; and
each viewer has a bounded backlog in the SDK (``--backlog``): a slow viewer loses its oldest view
frames, not anyone's queries.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from foxglove.websocket import Capability, ChannelView, Client, ClientChannel, StatusLevel
from geometry_msgs.msg import Point32
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CompressedImage, Image

import foxglove
from foxglove import channels as fc
from foxglove import messages as fm
from region_perception.msg import Region, RegionQuery, RegionResult

from ..service.image_decoding import ImageConversionError, image_msg_to_rgb, mask_msg_to_bool
from ..service.view_annotations import (
    QUERY_TOPICS,
    AnnotationBoard,
    AnnotationSet,
    Box3D,
    ViewAnswer,
    ViewQuery,
    ViewQueryError,
    ViewRegion,
    answer_annotations,
    answer_boxes_3d,
    answer_log,
    diagnostics_log,
    parse_view_query,
    task_name,
)
from .spin import closed_at_exit, node_executor, serve_until_signalled, stop_requested_by_signals

DEFAULT_PORT = 8765
IMAGE_TOPIC = "/image"
OVERLAY_TOPIC = "/region_perception/overlay"
ANNOTATIONS_TOPIC = "/region_perception_view/annotations"
ANSWERED_IMAGE_TOPIC = "/region_perception_view/answered_image"
SCENE_TOPIC = "/region_perception_view/scene"
LOG_TOPIC = "/region_perception_view/log"
DIAGNOSTICS_TOPIC = "/region_perception_view/diagnostics"
TF_TOPIC = "/tf"
# the ROS optical frame (x right, y down, z forward) in a body frame (x forward, y left, z up)
OPTICAL_IN_BODY = (-0.5, 0.5, -0.5, 0.5)
FRESH_S = 2.0  # a viewer's point names the newest frame seen if it came this recently, else the node's latest
LATEST_ONLY = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
LEVELS = {"info": fm.LogLevel.Info, "warning": fm.LogLevel.Warning, "error": fm.LogLevel.Error}


def stamp_ns(stamp) -> int:
    """A ROS stamp in nanoseconds (not ros.messages': that module loads the engine, and torch with it)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def _timestamp(ns: int) -> fm.Timestamp:
    return fm.Timestamp(int(ns) // 1_000_000_000, int(ns) % 1_000_000_000)


def _color(rgba: tuple[float, float, float, float]) -> fm.Color:
    return fm.Color(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3])


def view_answer(msg: RegionResult) -> ViewAnswer:
    """A RegionResult as the rclpy-free :class:`ViewAnswer` (masks decoded; an unreadable mask is left out)."""
    regions = []
    for out in msg.outputs:
        mask = None
        if out.mask.width and out.mask.height:
            try:
                mask = mask_msg_to_bool(out.mask)
            except ImageConversionError:
                mask = None
        box = None
        if out.bbox.width and out.bbox.height:
            x, y = float(out.bbox.x_offset), float(out.bbox.y_offset)
            box = (x, y, x + float(out.bbox.width), y + float(out.bbox.height))
        position = size = None
        if out.has_position:
            position = (out.position.x, out.position.y, out.position.z)
            size = (out.size.x, out.size.y, out.size.z)
        regions.append(ViewRegion(out.name, out.text, out.label, float(out.score), box, mask, position, size))
    candidates = [
        (float(b.x_offset), float(b.y_offset), float(b.x_offset + b.width), float(b.y_offset + b.height))
        for b in msg.candidate_boxes
    ]
    return ViewAnswer(
        query_id=msg.query_id, task=int(msg.task), status=int(msg.status), error=msg.error,
        stamp_ns=stamp_ns(msg.header.stamp), frame_id=msg.header.frame_id, regions=regions,
        selected_index=int(msg.selected_index), candidate_boxes=candidates, weights_random=bool(msg.weights_random),
        latency_ms=float(msg.latency_ms), model=msg.model, notes=list(msg.notes),
    )


def image_annotations(drawing: AnnotationSet) -> fm.ImageAnnotations:
    """The Foxglove message of an :class:`AnnotationSet`."""
    ts = _timestamp(drawing.stamp_ns)
    points = [
        fm.PointsAnnotation(
            timestamp=ts,
            type=fm.PointsAnnotationType.LineLoop,
            points=[fm.Point2(x=x, y=y) for x, y in p.points],
            outline_color=_color(p.color),
            fill_color=_color(p.fill) if p.fill else None,
            thickness=p.thickness,
            metadata=[fm.KeyValuePair(key="kind", value=p.kind), fm.KeyValuePair(key="query_id", value=p.query_id)],
        )
        for p in drawing.polylines
    ]
    texts = [
        fm.TextAnnotation(timestamp=ts, position=fm.Point2(x=t.position[0], y=t.position[1]), text=t.text,
                          font_size=t.font_size, text_color=_color(t.color), background_color=_color(t.background))
        for t in drawing.labels
    ]
    circles = [
        fm.CircleAnnotation(timestamp=ts, position=fm.Point2(x=c.centre[0], y=c.centre[1]), diameter=c.diameter,
                            thickness=2.0, outline_color=_color(c.color))
        for c in drawing.circles
    ]
    return fm.ImageAnnotations(circles=circles, points=points, texts=texts)


def scene_update(boxes: list[Box3D], lifetime_s: float) -> fm.SceneUpdate:
    """One entity per 3D box: a translucent cube and its words above it (optical frame: y is down)."""
    entities = []
    for box in boxes:
        x, y, z = box.position
        sx, sy, sz = box.size
        label = fm.TextPrimitive(
            pose=fm.Pose(position=fm.Vector3(x=x, y=y - sy / 2 - 0.05, z=z), orientation=fm.Quaternion(w=1.0)),
            billboard=True, font_size=14.0, scale_invariant=True, color=fm.Color(r=1.0, g=1.0, b=0.2, a=1.0),
            text=box.text,
        )
        cube = fm.CubePrimitive(
            pose=fm.Pose(position=fm.Vector3(x=x, y=y, z=z), orientation=fm.Quaternion(w=1.0)),
            size=fm.Vector3(x=sx, y=sy, z=sz), color=_color(box.color),
        )
        entities.append(fm.SceneEntity(
            timestamp=_timestamp(box.stamp_ns), frame_id=box.frame_id, id=box.entity_id,
            lifetime=fm.Duration.from_secs(lifetime_s), cubes=[cube], texts=[label],
        ))
    return fm.SceneUpdate(entities=entities)


def guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """A callback whose error is logged, not raised: an odd message must not end the view (the executor re-raises)."""

    @functools.wraps(callback)
    def run(self, *args) -> None:
        try:
            callback(self, *args)
        except Exception as exc:
            self.errors += 1
            self.get_logger().error(f"{callback.__name__}: {type(exc).__name__}: {exc}", throttle_duration_sec=10.0)

    return run


def _compressed_format(fmt: str) -> str:
    """ROS ``CompressedImage.format`` ("rgb8; jpeg compressed bgr8", "png") -> Foxglove's ("jpeg", "png")."""
    lowered = fmt.lower()
    return "png" if "png" in lowered else "jpeg"


def foxglove_image(msg: Image | CompressedImage, jpeg_quality: int = 80) -> fm.CompressedImage:
    """A ROS image as Foxglove's CompressedImage: raw frames JPEG-encoded, compressed ones passed through."""
    if isinstance(msg, CompressedImage):
        data, fmt = bytes(msg.data), _compressed_format(msg.format)
    else:
        rgb = image_msg_to_rgb(msg)  # ImageConversionError for an encoding or size it cannot read
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        if not ok:
            raise ImageConversionError("JPEG encoding failed")
        data, fmt = buf.tobytes(), "jpeg"
    return fm.CompressedImage(timestamp=_timestamp(stamp_ns(msg.header.stamp)), frame_id=msg.header.frame_id,
                              data=data, format=fmt)


class ViewListener(foxglove.ServerListener):
    """The SDK's callbacks (on its own threads): who watches what, and what viewers publish."""

    def __init__(self, view: LiveView) -> None:
        self.view = view

    def on_subscribe(self, client: Client, channel: ChannelView) -> None:
        self.view.watching(client.id, channel.topic, True)

    def on_unsubscribe(self, client: Client, channel: ChannelView) -> None:
        self.view.watching(client.id, channel.topic, False)

    def on_client_advertise(self, client: Client, channel: ClientChannel) -> None:
        self.view.client_advertised(client.id, channel.id, channel.topic, channel.encoding)

    def on_client_unadvertise(self, client: Client, client_channel_id: int) -> None:
        self.view.client_unadvertised(client.id, client_channel_id)

    def on_message_data(self, client: Client, client_channel_id: int, data: bytes) -> None:
        self.view.client_message(client.id, client_channel_id, data)


class LiveView(Node):
    """The view: ROS in, Foxglove out (and viewers' queries back to ROS)."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("region_perception_view")
        self.args = args
        self.lock = threading.Lock()
        self.fox = foxglove.Context()
        ctx = self.fox
        self.image_ch = fc.CompressedImageChannel(IMAGE_TOPIC, context=ctx)
        self.overlay_ch = fc.CompressedImageChannel(OVERLAY_TOPIC, context=ctx)
        self.answered_ch = fc.CompressedImageChannel(ANSWERED_IMAGE_TOPIC, context=ctx)
        self.annotations_ch = fc.ImageAnnotationsChannel(ANNOTATIONS_TOPIC, context=ctx)
        self.scene_ch = fc.SceneUpdateChannel(SCENE_TOPIC, context=ctx)
        self.log_ch = fc.LogChannel(LOG_TOPIC, context=ctx)
        self.diag_ch = fc.LogChannel(DIAGNOSTICS_TOPIC, context=ctx)
        self.tf_ch = fc.FrameTransformsChannel(TF_TOPIC, context=ctx)
        self.board = AnnotationBoard()
        self.watchers: dict[str, set[int]] = {}  # Foxglove topic -> ids of the clients subscribed
        self.client_channels: dict[tuple[int, int], str] = {}  # (client, client channel) -> topic
        self.clicks: OrderedDict[str, tuple[float, float]] = OrderedDict()  # query id -> the viewer's point
        self.recent_images: deque[tuple[int, Image | CompressedImage]] = deque(maxlen=max(1, args.keep_frames))
        self.image_size: tuple[int, int] | None = None  # (height, width) of the newest image seen
        self.frame_id = ""
        self.image_at = -math.inf  # monotonic time of the newest image seen
        self.query_ids = itertools.count(1)
        self.stats = {"images_in": 0, "images_sent": 0, "overlays_sent": 0, "answers_in": 0, "queries_sent": 0,
                      "refused": 0}
        self.image_sub = self.overlay_sub = None
        self.errors = 0  # callbacks that raised (logged, see guarded)
        image_type = CompressedImage if args.compressed else Image
        self._image_type = image_type
        self.results_sub = self.create_subscription(RegionResult, "region_results", self._on_result, 100)
        self.diag_sub = self.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.query_pub = self.create_publisher(RegionQuery, "region_queries", 100)
        # the SDK's threads ask for a (un)subscription; the executor does it, woken by this guard condition
        self._sync_gc = self.create_guard_condition(self._sync_subscriptions)
        self.mcap = foxglove.open_mcap(args.mcap, context=ctx) if args.mcap else None
        self.server = foxglove.start_server(
            name="region_perception_view",
            host=args.host,
            port=args.port,
            capabilities=[Capability.ClientPublish],
            supported_encodings=["json"],
            server_listener=ViewListener(self),
            context=ctx,
            message_backlog_size=args.backlog,
        )
        self._sync_subscriptions()
        self.get_logger().info(f"Foxglove WebSocket server on ws://{args.host}:{self.server.port}")

    # -- what is watched -----------------------------------------------------------------------
    def watching(self, client_id: int, topic: str, on: bool) -> None:
        with self.lock:
            ids = self.watchers.setdefault(topic, set())
            (ids.add if on else ids.discard)(client_id)
        self._sync_gc.trigger()

    def _watched(self, *topics: str) -> bool:
        if self.mcap is not None:
            return True
        with self.lock:
            return any(self.watchers.get(t) for t in topics)

    @guarded
    def _sync_subscriptions(self) -> None:
        """Subscribe the image and the overlay only while someone watches them (executor thread)."""
        want_image = self._watched(IMAGE_TOPIC, ANSWERED_IMAGE_TOPIC)
        if want_image and self.image_sub is None:
            topic = self.args.image_topic + ("/compressed" if self.args.compressed else "")
            self.image_sub = self.create_subscription(self._image_type, topic, self._on_image, LATEST_ONLY)
        elif not want_image and self.image_sub is not None:
            self.destroy_subscription(self.image_sub)
            self.image_sub = None
        want_overlay = self._watched(OVERLAY_TOPIC)
        if want_overlay and self.overlay_sub is None:
            self.overlay_sub = self.create_subscription(Image, self.args.overlay_topic, self._on_overlay, LATEST_ONLY)
        elif not want_overlay and self.overlay_sub is not None:
            self.destroy_subscription(self.overlay_sub)
            self.overlay_sub = None

    # -- ROS in, Foxglove out ------------------------------------------------------------------
    def _jpeg(self, msg: Image | CompressedImage) -> fm.CompressedImage | None:
        try:
            return foxglove_image(msg, self.args.jpeg_quality)
        except ImageConversionError as exc:
            self.get_logger().warning(f"image not shown: {exc}", throttle_duration_sec=10.0)
            return None

    def _size_of(self, msg: Image | CompressedImage) -> tuple[int, int] | None:
        """(height, width); a compressed frame is decoded for it only now and then (sizes rarely change)."""
        if isinstance(msg, Image):
            return (int(msg.height), int(msg.width))
        if self.image_size is not None and self.stats["images_in"] % 30:
            return self.image_size
        decoded = cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_GRAYSCALE)
        return None if decoded is None else decoded.shape[:2]

    @guarded
    def _on_image(self, msg: Image | CompressedImage) -> None:
        self.stats["images_in"] += 1
        stamp = stamp_ns(msg.header.stamp)
        size = self._size_of(msg)
        with self.lock:
            self.image_size = size or self.image_size
            self.frame_id = msg.header.frame_id or self.frame_id
            self.image_at = time.monotonic()
        self.recent_images.append((stamp, msg))
        self._publish_transform(stamp, msg.header.frame_id)
        if self.image_ch.has_sinks():
            image = self._jpeg(msg)
            if image is not None:
                self.image_ch.log(image)
                self.stats["images_sent"] += 1

    @guarded
    def _on_overlay(self, msg: Image) -> None:
        if self.overlay_ch.has_sinks():
            image = self._jpeg(msg)
            if image is not None:
                self.overlay_ch.log(image)
                self.stats["overlays_sent"] += 1

    def _publish_transform(self, stamp: int, frame_id: str) -> None:
        if not frame_id or not self.tf_ch.has_sinks() or frame_id == self.args.parent_frame:
            return
        x, y, z, w = OPTICAL_IN_BODY
        self.tf_ch.log(fm.FrameTransforms(transforms=[fm.FrameTransform(
            timestamp=_timestamp(stamp), parent_frame_id=self.args.parent_frame, child_frame_id=frame_id,
            translation=fm.Vector3(), rotation=fm.Quaternion(x=x, y=y, z=z, w=w),
        )]))

    @guarded
    def _on_result(self, msg: RegionResult) -> None:
        self.stats["answers_in"] += 1
        answer = view_answer(msg)
        with self.lock:
            click = self.clicks.get(answer.query_id)
            mask = next((r.mask for r in answer.regions if r.mask is not None), None)
            if self.image_size is None and mask is not None:  # nobody watched the image yet: its size from the answer
                self.image_size = mask.shape
            self.frame_id = self.frame_id or answer.frame_id
        if self.annotations_ch.has_sinks() or self.answered_ch.has_sinks():
            drawing = self.board.add(answer, answer_annotations(answer, click))
            frame = next((m for s, m in reversed(self.recent_images) if s == answer.stamp_ns), None)
            if frame is not None and self.answered_ch.has_sinks():
                image = self._jpeg(frame)
                if image is not None:
                    self.answered_ch.log(image)
            self.annotations_ch.log(image_annotations(drawing))
        boxes = answer_boxes_3d(answer)
        if boxes and self.scene_ch.has_sinks():
            self.scene_ch.log(scene_update(boxes, self.args.scene_lifetime_s))
            self._publish_transform(answer.stamp_ns, answer.frame_id)
        level, line = answer_log(answer)
        self._log(level, "answer", line, answer.stamp_ns)

    @guarded
    def _on_diagnostics(self, msg: DiagnosticArray) -> None:
        if not self.diag_ch.has_sinks():
            return
        for status in msg.status:
            level = status.level[0] if isinstance(status.level, (bytes, bytearray)) else int(status.level)
            level, line = diagnostics_log(status.name, level, status.message,
                                          {kv.key: kv.value for kv in status.values})
            self.diag_ch.log(fm.Log(timestamp=_timestamp(stamp_ns(msg.header.stamp)), level=LEVELS[level],
                                    message=line, name=status.name))

    def _log(self, level: str, name: str, line: str, stamp: int | None = None) -> None:
        if self.log_ch.has_sinks():
            self.log_ch.log(fm.Log(timestamp=_timestamp(stamp if stamp else time.time_ns()), level=LEVELS[level],
                                   message=line, name=name))

    # -- viewers' queries ------------------------------------------------------------------------
    def refuse(self, client_id: int, reason: str) -> None:
        """A viewer's message the view will not act on: the reason goes back as a status and a log line."""
        self.stats["refused"] += 1
        line = f"refused (client {client_id}): {reason}"
        self.get_logger().warning(line)
        self.server.publish_status(line, StatusLevel.Warning, f"refused-{self.stats['refused']}")
        self._log("warning", "view", line)

    @guarded
    def client_advertised(self, client_id: int, channel_id: int, topic: str, encoding: str) -> None:
        with self.lock:
            self.client_channels[(client_id, channel_id)] = topic
        if topic not in QUERY_TOPICS:
            self.refuse(client_id, f"channel {topic!r} is not a query channel (use {' or '.join(QUERY_TOPICS)})")
        elif encoding != "json":
            self.refuse(client_id, f"channel {topic!r} has encoding {encoding!r}: only json is read")

    def client_unadvertised(self, client_id: int, channel_id: int) -> None:
        with self.lock:
            self.client_channels.pop((client_id, channel_id), None)

    @guarded
    def client_message(self, client_id: int, channel_id: int, data: bytes) -> None:
        with self.lock:
            topic = self.client_channels.get((client_id, channel_id))
            size = self.image_size
            frame_id = self.frame_id
            # the frame the viewer sees; none watched lately (the image is subscribed only while watched): the latest
            fresh = time.monotonic() - self.image_at < FRESH_S
            stamp = self.recent_images[-1][0] if self.recent_images and fresh else 0
        if topic is None:
            self.refuse(client_id, f"client channel {channel_id} was never advertised")
            return
        try:
            asked = parse_view_query(topic, data, size)
        except ViewQueryError as exc:
            self.refuse(client_id, str(exc))
            return
        self.ask(client_id, asked, stamp, frame_id)

    def ask(self, client_id: int, asked: ViewQuery, stamp: int, frame_id: str) -> str:
        """Publish a viewer's query on ``region_queries``, about the frame the viewer saw last."""
        query_id = f"view-{client_id}-{next(self.query_ids)}"
        msg = RegionQuery(query_id=query_id, task=asked.task, text=asked.text)
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        msg.header.frame_id = frame_id
        if asked.point is not None:
            x, y = asked.point
            msg.regions = [Region(kind=Region.POINTS, points=[Point32(x=float(x), y=float(y))], name="click")]
            with self.lock:
                self.clicks[query_id] = asked.point
                while len(self.clicks) > 256:
                    self.clicks.popitem(last=False)
        self.query_pub.publish(msg)
        self.stats["queries_sent"] += 1
        where = f" at ({asked.point[0]:g}, {asked.point[1]:g})" if asked.point else f": {asked.text!r}"
        self._log("info", "view", f"asked {query_id}: {task_name(asked.task)}{where}")
        return query_id

    def close(self) -> None:
        self.server.stop()
        if self.mcap is not None:
            self.mcap.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="region-perception-view", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="WebSocket port (0: any free port)")
    p.add_argument("--image-topic", default="image", help="the camera image the node reads")
    p.add_argument("--compressed", action="store_true", help="read <image-topic>/compressed (passed through)")
    p.add_argument("--overlay-topic", default="/region_perception/overlay", help="the node's ~/overlay")
    p.add_argument("--parent-frame", default="camera_link", help="frame the camera's optical frame hangs under")
    p.add_argument("--jpeg-quality", type=int, default=80)
    p.add_argument("--backlog", type=int, default=64,
                   help="messages queued per viewer; a slower viewer loses the oldest view frames")
    p.add_argument("--keep-frames", type=int, default=30, help="recent frames kept to show the one an answer is on")
    p.add_argument("--scene-lifetime-s", type=float, default=5.0, help="how long a 3D box stays")
    p.add_argument("--mcap", type=Path, help="also record what is served to this MCAP file (same layout opens it)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``region-perception-view [--port 8765] [--ros-args ...]``: serve until Ctrl-C / SIGTERM."""
    from rclpy.signals import SignalHandlerOptions

    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    if not 1 <= args.jpeg_quality <= 100 or args.backlog < 1:
        print("region-perception-view: error: --jpeg-quality 1..100 and --backlog >= 1", file=sys.stderr)
        return 2
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    requested = stop_requested_by_signals()
    try:
        view = LiveView(args)
    except (RuntimeError, OSError) as exc:  # the port is taken, the MCAP file exists
        print(f"region-perception-view: error: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 1
    print(f"region-perception-view: serving ws://{args.host}:{view.server.port}", flush=True)
    executor = node_executor(view)
    with closed_at_exit(executor, view):
        try:
            serve_until_signalled(executor, requested)
        finally:
            view.close()
            print(f"region-perception-view: {view.stats | {'callback_errors': view.errors}}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
