"""The node's intake and answer path, in this process.

Camera frames are kept serialized and read in place (their pixels decoded only for a query),
the busy topics are read by a thread of their own instead of the executor, masks are built
with one copy, and the expiry timer rests while nothing can time out. Every test asserts what
arrives, where and how often; none depends on the machine's speed.
"""

from __future__ import annotations

import struct
import threading

import numpy as np
import pytest
from geometry_msgs.msg import Point32
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import Image

from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.ros.image_conversion import (
    ImageConversionError,
    SerializedImage,
    array_to_image_msg,
    depth_to_image_msg,
    image_from_cdr,
    image_msg_to_rgb,
    mask_msg_to_bool,
    mask_to_msg,
)

from .helpers.in_process_node import InProcessNodes
from .helpers.waiting import wait_until

LONG = 120.0  # generous: loading a tiny model on a busy 2-core machine
RNG = np.random.default_rng(7)


def image_msg(h: int, w: int, encoding: str = "rgb8", frame_id: str = "cam", pad: int = 0, sec: int = 12,
              nanosec: int = 345) -> Image:
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "mono8": 1}[encoding]
    rows = RNG.integers(0, 256, (h, w * channels), dtype=np.uint8)
    junk = np.full((h, pad), 77, np.uint8)
    msg = Image(height=h, width=w, encoding=encoding, step=w * channels + pad)
    msg.data = np.hstack([rows, junk]).tobytes()
    msg.header.frame_id = frame_id
    msg.header.stamp.sec, msg.header.stamp.nanosec = sec, nanosec
    return msg


# -- a serialized frame read in place ----------------------------------------------------------------


@pytest.mark.parametrize("frame_id", ["", "c", "cam", "camera_optical", "ünïcode"])
@pytest.mark.parametrize(("encoding", "pad"), [("rgb8", 0), ("bgr8", 3), ("rgba8", 1), ("mono8", 2)])
def test_a_serialized_image_is_read_as_rclpy_wrote_it(frame_id, encoding, pad):
    msg = image_msg(5, 7, encoding, frame_id, pad, sec=-3, nanosec=999_999_999)
    image = image_from_cdr(serialize_message(msg))
    assert (image.sec, image.nanosec, image.frame_id) == (-3, 999_999_999, frame_id)
    assert image.stamp_ns == -3 * 1_000_000_000 + 999_999_999
    assert (image.height, image.width, image.encoding, image.step) == (5, 7, encoding, msg.step)
    assert bytes(image.data) == bytes(msg.data)
    rgb = image_msg_to_rgb(image)
    np.testing.assert_array_equal(rgb, image_msg_to_rgb(msg))
    assert rgb.flags.writeable  # the serialized bytes are read-only: the decoded frame is a copy of them
    rgb[...] = 0
    np.testing.assert_array_equal(image_msg_to_rgb(image), image_msg_to_rgb(msg))


def _big_endian_image(sec, nanosec, frame_id, h, w, encoding, step, data) -> bytes:
    def string(out: bytearray, text: str) -> None:
        out += b"\0" * (-(len(out) - 4) % 4)
        raw = text.encode() + b"\0"
        out += struct.pack(">I", len(raw)) + raw

    out = bytearray(b"\x00\x00\x00\x00") + struct.pack(">iI", sec, nanosec)
    string(out, frame_id)
    out += b"\0" * (-(len(out) - 4) % 4) + struct.pack(">II", h, w)
    string(out, encoding)
    out += b"\x01"  # is_bigendian
    out += b"\0" * (-(len(out) - 4) % 4) + struct.pack(">II", step, len(data)) + data
    return bytes(out)


def test_big_endian_cdr_is_read_too():
    data = bytes(range(2 * 3 * 3))
    image = image_from_cdr(_big_endian_image(7, 8, "left", 2, 3, "rgb8", 9, data))
    assert (image.sec, image.nanosec, image.frame_id, image.height, image.width) == (7, 8, "left", 2, 3)
    assert (image.encoding, image.is_bigendian, image.step, bytes(image.data)) == ("rgb8", 1, 9, data)


def test_what_is_not_a_whole_plain_cdr_image_is_refused_with_a_reason():
    whole = serialize_message(image_msg(3, 4))
    with pytest.raises(ImageConversionError, match="not plain CDR"):
        image_from_cdr(b"\x00\x07" + whole[2:])  # XCDR2: the middleware's own reader then
    for cut in range(len(whole)):  # every truncation: a reason, never an IndexError or a wrong image
        with pytest.raises(ImageConversionError):
            image_from_cdr(whole[:cut])


# -- messages built with one copy are the messages rclpy reads back -----------------------------------


