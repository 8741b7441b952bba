"""``sensor_msgs/Image`` and ``CompressedImage`` -> numpy, honouring ``step`` padding (no ROS needed).

The node, the log reader and the tools read images with these. ROS 2's cv_bridge is used when it
is importable; otherwise this converter (numpy 2 compatible) does the same for the encodings the
node accepts. Messages are duck-typed (``encoding``, ``height``, ``width``, ``step``, ``data``), so
the rosbags-decoded messages of a log work as well as rclpy's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

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
    """An RGB uint8 array of a ``sensor_msgs/Image`` (writable; it may share the message's buffer)."""
    arr = image_msg_to_array(msg, max_pixels)  # validates encoding, size, step and data length
    if _BRIDGE is not None and not isinstance(msg, SerializedImage):
        return np.ascontiguousarray(_BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8"))
    code = _ENCODINGS[msg.encoding][1]
    if code is not None:
        return cv2.cvtColor(arr, code)
    rgb = np.ascontiguousarray(arr)
    return rgb if rgb.flags.writeable else rgb.copy()  # a SerializedImage's bytes are read-only


@dataclass(frozen=True)
class SerializedImage:
    """A ``sensor_msgs/Image`` read from its serialized (CDR) bytes: the fields, and the pixels left in place.

    What a camera callback keeps instead of the message: reading it costs a few field reads, not a
    copy of the pixels into a Python message (see :func:`image_from_cdr`). It has the fields the
    readers here use (``encoding``, ``height``, ``width``, ``step``, ``is_bigendian``, ``data``).
    """

    sec: int
    nanosec: int
    frame_id: str
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview

    @property
    def stamp_ns(self) -> int:
        return self.sec * 1_000_000_000 + self.nanosec


_CDR_BYTE_ORDER = {b"\x00\x01": "<", b"\x00\x00": ">"}  # plain CDR, little / big endian (XCDR1)


def image_from_cdr(buf: bytes) -> SerializedImage:
    """A serialized ``sensor_msgs/Image`` (as a raw subscription takes it) read in place.

    Only plain CDR (the encapsulation ROS 2's middlewares use for these types) is read; anything
    else, or bytes that do not hold a whole Image, raises ImageConversionError (the caller then
    deserializes the message the middleware's way).
    """
    order = _CDR_BYTE_ORDER.get(bytes(buf[:2]))
    if order is None:
        raise ImageConversionError(f"not plain CDR (encapsulation {bytes(buf[:4])!r})")
    u32, header = struct.Struct(order + "I"), struct.Struct(order + "iI")
    size = len(buf)

    def string(pos: int) -> tuple[str, int]:
        pos = (pos + 3) & ~3
        (n,) = u32.unpack_from(buf, pos)
        pos += 4
        if pos + n > size:
            raise ImageConversionError("serialized image: a string runs past the end")
        text = bytes(buf[pos : pos + max(0, n - 1)]).decode("utf-8", "replace")  # n counts the NUL
        return text, pos + n

    try:
        sec, nanosec = header.unpack_from(buf, 4)  # after the 4-byte encapsulation header
        frame_id, pos = string(12)
        pos = (pos + 3) & ~3
        height, width = u32.unpack_from(buf, pos)[0], u32.unpack_from(buf, pos + 4)[0]
        encoding, pos = string(pos + 8)
        is_bigendian = buf[pos]
        pos = (pos + 1 + 3) & ~3
        step, n = u32.unpack_from(buf, pos)[0], u32.unpack_from(buf, pos + 4)[0]
    except (struct.error, IndexError):
        raise ImageConversionError("serialized image: shorter than its fields") from None
    pos += 8
    if pos + n > size:
        raise ImageConversionError(f"serialized image: {n} bytes of pixels announced, {size - pos} present")
    return SerializedImage(sec, nanosec, frame_id, height, width, encoding, is_bigendian, step,
                           memoryview(buf)[pos : pos + n])


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
