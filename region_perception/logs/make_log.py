"""Write small image logs (MCAP file or ROS 2 bag directory) from arrays, without rclpy.

For tests and examples: frames are serialised to CDR by ``rosbags``' typestore, then
written by this package's MCAP writer, or by ``rosbags`` as a bag directory (sqlite3 or
mcap storage), so the two libraries check each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import LogError
from .writer import McapLogWriter


def _store():
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_KILTED)


def image_cdr(rgb: np.ndarray, stamp_ns: int, frame_id: str, compressed: str = "") -> tuple[str, bytes]:
    """(type, CDR bytes) of an rgb8 Image, or a CompressedImage when ``compressed`` is png/jpeg."""
    import cv2

    ts = _store()
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if compressed:
        ok, buf = cv2.imencode(f".{compressed}", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise LogError(f"could not encode a frame as {compressed}")
        msgtype = "sensor_msgs/msg/CompressedImage"
        msg = ts.types[msgtype](header=header, format=compressed, data=buf.reshape(-1))
    else:
        msgtype = "sensor_msgs/msg/Image"
        h, w = rgb.shape[:2]
        msg = ts.types[msgtype](
            header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3, data=rgb.reshape(-1)
        )
    return msgtype, bytes(ts.serialize_cdr(msg, msgtype))


def write_image_log(
    path: str | Path,
    frames: Sequence[tuple[int, np.ndarray]],
    *,
    topic: str = "/camera/image_raw",
    frame_id: str = "camera_optical_frame",
    compressed: str = "",
    bag_storage: str = "",
) -> Path:
    """(stamp ns, RGB) frames as an MCAP file, or as a bag directory when ``bag_storage`` is sqlite3|mcap."""
    path = Path(path)
    if not bag_storage:
        with McapLogWriter(path) as writer:
            for stamp, rgb in frames:
                msgtype, data = image_cdr(rgb, stamp, frame_id, compressed)
                writer.write(topic, msgtype, data, stamp)
        return path
    from rosbags.rosbag2 import StoragePlugin, Writer

    plugin = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}[bag_storage]
    ts = _store()
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    with Writer(path, version=9, storage_plugin=plugin) as writer:
        conn = writer.add_connection(topic, msgtype, typestore=ts)
        for stamp, rgb in frames:
            writer.write(conn, stamp, image_cdr(rgb, stamp, frame_id, compressed)[1])
    return path


def depth_cdr(metres: np.ndarray, stamp_ns: int, frame_id: str, scale: float = 0.001) -> tuple[str, bytes]:
    """(type, CDR bytes) of a 16UC1 depth Image (units of ``scale`` metres; 0 = no depth)."""
    from ..geometry.depth import metres_to_16uc1

    ts = _store()
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)
    units = metres_to_16uc1(metres, scale).astype("<u2")
    h, w = units.shape
    msgtype = "sensor_msgs/msg/Image"
    msg = ts.types[msgtype](header=header, height=h, width=w, encoding="16UC1", is_bigendian=0, step=w * 2,
                            data=np.frombuffer(units.tobytes(), dtype=np.uint8))
    return msgtype, bytes(ts.serialize_cdr(msg, msgtype))


def camera_info_cdr(k, stamp_ns: int, frame_id: str) -> tuple[str, bytes]:
    """(type, CDR bytes) of a CameraInfo for intrinsics ``k`` (depth3d.Intrinsics, no distortion)."""
    ts = _store()
    Header = ts.types["std_msgs/msg/Header"]
    Time = ts.types["builtin_interfaces/msg/Time"]
    header = Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000), frame_id=frame_id)
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    msgtype = "sensor_msgs/msg/CameraInfo"
    msg = ts.types[msgtype](
        header=header, height=int(k.height), width=int(k.width), distortion_model="plumb_bob",
        d=np.zeros(5), k=np.array([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1], float), r=np.eye(3).reshape(-1),
        p=np.array([k.fx, 0, k.cx, 0, 0, k.fy, k.cy, 0, 0, 0, 1, 0], float), binning_x=0, binning_y=0, roi=roi,
    )
    return msgtype, bytes(ts.serialize_cdr(msg, msgtype))


def write_rgbd_log(
    path: str | Path,
    frames: Sequence[tuple[int, np.ndarray, np.ndarray]],
    intrinsics,
    *,
    topic: str = "/camera/color/image_raw",
    depth_topic: str = "/camera/aligned_depth_to_color/image_raw",
    info_topic: str = "/camera/aligned_depth_to_color/camera_info",
    frame_id: str = "camera_color_optical_frame",
    depth_delay_ns: int = 0,
) -> Path:
    """(stamp ns, RGB, depth metres) frames as an MCAP: colour, aligned 16UC1 depth and CameraInfo,
    as an RGB-D camera driver publishes them (depth stamped ``depth_delay_ns`` after its colour frame)."""
    path = Path(path)
    with McapLogWriter(path) as writer:
        for stamp, rgb, metres in frames:
            writer.write(topic, *image_cdr(rgb, stamp, frame_id), stamp)
            d = stamp + depth_delay_ns
            writer.write(info_topic, *camera_info_cdr(intrinsics, d, frame_id), d)
            writer.write(depth_topic, *depth_cdr(metres, d, frame_id), d)
    return path
