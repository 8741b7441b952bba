"""``sensor_msgs/Image`` and ``CompressedImage`` <-> numpy, honouring ``step`` padding.

Reading (message -> numpy) is :mod:`region_perception.service.image_decoding`, re-exported here;
this module adds the builders (numpy -> message).
"""

from __future__ import annotations

import array

import numpy as np

from ..service.image_decoding import (  # noqa: F401  (re-exported: this module's readers)
    _ENCODINGS,
    MAX_PIXELS_DEFAULT,
    SUPPORTED,
    ImageConversionError,
    SerializedImage,
    compressed_msg_to_rgb,
    image_from_cdr,
    image_msg_to_array,
    image_msg_to_rgb,
    mask_msg_to_bool,
)


def _byte_array(nbytes: int) -> tuple[array.array, np.ndarray]:
    """A message's ``uint8[]`` of ``nbytes`` (an ``array('B')``) and a writable numpy view of it.

    Filled through the view, the pixels are copied once; handing a message ``bytes`` (or a numpy
    array) instead costs further copies into fresh memory in its field setter.
    """
    data = array.array("B", b"\0") * nbytes
    return data, np.frombuffer(data, dtype=np.uint8)


def _image_msg(height: int, width: int, encoding: str, step: int, data: array.array, header=None):
    from sensor_msgs.msg import Image

    msg = Image(check_fields=True)  # checked fields: an array('B') is kept as given, not copied again
    if header is not None:
        msg.header = header
    msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step = height, width, encoding, 0, step
    msg.data = data
    return msg


def array_to_image_msg(image: np.ndarray, encoding: str, header=None):
    """A ``sensor_msgs/Image`` from an (H, W) or (H, W, C) uint8 array (no padding)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = image.astype(np.uint8)
    data, pixels = _byte_array(image.size)
    pixels.reshape(image.shape)[...] = image
    h, w = int(image.shape[0]), int(image.shape[1])
    return _image_msg(h, w, encoding, w * (image.shape[2] if image.ndim == 3 else 1), data, header)


def mask_to_msg(mask: np.ndarray, header=None):
    """A mono8 ``sensor_msgs/Image``: 255 inside ``mask`` (nonzero), 0 outside."""
    mask = np.asarray(mask)
    if mask.dtype != np.bool_:
        mask = mask != 0
    data, pixels = _byte_array(mask.size)
    np.negative(mask.view(np.uint8), out=pixels.reshape(mask.shape))  # True is 1, and -1 is 255
    return _image_msg(int(mask.shape[0]), int(mask.shape[1]), "mono8", int(mask.shape[1]), data, header)


def depth_to_image_msg(depth: np.ndarray, header=None):
    """A depth ``sensor_msgs/Image``: uint16 as 16UC1, float32 as 32FC1 (little-endian, no padding)."""
    depth = np.asarray(depth)
    encoding, kind = ("16UC1", "<u2") if depth.dtype == np.uint16 else ("32FC1", "<f4")
    data, pixels = _byte_array(depth.size * np.dtype(kind).itemsize)
    pixels.view(kind).reshape(depth.shape)[...] = depth
    h, w = int(depth.shape[0]), int(depth.shape[1])
    return _image_msg(h, w, encoding, w * np.dtype(kind).itemsize, data, header)
