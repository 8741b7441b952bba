"""``sensor_msgs/Image`` and ``CompressedImage`` -> numpy, honouring ``step`` padding (no ROS needed).

The node, the log reader and the tools read images with these. ROS 2's cv_bridge is used when it
is importable; otherwise this converter (numpy 2 compatible) does the same for the encodings the
node accepts. Messages are duck-typed (``encoding``, ``height``, ``width``, ``step``, ``data``), so
the rosbags-decoded messages of a log work as well as rclpy's.
"""

from __future__ import annotations

import cv2
import numpy as np

# encoding -> (channels, conversion to RGB)
_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb8": (3, None),
    "bgr8": (3, cv2.COLOR_BGR2RGB),
    "rgba8": (4, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, cv2.COLOR_BGRA2RGB),
    "mono8": (1, cv2.COLOR_GRAY2RGB),
    "8UC1": (1, cv2.COLOR_GRAY2RGB),
    "8UC3": (3, cv2.COLOR_BGR2RGB),
}
SUPPORTED = tuple(_ENCODINGS)
MAX_PIXELS_DEFAULT = 4096 * 4096

try:  # ROS 2's cv_bridge, when the machine has a ROS distribution
    from cv_bridge import CvBridge

    _BRIDGE: CvBridge | None = CvBridge()
except ImportError:  # PyPI-only install: our own converter below
    _BRIDGE = None


class ImageConversionError(ValueError):
    """The message cannot be read as an image; the text says why."""


def image_msg_to_array(msg, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """(H, W, C) uint8 view of the message's pixels in its own channel order."""
    enc = msg.encoding
    if enc not in _ENCODINGS:
        if enc in ("mono16", "16UC1", "16SC1", "32FC1"):
            raise ImageConversionError(f"encoding {enc!r} (depth) is not supported: send {', '.join(SUPPORTED)}")
        raise ImageConversionError(f"unknown image encoding {enc!r}: send one of {', '.join(SUPPORTED)}")
    channels, _ = _ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise ImageConversionError(f"image is empty ({w}x{h})")
    if h * w > max_pixels:
        raise ImageConversionError(f"image {w}x{h} is larger than the limit of {max_pixels} pixels")
    row = w * channels
    if step < row:
        raise ImageConversionError(f"step {step} is smaller than width x channels = {row} for {enc}")
    data = msg.data
    buf = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8)
    if buf.size < step * (h - 1) + row:
        raise ImageConversionError(f"data has {buf.size} bytes, {enc} {w}x{h} with step {step} needs {step * h}")
    if buf.size >= step * h:
        rows = buf[: step * h].reshape(h, step)
    else:  # last row unpadded
        rows = np.zeros((h, step), np.uint8)
        rows.reshape(-1)[: buf.size] = buf
    return rows[:, :row].reshape(h, w, channels)


def image_msg_to_rgb(msg, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """An RGB uint8 copy of a ``sensor_msgs/Image``."""
    arr = image_msg_to_array(msg, max_pixels)  # validates encoding, size, step and data length
    if _BRIDGE is not None:
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    code = _ENCODINGS[msg.encoding][1]
    return np.ascontiguousarray(arr) if code is None else cv2.cvtColor(arr, code)


def compressed_msg_to_rgb(msg, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ImageConversionError(f"compressed image ({msg.format or 'unknown format'}) could not be decoded")
    if bgr.shape[0] * bgr.shape[1] > max_pixels:
        raise ImageConversionError(f"image {bgr.shape[1]}x{bgr.shape[0]} is larger than the limit of {max_pixels}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def mask_msg_to_bool(msg, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A mono8 mask message as a boolean array (nonzero = inside)."""
    if msg.encoding not in ("mono8", "8UC1"):
        raise ImageConversionError(f"mask encoding must be mono8, got {msg.encoding!r}")
    mask = image_msg_to_array(msg)[:, :, 0] > 0
    if expected_hw is not None and mask.shape != tuple(expected_hw):
        raise ImageConversionError(
            f"mask is {mask.shape[1]}x{mask.shape[0]}, the image is {expected_hw[1]}x{expected_hw[0]}"
        )
    return mask
