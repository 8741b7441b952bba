"""``region-perception-camera``: publish frames from an image, a folder or a video.

With no source it publishes real photographs bundled with scikit-image (astronaut, coffee,
cat, rocket), so a demo needs no camera and no download. ``--source synthetic`` publishes
scenes of the synthetic shapes world instead, each with its ground truth as JSON on
``<topic>/ground_truth`` (see :mod:`region_perception.datasets.synthetic_camera`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image

from .image_conversion import array_to_image_msg, depth_to_image_msg
from .qos import camera_qos
from .replay import is_log, replay
from .spin import closed_at_exit, node_executor, spin_until

SYNTHETIC = "synthetic"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
BUNDLED = ("astronaut", "coffee", "chelsea", "rocket")


def bundled_photos() -> list[tuple[str, np.ndarray]]:
    from skimage import data

    return [(name, getattr(data, name)()) for name in BUNDLED]


def frames_from(source: str | None, loop: bool, decoded: dict | None = None) -> Iterator[tuple[str, np.ndarray | None]]:
    """(name, RGB frame) pairs from the source, forever when ``loop``.

    Still images whose name is in ``decoded`` (the caller's cache) are not read again:
    their frame is yielded as None.
    """
    first = True
    while True:
        if decoded and not first:
            yield from ((name, None) for name in list(decoded))
            if not loop:
                return
            continue
        first = False
        if source is None:
            yield from bundled_photos()
        else:
            path = Path(source)
            if path.is_dir():
                files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if not files:
                    raise FileNotFoundError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
                for f in files:
                    bgr = cv2.imread(str(f), cv2.IMREAD_COLOR)
                    if bgr is not None:
                        yield f.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if bgr is None:
                    raise FileNotFoundError(f"{path}: not an image OpenCV can read")
                yield path.name, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            else:
                cap = cv2.VideoCapture(str(path))
                if not cap.isOpened():
                    raise FileNotFoundError(f"{path}: not an image, folder or video OpenCV can open")
                index = 0
                while True:
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    yield f"{path.name}#{index}", cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                    index += 1
                cap.release()
        if not loop:
            return


def _rate(text: str) -> float:
    """``--rate``: a positive number, or ``max`` (0: no waiting)."""
    if text.strip().lower() == "max":
        return 0.0
    try:
        return max(0.0, float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'max'") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="region-perception-camera", description=__doc__.splitlines()[0])
    p.add_argument(
        "--source",
        help="image file, folder of images, video, a log: .mcap / ROS 2 bag directory, or 'synthetic' "
        "(scenes of coloured shapes with their ground truth) (default: photos)",
    )
    p.add_argument("--seed", type=int, default=None, help="synthetic: the scene stream (default 1)")
    p.add_argument("--size", type=int, default=None, help="synthetic: image side in pixels (default 128)")
    p.add_argument("--start", type=int, default=0, help="synthetic: index of the first scene (default 0)")
    p.add_argument("--motion", action="store_true",
                   help="synthetic: moving objects (they cross, one passes behind another), sequence after sequence "
                   "from --start, each frame with its truth")
    p.add_argument(
        "--rate", type=_rate, default=None, help="frames per second (default 2); a log: speed factor (default 1) or max"
    )
    p.add_argument("--topic", help="topic to publish on (default image); a log: its image topic to play")
    p.add_argument("--list", action="store_true", help="a log: print its image topics with counts and exit")
    p.add_argument("--loop", action="store_true", help="a log: play it again and again")
    p.add_argument("--publish-topic", help="a log: publish on this topic (default image or image/compressed)")
    p.add_argument("--no-progress", action="store_true", help="a log: no progress bar")
    p.add_argument("--frame-id", default="camera_optical_frame")
    p.add_argument("--encoding", choices=["rgb8", "bgr8"], default="rgb8")
    p.add_argument("--width", type=int, default=0, help="resize to this width (keeps aspect unless --height)")
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--once", action="store_true", help="publish the source once, then exit")
    p.add_argument("--count", type=int, default=0, help="stop after this many frames (0 = no limit)")
    p.add_argument("--reliable", action="store_true", help="reliable QoS (default best-effort, depth 1)")
    p.add_argument("--depth-topic", default="depth/image_raw",
                   help="synthetic: aligned depth image (16UC1, mm) published with each frame; a log: where its "
                   "depth topic (named like depth) is played ('' = none)")
    p.add_argument("--camera-info-topic", default="depth/camera_info",
                   help="synthetic: CameraInfo of the colour and depth images; a log: where its CameraInfo is played")
    return p


def resize(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if not width and not height:
        return frame
    h, w = frame.shape[:2]
    width = width or int(round(w * height / h))
    height = height or int(round(h * width / w))
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def publish_synthetic(args: argparse.Namespace, argv: list[str]) -> int:
    """Synthetic scenes, one per frame, each followed by its ground truth (a reliable JSON topic).

    The ground truth is published before its frame, so a client that has the frame has its truth.
    With ``--depth-topic`` (default on) an aligned depth image (each object at its own depth, a
    wall behind; 16UC1 millimetres) and the CameraInfo follow each frame with the same stamp.
    """
    from sensor_msgs.msg import CameraInfo
    from std_msgs.msg import String

    from ..datasets.synthetic_camera import (
        DEFAULT_SEED,
        DEFAULT_SIZE,
        camera_intrinsics,
        ground_truth,
        ground_truth_json,
        synthetic_depth_frame,
        synthetic_frame,
    )
    from ..geometry.depth import metres_to_16uc1

    seed = DEFAULT_SEED if args.seed is None else args.seed
    size = DEFAULT_SIZE if args.size is None else args.size
    if size < 32 or size > 4096:
        print(f"region-perception-camera: error: --size {size}: expected 32 to 4096 pixels", file=sys.stderr)
        return 2
    if args.start < 0 or args.count < 0:
        print("region-perception-camera: error: --start and --count must be >= 0", file=sys.stderr)
        return 2
    if args.motion and size < 64:
        print(f"region-perception-camera: error: --motion needs --size >= 64, got {size}", file=sys.stderr)
        return 2
    if args.width or args.height:  # the ground truth is in the scene's pixels
        print("region-perception-camera: error: synthetic scenes are sized by --size, not --width/--height",
              file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = rclpy.create_node("region_perception_camera")
    topic = args.topic or "image"
    pub = node.create_publisher(Image, topic, camera_qos(args.reliable))
    executor = node_executor(node)
    truth_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
    truth_pub = node.create_publisher(String, f"{topic}/ground_truth", truth_qos)
    depth_pub = info_pub = None
    if args.depth_topic:
        depth_pub = node.create_publisher(Image, args.depth_topic, camera_qos(args.reliable))
        info_pub = node.create_publisher(CameraInfo, args.camera_info_topic, camera_qos(args.reliable))
        info = camera_info_msg(camera_intrinsics(size), args.frame_id)
    rate = 2.0 if args.rate is None else args.rate
    period = 1.0 / rate if rate > 0 else 0.0
    count = 1 if args.once and not args.count else args.count
    index = args.start
    stream = None
    if args.motion:
        from ..datasets.synthetic_motion import motion_stream, stream_truth

        stream = motion_stream(seed, args.start, size=size)
        index = args.start = 0  # --start names the first sequence; frames are counted from 0
    next_time = time.monotonic()
    with closed_at_exit(executor, node):
        while rclpy.ok() and not (count and index - args.start >= count):
            if stream is not None:
                seq, moving = next(stream)
                frame, depth_m, truth = moving.image, moving.depth_m, stream_truth(seq, moving)
            else:
                frame, objects = synthetic_frame(seed, index, size)
                depth_m, truth = None, None
            data = frame if args.encoding == "rgb8" else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
            msg = array_to_image_msg(np.ascontiguousarray(data), args.encoding)
            msg.header.frame_id = args.frame_id
            msg.header.stamp = node.get_clock().now().to_msg()
            stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if truth is None:
                truth = ground_truth(seed, index, size, objects)
                depth_m = synthetic_depth_frame(objects, size) if depth_pub is not None else None
            truth_pub.publish(String(data=ground_truth_json(truth, stamp_ns, args.frame_id)))
            pub.publish(msg)
            if depth_pub is not None:
                depth = depth_to_image_msg(metres_to_16uc1(depth_m), msg.header)
                info.header = msg.header
                depth_pub.publish(depth)
                info_pub.publish(info)
            index += 1
            next_time += period
            spin_until(executor, next_time)
    return 0


def camera_info_msg(k, frame_id: str):
    """A CameraInfo for an undistorted pinhole camera of intrinsics ``k`` (depth3d.Intrinsics)."""
    from sensor_msgs.msg import CameraInfo

    info = CameraInfo(width=int(k.width), height=int(k.height), distortion_model="plumb_bob")
    info.header.frame_id = frame_id
    info.d = [0.0] * 5
    info.k = [k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return info


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    if args.list or is_log(args.source):  # recorded logs: played by replay.py, read by region_perception.logs
        return replay(args, argv)
    if args.source == SYNTHETIC:
        return publish_synthetic(args, argv)
    if args.motion:
        print("region-perception-camera: error: --motion is for --source synthetic", file=sys.stderr)
        return 2
    if args.seed is not None or args.size is not None:
        print("region-perception-camera: error: --seed and --size are for --source synthetic", file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = rclpy.create_node("region_perception_camera")
    pub = node.create_publisher(Image, args.topic or "image", camera_qos(args.reliable))
    executor = node_executor(node)
    rate = 2.0 if args.rate is None else args.rate
    period = 1.0 / rate if rate > 0 else 0.0
    sent = 0
    cache: dict[str, Image] = {}  # still images are converted once, then only re-stamped
    is_video = (
        args.source is not None
        and Path(args.source).is_file()
        and Path(args.source).suffix.lower() not in IMAGE_SUFFIXES
    )
    next_time = time.monotonic()
    with closed_at_exit(executor, node):
        try:
            for name, frame in frames_from(args.source, loop=not args.once, decoded=None if is_video else cache):
                msg = cache.get(name)
                if msg is None:
                    frame = resize(frame, args.width, args.height)
                    data = frame if args.encoding == "rgb8" else cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
                    msg = array_to_image_msg(data, args.encoding)
                    msg.header.frame_id = args.frame_id
                    if not is_video:
                        cache[name] = msg
                msg.header.stamp = node.get_clock().now().to_msg()
                pub.publish(msg)
                sent += 1
                if args.count and sent >= args.count:
                    break
                next_time += period  # a steady rate, whatever publishing took
                spin_until(executor, next_time)
        except FileNotFoundError as exc:
            print(f"region-perception-camera: error: {exc}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
