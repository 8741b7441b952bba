"""3D positions through the live node: the synthetic camera's aligned depth and CameraInfo in,
positions (in metres, against the scene's known geometry), markers and notes out."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import numpy as np
import pytest
from geometry_msgs.msg import Point32
from std_msgs.msg import String

from region_perception.datasets.synthetic_camera import mask_from_truth
from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.ros.image_conversion import array_to_image_msg, depth_to_image_msg
from region_perception.ros.processes import camera_command, node_command
from region_perception.srv import QueryRegions

pytestmark = pytest.mark.slow
SIZE = 192


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    import os

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path_factory.mktemp("node_depth") / "node.log", "w")
    node = subprocess.Popen(
        node_command(
            model="tiny-regionvlm",
            image_reliability="reliable",
            image_qos_depth=5,
            frame_buffer_size=20,
            diagnostics_period_s=0.5,
            depth_topic="depth/image_raw",
            camera_info_topic="depth/camera_info",
            max_new_tokens=3,
            # every superpixel is a REFER proposal: REFER always selects one, whatever the scene
            **{"proposal_filter.min_area_fraction": 0.001, "proposal_filter.max_border_fraction": 1.0},
        ),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    camera = subprocess.Popen(
        camera_command("--source", "synthetic", "--size", str(SIZE), "--rate", "5", "--reliable"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    from .helpers.ros_client import RosClient

    client = RosClient("test_depth_client")
    truths: dict[tuple[int, int], dict] = {}
    lock = threading.Lock()

    def on_truth(msg: String) -> None:
        t = json.loads(msg.data)
        with lock:
            truths[divmod(t["stamp_ns"], 1_000_000_000)] = t

    client.node.create_subscription(String, "image/ground_truth", on_truth, 50)
    client.truths, client.truth_lock = truths, lock
    client.image_pub = client.node.create_publisher(_image_type(), "image", 5)
    client.depth_pub = client.node.create_publisher(_image_type(), "depth/image_raw", 5)
    try:
        assert client.client.wait_for_service(timeout_sec=120), "node did not come up"
        client.wait_active()
        yield client, node
    finally:
        client.close()
        for proc in (camera, node):
            proc.send_signal(signal.SIGINT)
        for proc in (camera, node):
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def _image_type():
    from sensor_msgs.msg import Image

    return Image


def frame_and_truth(client):
    """A camera frame published from now on (the node has it: reliable QoS) and its ground truth.

    Picked by its truth, not by the newest frame heard: a test's own frames, stamped far in the
    future, are heard too."""
    since = client.node.get_clock().now().nanoseconds

    def stamp_of(key) -> int:
        return key[0] * 1_000_000_000 + key[1]

    def published():
        with client.truth_lock:
            new = sorted(k for k in client.truths if since < stamp_of(k) < since + 100 * 10**9)
        latest = client.frames.get((SIZE, SIZE))
        heard = latest.header.stamp.sec * 1_000_000_000 + latest.header.stamp.nanosec if latest else 0
        return next((k for k in new if stamp_of(k) <= heard), None)  # its frame has been published

    assert client.wait(lambda: published() is not None, 30), "no new frame with its ground truth"
    key = published()
    truth = client.truths[key]
    frame = _image_type()()
    frame.header.stamp.sec, frame.header.stamp.nanosec = key
    frame.header.frame_id = truth["frame_id"]
    return frame, truth


def mask_region(obj) -> Region:
    mask = mask_from_truth(obj).astype(np.uint8) * 255
    return Region(kind=Region.MASK, mask=array_to_image_msg(mask, "mono8"), name=obj["shape"])


def _boxes_touch(a, b) -> bool:
    return not (a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1])


def test_positions_match_the_scene_geometry_and_markers_show_boxes(system):
    client, node = system
    frame, truth = frame_and_truth(client)
    objs = truth["objects"]
    q = RegionQuery(query_id="where", task=RegionQuery.CAPTION, header=frame.header, max_new_tokens=3)
    q.regions = [mask_region(o) for o in objs]
    q.regions.append(Region(kind=Region.POINTS, points=[Point32(x=float(objs[0]["point"][0]),
                                                                y=float(objs[0]["point"][1]))]))
    result = client.ask(q)
    assert result.status == RegionResult.OK, result.error
    assert result.header.frame_id == "camera_optical_frame"
    assert len(result.outputs) == len(objs) + 1
    cam = truth["camera"]
    pixel_m = 3.0 / cam["fx"]  # one pixel at the farthest object
    u, v = objs[0]["point"]  # the clicked point: its disk lies on object 0, around the point
    at_point = [(u - cam["cx"]) * objs[0]["depth_m"] / cam["fx"], (v - cam["cy"]) * objs[0]["depth_m"] / cam["fy"]]
    expected = [*(o["position_m"][:2] for o in objs), at_point]
    for out, obj, (x, y) in zip(result.outputs, [*objs, objs[0]], expected, strict=True):
        assert out.has_position, result.notes
        assert out.position.z == pytest.approx(obj["depth_m"], abs=0.01)
        assert abs(out.position.x - x) < 3 * pixel_m
        assert abs(out.position.y - y) < 3 * pixel_m
        assert out.depth_valid_fraction == pytest.approx(1.0)
    # the extent of objects seen whole (no nearer object's box touches theirs): a covered object's
    # visible part can end in a sliver a pixel wide, which the node's percentile box rightly trims
    whole = [k for k, o in enumerate(objs) if not any(_boxes_touch(o["box"], p["box"]) for p in objs[k + 1 :])]
    assert whole  # the nearest object is never covered
    for k in whole:
        assert result.outputs[k].size.x == pytest.approx(objs[k]["size_m"][0], rel=0.25, abs=2 * pixel_m)
    # REFER and CLASSIFY get positions too
    for task, fields in ((RegionQuery.REFER, {"text": "the red circle"}),
                         (RegionQuery.CLASSIFY, {"regions": [mask_region(objs[0])], "labels": ["circle", "square"]})):
        r = client.ask(RegionQuery(query_id=f"where-{task}", task=task, header=frame.header, **fields))
        assert r.status == RegionResult.OK and r.outputs[0].has_position, (r.error, r.notes)
    client.ask(RegionQuery(query_id="warm-markers", task=RegionQuery.CAPTION, header=frame.header,
                           regions=[mask_region(objs[0])]))
    assert client.wait(lambda: any(m.type == 1 for arr in client.markers for m in arr.markers), 30)
    cube = next(m for arr in client.markers for m in arr.markers if m.type == 1)  # Marker.CUBE
    assert cube.header.frame_id == "camera_optical_frame" and 0.9 < cube.pose.position.z < 3.1
    diag = client.diagnostic_values()
    assert int(diag["depth_frames_received"]) > 0 and diag["camera_info_received"] == "true"
    assert node.poll() is None


def test_bad_or_missing_depth_answers_without_a_position_and_says_why(system):
    client, node = system
    frame, truth = frame_and_truth(client)
    region = mask_region(truth["objects"][0])
    # frames of our own far in the future (the camera's frames are never nearer), with bad or no depth
    cases = {
        "wrong-encoding": "depth encoding 'rgb8' is not supported",
        "no-depth": "ms older than the colour frame",
        "zeros": "every pixel zero or NaN",
    }
    for i, (qid, note) in enumerate(cases.items()):
        mine = array_to_image_msg(np.zeros((SIZE, SIZE, 3), np.uint8), "rgb8")
        mine.header.frame_id = "camera_optical_frame"
        mine.header.stamp.sec = frame.header.stamp.sec + 1000 * (i + 1)
        if qid == "wrong-encoding":
            client.depth_pub.publish(array_to_image_msg(np.zeros((SIZE, SIZE, 3), np.uint8), "rgb8", mine.header))
        elif qid == "zeros":
            client.depth_pub.publish(depth_to_image_msg(np.zeros((SIZE, SIZE), np.uint16), mine.header))
        client.image_pub.publish(mine)
        q = RegionQuery(query_id=qid, task=RegionQuery.CAPTION, header=mine.header, regions=[region])
        result = client.ask(q)
        assert result.status == RegionResult.OK, (qid, result.error)
        assert not result.outputs[0].has_position
        assert any(note in n for n in result.notes), (qid, result.notes)
    # an image sent with the service has no depth frame
    req = QueryRegions.Request(query=RegionQuery(query_id="own", task=RegionQuery.CAPTION, regions=[region]))
    req.image = array_to_image_msg(np.zeros((SIZE, SIZE, 3), np.uint8), "rgb8")
    result = client.call(req)
    assert result.status == RegionResult.OK and not result.outputs[0].has_position
    assert any("no stamp" in n for n in result.notes), result.notes
    assert node.poll() is None


def test_a_burst_of_200_queries_with_depth_on_is_answered_once_each(system):
    client, node = system
    frame, truth = frame_and_truth(client)
    region = mask_region(truth["objects"][0])
    burst = [RegionQuery(query_id=f"burst-{i}", task=RegionQuery.CAPTION, header=frame.header, regions=[region],
                         max_new_tokens=2) for i in range(200)]
    for q in burst:
        client.query_pub.publish(q)
    assert client.wait(lambda: all(q.query_id in client.results for q in burst), 300)
    assert all(len(client.results[q.query_id]) == 1 for q in burst), "exactly one result per query"
    results = [client.results[q.query_id][0] for q in burst]
    assert {r.status for r in results} <= {RegionResult.OK, RegionResult.QUEUE_FULL}
    ok = [r for r in results if r.status == RegionResult.OK]
    assert ok and all(r.outputs[0].has_position for r in ok), [r.notes for r in ok if not r.outputs[0].has_position]
    assert node.poll() is None
