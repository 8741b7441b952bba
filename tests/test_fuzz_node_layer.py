"""Property-based fuzzing of the node layer: any query, any image -> exactly one result.

The real node class runs in this process (its publishers captured, no DDS traffic needed),
with the tiny model, and is fed arbitrary RegionQuery messages and camera frames, many of
them malformed. Nothing may escape as an exception, and every query id gets one result.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
from geometry_msgs.msg import Point32
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image

from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.ros.node import RegionPerceptionNode

floats = st.one_of(st.floats(-50, 700, allow_nan=False), st.sampled_from([float("nan"), float("inf"), -1.0, 1e9]))


@st.composite
def regions(draw) -> Region:
    kind = draw(st.sampled_from([0, 1, 2, 3, 4, 9]))
    r = Region(kind=kind, name=draw(st.text(max_size=5)))
    n = draw(st.sampled_from([0, 1, 2, 5, 2000]))
    xs = draw(st.lists(floats, min_size=1, max_size=3))
    r.points = [Point32(x=xs[i % len(xs)], y=xs[(i + 1) % len(xs)]) for i in range(n)]
    r.box = np.array(draw(st.lists(floats, min_size=4, max_size=4)), dtype=np.float32)
    if kind == Region.MASK:
        h, w = draw(st.sampled_from([(48, 64), (10, 10), (0, 0), (48, 64)]))
        fill = draw(st.sampled_from([0, 255, None]))
        data = np.full((h, w), fill, np.uint8) if fill is not None else (np.arange(h * w) % 2 * 255).astype(np.uint8)
        r.mask = Image(
            height=h, width=w, encoding=draw(st.sampled_from(["mono8", "rgb8", "mono16"])), step=w, data=data.tobytes()
        )
    return r


@st.composite
def queries(draw) -> RegionQuery:
    q = RegionQuery(query_id=draw(st.text(min_size=0, max_size=8)), task=draw(st.sampled_from([0, 1, 2, 3, 7, 255])))
    q.regions = draw(st.lists(regions(), max_size=3))
    q.text = draw(st.one_of(st.text(max_size=20), st.just("x" * 5000)))
    q.labels = draw(st.lists(st.text(max_size=6), max_size=4))
    q.max_new_tokens = draw(st.sampled_from([0, 1, 3]))
    q.header.stamp.sec = draw(st.sampled_from([0, 0, 1, 2_000_000_000]))
    return q


@st.composite
def frames(draw) -> Image:
    h, w = draw(st.sampled_from([(48, 64), (1, 1), (0, 5), (48, 64)]))
    encoding = draw(st.sampled_from(["rgb8", "bgr8", "rgba8", "mono8", "16UC1", "yuv422"]))
    channels = {"rgba8": 4, "mono8": 1}.get(encoding, 3)
    step = w * channels + draw(st.sampled_from([0, 0, 3, -1]))
    size = max(0, step * h - draw(st.sampled_from([0, 0, 10])))
    img = Image(height=h, width=w, encoding=encoding, step=max(0, step))
    img.data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    img.header.frame_id = "cam"
    return img


@pytest.fixture(scope="module")
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    n = RegionPerceptionNode(
        context=context,
        parameter_overrides=[
            Parameter("model", value="tiny-regionvlm"),
            Parameter("queue_size", value=4),
            Parameter("max_new_tokens", value=2),
        ],
    )
    n.trigger_configure()
    n.trigger_activate()
    published: list[RegionResult] = []
    n.results_pub.publish = published.append  # capture instead of sending
    n.published = published
    yield n
    n._unload("test over")
    n.destroy_node()
    rclpy.shutdown(context=context)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(frames(), min_size=0, max_size=2), st.lists(queries(), min_size=1, max_size=4))
def test_any_query_on_any_frame_gets_exactly_one_result(node, images, qs):
    node.published.clear()
    for img in images:
        img.header.stamp = node.get_clock().now().to_msg()
        node._on_image(img)
    ids = []
    for i, q in enumerate(qs):
        q.query_id = f"{q.query_id}-{i}"  # distinct ids: duplicates are tested on their own
        ids.append(q.query_id)
        node._on_query(q)
    proc = node.processor

    def settled() -> bool:
        """Every query answered, every id released, nothing queued or waiting for a frame."""
        proc.expire_overdue()  # gives up on frames that never come
        with proc._pending_lock:
            in_flight = bool(proc._in_flight)
        return len(node.published) >= len(ids) and not in_flight and proc.depth == 0 and not proc._awaiting

    end = time.monotonic() + 60
    while not settled() and time.monotonic() < end:
        time.sleep(0.01)
    got = sorted(r.query_id for r in node.published)
    assert got == sorted(ids), "every query exactly one result"
    for r in node.published:
        assert (r.status == RegionResult.OK) == (r.error == ""), (r.status, r.error)
    assert node.processor._worker.is_alive()