@pytest.mark.parametrize(
    "mask",
    [
        RNG.random((6, 9)) > 0.5,
        (RNG.random((6, 9)) > 0.5).astype(np.uint8) * 7,  # nonzero = inside
        (RNG.random((9, 12)) > 0.5)[::2, 1::2],  # a strided view
        np.zeros((4, 4), bool),
    ],
)
def test_mask_messages_are_255_inside_and_survive_serialization(mask):
    msg = mask_to_msg(mask)
    back = deserialize_message(serialize_message(msg), Image)
    assert back == msg and (back.height, back.width, back.encoding, back.step) == (*mask.shape, "mono8", mask.shape[1])
    assert set(np.unique(np.frombuffer(bytes(back.data), np.uint8))) <= {0, 255}
    np.testing.assert_array_equal(mask_msg_to_bool(back), mask != 0)


def test_image_and_depth_messages_survive_serialization():
    rgb = RNG.integers(0, 256, (8, 10, 3), dtype=np.uint8)[:, ::-1]  # not contiguous
    msg = array_to_image_msg(rgb, "rgb8")
    back = deserialize_message(serialize_message(msg), Image)
    np.testing.assert_array_equal(image_msg_to_rgb(back), rgb)
    for depth in (np.arange(12, dtype=np.uint16).reshape(3, 4) * 100, np.linspace(0.5, 3, 12).reshape(3, 4)):
        msg = depth_to_image_msg(depth)
        back = deserialize_message(serialize_message(msg), Image)
        kind = "<u2" if depth.dtype == np.uint16 else "<f4"
        np.testing.assert_array_equal(np.frombuffer(bytes(back.data), kind).reshape(3, 4), depth.astype(kind))
        assert back.encoding == ("16UC1" if kind == "<u2" else "32FC1") and back.step == 4 * np.dtype(kind).itemsize


# -- topics read on a thread of their own ----------------------------------------------------------------


@pytest.fixture()
def context():
    import rclpy

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)


def test_the_reader_takes_every_message_on_its_thread_and_the_executor_none(context):
    import rclpy

    from region_perception.ros.qos import image_qos
    from region_perception.ros.spin import SubscriptionReader, make_executor, spin_in_background

    node = rclpy.create_node("reader_test", context=context)
    reader = SubscriptionReader(node, "test-reader")
    got: list[tuple[str, object, str]] = []
    reader.subscribe(Image, "cam", lambda b: got.append(("image", b, threading.current_thread().name)),
                     image_qos(10, "reliable"), raw=True)
    reader.subscribe(RegionQuery, "queries", lambda m: got.append(("query", m, threading.current_thread().name)), 50)
    executor = make_executor(context)
    executor.add_node(node)
    stop, thread = spin_in_background(executor, "reader-test-executor")  # it must leave these topics alone
    sender = rclpy.create_node("reader_test_sender", context=context)
    images = sender.create_publisher(Image, "cam", image_qos(10, "reliable"))
    queries = sender.create_publisher(RegionQuery, "queries", 50)
    try:
        reader.start()
        assert wait_until(lambda: images.get_subscription_count() and queries.get_subscription_count())
        for i in range(5):
            images.publish(image_msg(4, 6, sec=100 + i))
            queries.publish(RegionQuery(query_id=f"q{i}"))
        assert wait_until(lambda: len(got) >= 10), f"the reader handed over {len(got)} of 10 messages"
        assert {where for _, _, where in got} == {"test-reader"}
        assert [m.query_id for kind, m, _ in got if kind == "query"] == [f"q{i}" for i in range(5)]
        frames = [image_from_cdr(b) for kind, b, _ in got if kind == "image"]
        assert all(isinstance(b, bytes) for kind, b, _ in got if kind == "image")
        assert [f.sec for f in frames] == [100 + i for i in range(5)]
        reader.close()
        assert not reader.running
    finally:
        reader.close()
        stop.set()
        thread.join(10)
        executor.shutdown(timeout_sec=1.0)
        sender.destroy_node()
        node.destroy_node()


# -- the node -----------------------------------------------------------------------------------------------


@pytest.fixture()
def make_node():
    """A node in this process (tiny model, no warm-up), its results captured; shut down after the test."""
    nodes = InProcessNodes(model="tiny-regionvlm", max_new_tokens=2, warm_up=False)
    yield nodes.make
    nodes.close()


def caption_query(qid: str, **fields) -> RegionQuery:
    region = Region(kind=Region.POINTS, points=[Point32(x=3.0, y=2.0)])
    q = RegionQuery(query_id=qid, task=RegionQuery.CAPTION, regions=[region])
    for key, value in fields.items():
        setattr(q, key, value)
    return q


