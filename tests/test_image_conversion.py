"""sensor_msgs/Image <-> numpy: every accepted encoding, step padding, and clear refusals."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from region_perception.ros.image_conversion import (
    ImageConversionError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    image_msg_to_rgb,
    mask_msg_to_bool,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)


def padded_msg(arr: np.ndarray, encoding: str, pad: int) -> Image:
    """An Image whose rows carry ``pad`` junk bytes after the pixels."""
    h, w = arr.shape[:2]
    row = arr.reshape(h, -1)
    junk = np.full((h, pad), 77, dtype=np.uint8)
    msg = Image(height=h, width=w, encoding=encoding, step=row.shape[1] + pad)
    msg.data = np.hstack([row, junk]).tobytes()
    return msg


@pytest.mark.parametrize(
    ("encoding", "make"),
    [
        ("rgb8", lambda a: a),
        ("bgr8", lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGR)),
        ("rgba8", lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2RGBA)),
        ("bgra8", lambda a: cv2.cvtColor(a, cv2.COLOR_RGB2BGRA)),
    ],
)
@pytest.mark.parametrize("pad", [0, 3])
def test_color_encodings_with_step_padding(encoding, make, pad):
    out = image_msg_to_rgb(padded_msg(make(RGB), encoding, pad))
    assert out.shape == RGB.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, RGB)


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0]
    out = image_msg_to_rgb(padded_msg(grey[:, :, None], "mono8", 1))
    assert (out[:, :, 0] == grey).all() and (out[:, :, 1] == grey).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: setattr(m, "encoding", "mono16"), "not supported"),
        (lambda m: setattr(m, "encoding", "16UC1"), "not supported"),
        (lambda m: setattr(m, "encoding", "yuv422"), "unknown image encoding"),
        (lambda m: setattr(m, "step", 5), "step 5 is smaller"),
        (lambda m: setattr(m, "data", bytes(m.data)[:10]), "needs"),
        (lambda m: setattr(m, "width", 0), "empty"),
    ],
)
def test_bad_images_are_refused_with_a_reason(mutate, message):
    msg = array_to_image_msg(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(ImageConversionError, match=message):
        image_msg_to_rgb(msg)


def test_pixel_limit():
    with pytest.raises(ImageConversionError, match="larger than the limit"):
        image_msg_to_rgb(array_to_image_msg(RGB, "rgb8"), max_pixels=10)


def test_round_trip_and_mask():
    msg = array_to_image_msg(RGB, "rgb8")
    assert msg.step == 21 and np.array_equal(image_msg_to_rgb(msg), RGB)
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:5] = True
    m = array_to_image_msg(mask.astype(np.uint8) * 255, "mono8")
    assert np.array_equal(mask_msg_to_bool(m, (5, 7)), mask)
    with pytest.raises(ImageConversionError, match="the image is"):
        mask_msg_to_bool(m, (6, 7))
    with pytest.raises(ImageConversionError, match="mono8"):
        mask_msg_to_bool(msg)


def test_compressed_jpeg_and_garbage():
    ok, png = cv2.imencode(".png", cv2.cvtColor(RGB, cv2.COLOR_RGB2BGR))
    assert ok
    out = compressed_msg_to_rgb(CompressedImage(format="png", data=png.tobytes()))
    np.testing.assert_array_equal(out, RGB)
    with pytest.raises(ImageConversionError, match="could not be decoded"):
        compressed_msg_to_rgb(CompressedImage(format="jpeg", data=b"not a jpeg"))
