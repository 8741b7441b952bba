"""Play a recorded log's camera frames into ROS: ``region-perception-camera --source run.mcap``.

Frames are published as recorded (the CDR bytes, so ``header.stamp`` and ``frame_id`` are
the log's own and stamped queries from the same log find their frames), paced by their
log times divided by ``--rate`` (``max``: as fast as possible). A log with an aligned depth
image topic (named like ``depth``) and a CameraInfo also has those played, in log order, on
``--depth-topic`` / ``--camera-info-topic`` (``--depth-topic ''``: not played), so a node with
``depth_topic`` set answers with 3D positions. Reading is in :mod:`region_perception.logs`;
this module only publishes.
"""

from __future__ import annotations

import argparse
import sys
import time

import rclpy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from ..logs import LogError
from ..logs.reader import LogReader
from .qos import camera_qos
from .spin import closed_at_exit, node_executor, spin_until


def is_log(source: str | None) -> bool:
    """An MCAP file or a ROS 2 bag directory (what ``--source`` hands to this module)."""
    from pathlib import Path

    if not source:
        return False
    path = Path(source)
    return path.suffix.lower() == ".mcap" or (path.is_dir() and (path / "metadata.yaml").is_file())


def list_topics(reader: LogReader) -> str:
    images = reader.image_topics()
    lines = [f"{reader.path}: {len(images)} image topic(s)"]
    lines += [f"  {t}  {i.msgtype}  {i.count} messages" for t, i in images.items()]
    others = len(reader.topics()) - len(images)
    if others:
        lines.append(f"  ({others} other topic(s))")
    return "\n".join(lines)


def replay(args: argparse.Namespace, ros_argv: list[str]) -> int:
    """Publish the log's frames; 2 with one line for a bad log or topic."""
    try:
        reader = LogReader(args.source)
        if args.list:
            print(list_topics(reader))
            return 0
        topic = reader.image_topic(args.topic)
        depth_topic = reader.depth_topic() if getattr(args, "depth_topic", "") else None
        depth_topic = depth_topic if depth_topic != topic else None
        info_topic = reader.camera_info_topic(beside=depth_topic) if depth_topic else None
    except LogError as exc:
        print(f"region-perception-camera: error: {exc}", file=sys.stderr)
        return 2
    info = reader.topics()[topic]
    compressed = info.msgtype.endswith("CompressedImage")
    out_topic = args.publish_topic or ("image/compressed" if compressed else "image")
    speed = args.rate if args.rate is not None else 1.0
    rclpy.init(args=ros_argv)
    node = rclpy.create_node("region_perception_camera")
    pub = node.create_publisher(CompressedImage if compressed else Image, out_topic, camera_qos(args.reliable))
    pubs = {topic: pub}  # log topic -> publisher (the recorded bytes go out as they are)
    if depth_topic:
        pubs[depth_topic] = node.create_publisher(Image, args.depth_topic, camera_qos(args.reliable))
        if info_topic:
            pubs[info_topic] = node.create_publisher(CameraInfo, args.camera_info_topic, camera_qos(args.reliable))
    executor = node_executor(node)
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=info.count, desc=f"{topic} -> {out_topic}", unit="frame", file=sys.stderr)
    sent = 0
    with closed_at_exit(executor, node):
        try:
            while True:
                first_log: int | None = None
                start = time.monotonic()
                for message in reader.messages(list(pubs)):
                    if first_log is None:
                        first_log = message.log_time_ns
                    if speed > 0:  # keep the log's timing, scaled
                        due = start + (message.log_time_ns - first_log) / 1e9 / speed
                        spin_until(executor, due)
                    pubs[message.topic].publish(message.data)  # the recorded bytes: stamp and frame_id as logged
                    if message.topic != topic:
                        continue
                    sent += 1
                    if bar is not None:
                        bar.update(1)
                    if args.count and sent >= args.count:
                        return 0
                if not args.loop:
                    return 0
                if bar is not None:
                    bar.reset()
        except LogError as exc:
            print(f"region-perception-camera: error: {exc}", file=sys.stderr)
            return 2
        finally:
            if bar is not None:
                bar.close()
    return 0
