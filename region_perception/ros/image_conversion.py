"""``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy, honouring ``step`` padding.

Reading (message -> numpy) is :mod:`region_perception.service.image_decoding`, re-exported here;
this module adds the builders (numpy -> message).
"""

from __future__ import annotations

import numpy as np

from ..service.image_decoding import (  # noqa: F401  (re-exported: this module's readers)
    _ENCODINGS,
    MAX_PIXELS_DEFAULT,
    SUPPORTED,
    ImageConversionError,
    compressed_msg_to_rgb,
    image_msg_to_array,
    image_msg_to_rgb,
    mask_msg_to_bool,
)


def array_to_image_msg(array: np.ndarray, encoding: str, header=None):
    """A ``sensor_msgs/Image`` from an (H, W) or (H, W, C) uint8 array (no padding)."""
    from sensor_msgs.msg import Image

    arr = np.ascontiguousarray(array, dtype=np.uint8)
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(arr.shape[1] * (arr.shape[2] if arr.ndim == 3 else 1))
    msg.data = arr.tobytes()
    return msg


def mask_to_msg(mask: np.ndarray, header=None):
    return array_to_image_msg(mask.astype(np.uint8) * 255, "mono8", header)


def depth_to_image_msg(depth: np.ndarray, header=None):
    """A depth ``sensor_msgs/Image``: uint16 as 16UC1, float32 as 32FC1 (little-endian, no padding)."""
    from sensor_msgs.msg import Image

    arr = np.ascontiguousarray(depth)
    if arr.dtype == np.uint16:
        encoding, arr = "16UC1", arr.astype("<u2")
    else:
        encoding, arr = "32FC1", arr.astype("<f4")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding, msg.is_bigendian, msg.step = encoding, 0, int(arr.shape[1] * arr.itemsize)
    msg.data = arr.tobytes()
    return msg
