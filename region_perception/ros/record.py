"""``region-perception-record --out run.mcap``: record a run for ``ros2 bag``, Foxglove and ``run-log``.

Writes, in ROS 2 CDR with their message definitions, every ``RegionQuery`` and
``RegionResult``, the node's overlays and markers, and the camera frames that were
answered (kept briefly in memory by stamp until a result names them; ``--all-frames``
records every frame), with the aligned depth frame nearest each (``--depth-topic``) and
the latest CameraInfo (``--camera-info-topic``), so ``run-log`` and a replay into the node
give 3D positions again. Disk use is bounded by ``--max-mb`` and ``--max-duration``: the
recorder stops when one is reached. The writing is :mod:`region_perception.logs.writer`;
this module only subscribes (raw bytes, nothing is deserialised but two stamps).
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import ExternalShutdownException
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import MarkerArray

from region_perception.msg import RegionQuery, RegionResult

from ..logs import LogError
from ..logs.cdr import header_stamp_ns
from ..logs.writer import McapLogWriter


def type_name(cls: type) -> str:
    """``sensor_msgs/msg/Image`` of a generated message class."""
    module = cls.__module__.split(".")
    return f"{module[0]}/msg/{cls.__name__}"


class Recorder:
    """Subscriptions (raw CDR) -> :class:`McapLogWriter`; frames kept until answered."""

    def __init__(self, node, writer: McapLogWriter, args: argparse.Namespace) -> None:
        self.node = node
        self.writer = writer
        self.all_frames = args.all_frames
        self.frame_buffer = args.frame_buffer
        self._frames: OrderedDict[int, tuple[str, str, bytes, int]] = OrderedDict()  # stamp -> topic, type, data, t
        self._written_stamps: set[int] = set()
        self.frames_missed = 0  # answered frames no longer held when their result came
        self._depth: OrderedDict[int, tuple[str, str, bytes, int]] = OrderedDict()  # stamp -> depth frame
        self._info: tuple[str, str, bytes] | None = None  # the latest CameraInfo (topic, type, data)
        self._depth_written: set[int] = set()
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=args.depth, reliability=ReliabilityPolicy.RELIABLE)
        sensor = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        ns = args.node.rstrip("/")
        subs = [
            (Image, args.image_topic, sensor, self._frame),
            (CompressedImage, f"{args.image_topic}/compressed", sensor, self._frame),
            (RegionQuery, args.queries_topic, reliable, self._plain),
            (RegionResult, args.results_topic, reliable, self._result),
            (Image, f"{ns}/overlay", sensor, self._plain),
            (MarkerArray, f"{ns}/markers", reliable, self._plain),
        ]
        if args.diagnostics:
            subs.append((DiagnosticArray, "/diagnostics", reliable, self._plain))
        if args.depth_topic:
            subs.append((Image, args.depth_topic, sensor, self._depth_frame))
            subs.append((CameraInfo, args.camera_info_topic, sensor, self._camera_info))
        for cls, topic, qos, handler in subs:
            resolved = node.resolve_topic_name(topic)
            msgtype = type_name(cls)
            node.create_subscription(
                cls, topic, lambda data, t=resolved, m=msgtype, h=handler: h(t, m, data), qos, raw=True
            )

    def _now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def _write(self, topic: str, msgtype: str, data: bytes, t: int) -> None:
        if not self.writer.write(topic, msgtype, data, t):
            raise LimitReached(self.writer.full)

    def _plain(self, topic: str, msgtype: str, data: bytes) -> None:
        self._write(topic, msgtype, data, self._now())

    def _frame(self, topic: str, msgtype: str, data: bytes) -> None:
        t = self._now()
        if self.all_frames:
            self._write(topic, msgtype, data, t)
            return
        stamp = header_stamp_ns(data)
        self._frames[stamp] = (topic, msgtype, data, t)
        while len(self._frames) > self.frame_buffer:
            self._frames.popitem(last=False)

    def _depth_frame(self, topic: str, msgtype: str, data: bytes) -> None:
        t = self._now()
        if self.all_frames:
            self._write(topic, msgtype, data, t)
            return
        self._depth[header_stamp_ns(data)] = (topic, msgtype, data, t)
        while len(self._depth) > self.frame_buffer:
            self._depth.popitem(last=False)

    def _camera_info(self, topic: str, msgtype: str, data: bytes) -> None:
        if self.all_frames:
            self._write(topic, msgtype, data, self._now())
        self._info = (topic, msgtype, data)

    def _write_depth_for(self, stamp: int) -> None:
        """The depth frame nearest an answered frame (within 0.5 s) and the CameraInfo, once each."""
        if not self._depth or not stamp:
            return
        nearest = min(self._depth, key=lambda s: abs(s - stamp))
        if abs(nearest - stamp) > 500_000_000 or nearest in self._depth_written:
            return
        self._depth_written.add(nearest)
        topic, msgtype, data, t = self._depth[nearest]
        if self._info is not None:
            self._write(*self._info, t)
        self._write(topic, msgtype, data, t)

    def _result(self, topic: str, msgtype: str, data: bytes) -> None:
        self._write(topic, msgtype, data, self._now())
        if self.all_frames:
            return
        stamp = header_stamp_ns(data)
        self._write_depth_for(stamp)
        if stamp in self._written_stamps:
            return
        held = self._frames.get(stamp)
        if held is None:
            if stamp:
                self.frames_missed += 1
            return
        self._written_stamps.add(stamp)
        self._write(*held)


class LimitReached(Exception):
    pass


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="region-perception-record", description=__doc__.splitlines()[0])
    p.add_argument(
        "--out", required=True, help="a .mcap file, or a directory to write as a ROS 2 bag (+ metadata.yaml)"
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--max-mb", type=float, default=1024.0, help="stop at this many MB of messages (0 = no limit)")
    p.add_argument("--max-duration", type=float, default=0.0, help="stop after this many seconds (0 = no limit)")
    p.add_argument("--all-frames", action="store_true", help="record every camera frame, not only answered ones")
    p.add_argument("--frame-buffer", type=int, default=60, help="frames held while waiting for a result naming them")
    p.add_argument("--image-topic", default="image", help="camera topic (and its /compressed)")
    p.add_argument("--queries-topic", default="region_queries")
    p.add_argument("--results-topic", default="region_results")
    p.add_argument("--node", default="/region_perception", help="the node's name (for ~/overlay and ~/markers)")
    p.add_argument("--diagnostics", action="store_true", help="also record /diagnostics")
    p.add_argument("--depth-topic", default="depth/image_raw",
                   help="aligned depth image: the frame nearest each answered frame is recorded ('' = none)")
    p.add_argument("--camera-info-topic", default="depth/camera_info", help="CameraInfo recorded with depth frames")
    p.add_argument("--depth", type=int, default=1000, help="history depth of the reliable subscriptions")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    try:
        writer = McapLogWriter(
            Path(args.out),
            max_bytes=int(args.max_mb * 1024 * 1024),
            max_duration_s=args.max_duration,
            overwrite=args.force,
        )
    except (LogError, OSError) as exc:
        print(f"region-perception-record: error: {exc}", file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = rclpy.create_node("region_perception_record")
    recorder = Recorder(node, writer, args)
    print(f"region-perception-record: recording to {args.out}", file=sys.stderr, flush=True)
    stopped = "interrupted"
    try:
        while rclpy.ok():
            rclpy.spin_once(node, timeout_sec=0.5)
            if (
                args.max_duration
                and writer.written
                and node.get_clock().now().nanoseconds - (writer.first_ns or 0) > args.max_duration * 1e9
            ):
                stopped = f"duration limit {args.max_duration:g} s reached"
                break
    except LimitReached as exc:
        stopped = str(exc)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        writer.close()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    counts = ", ".join(f"{t}: {n}" for t, n in sorted(writer.counts.items())) or "nothing"
    missed = f"; {recorder.frames_missed} answered frame(s) had left the buffer" if recorder.frames_missed else ""
    print(
        f"region-perception-record: {stopped}; wrote {writer.written} messages to {args.out} ({counts}){missed}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