def test_a_frame_kept_serialized_is_answered_under_its_own_stamp_and_frame(make_node):
    node = make_node()
    node.trigger_activate()
    msg = image_msg(24, 32, "bgr8", "left_optical", sec=41, nanosec=5)
    node._on_image_data(serialize_message(msg))
    frame = node.frames.latest()
    assert isinstance(frame.raw, SerializedImage) and frame._image is None  # nothing decoded on arrival
    assert (frame.stamp_ns, frame.frame_id) == (41_000_000_005, "left_optical")
    assert node._camera_size() == (24, 32)
    node._on_query(caption_query("q"))
    assert wait_until(lambda: len(node.published) == 1)
    result = node.published[0]
    assert result.status == RegionResult.OK, result.error
    assert (result.header.stamp.sec, result.header.stamp.nanosec, result.header.frame_id) == (41, 5, "left_optical")
    np.testing.assert_array_equal(frame.image(), image_msg_to_rgb(msg))


def test_a_frame_that_is_not_plain_cdr_is_read_the_middleware_s_way(make_node, monkeypatch):
    import region_perception.ros.node as node_module

    def refuse(data):
        raise ImageConversionError("not plain CDR (test)")

    monkeypatch.setattr(node_module, "image_from_cdr", refuse)
    node = make_node()
    node._on_image_data(serialize_message(image_msg(6, 8, sec=9)))
    frame = node.frames.latest()
    assert isinstance(frame.raw, Image) and frame.stamp_ns == 9_000_000_345


def test_topics_are_read_once_an_executor_spins_the_node(make_node):
    """Frames and a query over the topics, through the reader: the answer is about that frame."""
    import rclpy

    from region_perception.ros.qos import image_qos
    from region_perception.ros.spin import make_executor, spin_in_background

    node = make_node()
    node.trigger_activate()
    sender = rclpy.create_node("intake_sender", context=node.context)
    images = sender.create_publisher(Image, "image", image_qos(1, "best_effort"))
    queries = sender.create_publisher(RegionQuery, "region_queries", 10)
    executor = make_executor(node.context)
    executor.add_node(node)
    stop, thread = spin_in_background(executor, "intake-test")
    try:
        assert wait_until(lambda: node._reader is not None and node._reader.running), "the reader never started"
        assert wait_until(lambda: images.get_subscription_count() and queries.get_subscription_count())
        msg = image_msg(24, 32, frame_id="over_the_wire", sec=77)
        assert wait_until(lambda: images.publish(msg) or node.frames.received > 0, 60), "no frame arrived"
        queries.publish(caption_query("wire"))
        assert wait_until(lambda: any(r.query_id == "wire" for r in node.published))
        [result] = [r for r in node.published if r.query_id == "wire"]
        assert result.status == RegionResult.OK, result.error
        assert (result.header.frame_id, result.header.stamp.sec) == ("over_the_wire", 77)
    finally:
        stop.set()
        thread.join(10)
        executor.shutdown(timeout_sec=1.0)
        sender.destroy_node()


def test_the_expiry_timer_rests_while_idle_and_a_deadline_still_times_out(make_node):
    """Nothing to watch: the 10 Hz timer stops. A query with a deadline behind a held model call
    restarts it, and is answered TIMEOUT exactly once; then the timer rests again."""
    from region_perception.ros.spin import make_executor, spin_in_background

    node = make_node(hold_model_s=60.0)  # testing aid: each model call waits until shutdown
    node.trigger_activate()
    executor = make_executor(node.context)
    executor.add_node(node)
    stop, thread = spin_in_background(executor, "expiry-test")
    try:
        assert wait_until(lambda: node.expiry_timer.is_canceled()), "the timer never rested"
        node._on_image(image_msg(24, 32, sec=5))
        node._on_query(caption_query("held"))
        assert wait_until(lambda: getattr(node.engine.model, "holding", 0) == 1), "the model call never started"
        node._on_query(caption_query("late", timeout_s=0.2))
        assert wait_until(lambda: any(r.query_id == "late" for r in node.published))
        late = [r for r in node.published if r.query_id == "late"]
        assert len(late) == 1 and late[0].status == RegionResult.TIMEOUT, late[0].error
        assert wait_until(lambda: node.expiry_timer.is_canceled()), "the timer did not rest again"
    finally:
        node._unload("test over")  # ends the held call (SHUTTING_DOWN)
        stop.set()
        thread.join(10)
        executor.shutdown(timeout_sec=1.0)
    assert len([r for r in node.published if r.query_id == "held"]) == 1
