"""The package's msg/srv: importable from the venv, and intact across two processes."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time

import numpy as np
import pytest

from region_perception.ros.msg_dict import msg_to_dict

from .conftest import HELPERS

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import Point, Point32, Vector3  # noqa: E402
from sensor_msgs.msg import Image, RegionOfInterest  # noqa: E402

from region_perception.msg import (  # noqa: E402
    Region,
    RegionOutput,
    RegionQuery,
    RegionResult,
)
from region_perception.srv import QueryRegions  # noqa: E402


def _mono8(width: int, height: int, seed: int) -> Image:
    rng = np.random.default_rng(seed)
    img = Image(height=height, width=width, encoding="mono8", is_bigendian=0, step=width)
    img.data = (rng.integers(0, 2, size=height * width) * 255).astype(np.uint8).tobytes()
    img.header.frame_id = "camera_optical"
    return img


def make_query() -> RegionQuery:
    q = RegionQuery()
    q.header.stamp.sec, q.header.stamp.nanosec = 1700000000, 123456789
    q.header.frame_id = "camera_optical"
    q.query_id = "q-42"
    q.task = RegionQuery.ASK
    pts = Region(kind=Region.POINTS, name="cup")
    pts.points = [Point32(x=12.5, y=30.0, z=0.0), Point32(x=100.25, y=7.75, z=0.0)]
    scribble = Region(kind=Region.SCRIBBLE, points=[Point32(x=1.0, y=2.0), Point32(x=3.0, y=5.5)])
    box = Region(kind=Region.BOX, name="table")
    box.box = np.array([4.0, 8.0, 64.5, 48.0], dtype=np.float32)
    mask = Region(kind=Region.MASK, mask=_mono8(37, 23, seed=1), name="blob")
    q.regions = [pts, scribble, box, mask]
    q.text = "what is [0] doing next to [1]?"
    q.labels = ["cup", "bottle", "cell phone"]
    q.rank_labels = True
    q.max_new_tokens = 24
    q.num_beams = 3
    q.timeout_s = 2.5
    return q


def make_result() -> RegionResult:
    r = RegionResult()
    r.header.stamp.sec, r.header.stamp.nanosec = 1700000000, 100000000
    r.header.frame_id = "camera_optical"
    r.query_id = "q-42"
    r.task = RegionQuery.REFER
    r.status = RegionResult.OK
    r.error = ""
    out = RegionOutput(name="sel", text="a red cup", label="cup", score=0.75)
    out.labels = ["cup", "bottle"]
    out.label_scores = [0.75, 0.25]
    out.mask = _mono8(37, 23, seed=2)
    out.bbox = RegionOfInterest(x_offset=3, y_offset=4, width=20, height=10, do_rectify=False)
    # 3D (depth on): position and extent in the header's frame; a second output without one
    out.has_position = True
    out.position = Point(x=-0.125, y=0.0625, z=1.5)
    out.size = Vector3(x=0.25, y=0.125, z=0.03125)
    out.depth_valid_fraction = 0.875
    unplaced = RegionOutput(name="far", has_position=False, depth_valid_fraction=0.0)
    r.outputs = [out, unplaced]
    r.selected_index = 1
    r.candidate_scores = [2.5, 1.25, 3.0]
    r.candidate_boxes = [RegionOfInterest(x_offset=i, y_offset=i, width=5, height=6) for i in range(3)]
    r.model = "tiny-regionvlm"
    r.weights_random = True
    r.queue_ms, r.inference_ms, r.latency_ms = 1.5, 20.25, 22.0
    return r


def test_service_type_has_query_and_optional_image():
    req = QueryRegions.Request()
    assert isinstance(req.query, RegionQuery) and isinstance(req.image, Image)
    assert isinstance(QueryRegions.Response().result, RegionResult)


def test_every_field_crosses_processes_intact(python, child_env):
    sub = subprocess.Popen(
        [python, str(HELPERS / "interface_echo.py"), "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env,
    )
    try:
        assert sub.stdout.readline().strip() == "READY"
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node("interface_pub", context=context)
        qpub = node.create_publisher(RegionQuery, "rp_test/query", 10)
        rpub = node.create_publisher(RegionResult, "rp_test/result", 10)
        query, result = make_query(), make_result()
        deadline = time.monotonic() + 30

        def discovered() -> bool:
            return qpub.get_subscription_count() >= 1 and rpub.get_subscription_count() >= 1

        while not discovered() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert qpub.get_subscription_count() == 1, "subscriber process never discovered"
        received: dict[str, dict] = {}
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(ln) for ln in sub.stdout], daemon=True).start()
        # volatile QoS: re-publish until the other process has printed both
        while len(received) < 2 and time.monotonic() < deadline:
            qpub.publish(query)
            rpub.publish(result)
            try:
                while True:
                    line = lines.get(timeout=0.2)
                    if line.startswith("{"):
                        item = json.loads(line)
                        received[item["kind"]] = item["msg"]
            except queue.Empty:
                pass
        node.destroy_node()
        rclpy.shutdown(context=context)
    finally:
        try:
            rc = sub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sub.kill()
            rc = "killed: it never received both messages"
    assert rc == 0, sub.stderr.read()
    assert received["query"] == msg_to_dict(query)
    assert received["result"] == msg_to_dict(result)
    # the mask really is the bytes we sent, not an empty image
    sent_mask = np.frombuffer(bytes(query.regions[3].mask.data), dtype=np.uint8)
    assert sent_mask.size == 37 * 23 and received["query"]["regions"][3]["mask"]["width"] == 37
    placed = received["result"]["outputs"][0]
    assert placed["has_position"] and placed["position"] == {"x": -0.125, "y": 0.0625, "z": 1.5}
    assert placed["size"]["z"] == 0.03125 and placed["depth_valid_fraction"] == 0.875
    assert received["result"]["outputs"][1]["has_position"] is False
