"""``region-perception-camera --source synthetic``: scenes whose ground truth is known and published."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import numpy as np
import pytest
from PIL import Image as PILImage

from region_perception.datasets.synthetic import _RGB, generate
from region_perception.datasets.synthetic_camera import ground_truth, inside_point, mask_from_truth, synthetic_frame
from region_perception.ros.processes import camera_command


def test_frames_are_the_synthetic_datasets_scenes(tmp_path):
    """Frame i of seed S is image i of the dataset written with seed S: one world, not two."""
    generate(tmp_path / "ds", images=3, seed=5, val_fraction=0.0)
    for index in range(3):
        written = np.asarray(PILImage.open(tmp_path / "ds" / "images" / f"{index + 1:06d}.png").convert("RGB"))
        frame, _ = synthetic_frame(5, index)
        assert np.array_equal(frame, written)
    again, _ = synthetic_frame(5, 1)
    other, _ = synthetic_frame(6, 1)
    assert np.array_equal(again, synthetic_frame(5, 1)[0]) and not np.array_equal(again, other)


def test_ground_truth_matches_the_rendering():
    for index in range(6):
        frame, objects = synthetic_frame(2, index, 96)
        truth = json.loads(json.dumps(ground_truth(2, index, 96)))  # as it travels
        assert (truth["seed"], truth["index"], truth["size"]) == (2, index, 96)
        assert len(truth["objects"]) == len(objects) >= 2
        for obj, t in zip(objects, truth["objects"], strict=True):
            assert (t["color"], t["shape"], t["size"]) == (obj.color, obj.shape, obj.size)
            mask = mask_from_truth(t)
            assert np.array_equal(mask, obj.mask) and t["area"] == int(mask.sum()) > 0
            ys, xs = np.nonzero(mask)
            assert t["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            x, y = t["point"]
            assert mask[y, x]
            # the pixel under the point has the object's colour (shading and jitter aside)
            assert np.abs(frame[y, x].astype(int) - np.array(_RGB[t["color"]])).max() < 60
            assert t["caption"] == f"a {t['size']} {t['color']} {t['shape']}"
            assert all(e.split()[-1] in t["shape"] or t["shape"] in e for e in t["expressions"])


def test_inside_point_is_deep_inside_a_covered_object():
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    mask[5:35, 5:20] = False  # the left half covered by another object
    x, y = inside_point(mask)
    assert mask[y, x] and 22 <= x <= 32 and 15 <= y <= 25


def test_bad_synthetic_arguments_exit_2_with_one_line(child_env):
    for args in (["--source", "synthetic", "--size", "8"], ["--seed", "3"], ["--source", "synthetic", "--width", "64"]):
        proc = subprocess.run(camera_command(*args), env=child_env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("region-perception-camera: error:"), proc.stderr


@pytest.mark.slow
def test_published_frames_arrive_with_their_ground_truth(child_env):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from region_perception.ros.image_conversion import image_msg_to_rgb

    from .helpers.ros_client import RosClient

    client = RosClient("synthetic_camera_client")
    truths: dict[int, dict] = {}
    images: dict[int, np.ndarray] = {}
    lock = threading.Lock()

    def on_truth(msg: String) -> None:
        t = json.loads(msg.data)
        with lock:
            truths[t["stamp_ns"]] = t

    def on_image(msg) -> None:
        with lock:
            images[msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec] = image_msg_to_rgb(msg)

    client.node.create_subscription(String, "image/ground_truth", on_truth, 50)
    client.node.create_subscription(Image, "image", on_image, 50)
    camera = subprocess.Popen(
        camera_command("--source", "synthetic", "--seed", "4", "--size", "96", "--rate", "20", "--reliable"),
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:

        def matched() -> list[int]:
            with lock:
                return [s for s in images if s in truths]

        assert client.wait(lambda: len(matched()) >= 3, 120), f"frames {len(images)}, truths {len(truths)}"
        keys = matched()  # takes the lock itself (it is not re-entrant)
        with lock:
            pairs = [(images[s], truths[s]) for s in keys]
        indices = set()
        for image, truth in pairs:
            assert (truth["seed"], truth["size"], truth["frame_id"]) == (4, 96, "camera_optical_frame")
            frame, _ = synthetic_frame(4, truth["index"], 96)
            assert np.array_equal(image, frame), f"frame {truth['index']} is not the scene its ground truth names"
            expected = ground_truth(4, truth["index"], 96)
            assert json.loads(json.dumps(expected["objects"])) == truth["objects"]
            indices.add(truth["index"])
        assert len(indices) == len(pairs), "each frame is a new scene"
    finally:
        client.close()
        camera.send_signal(signal.SIGINT)
        try:
            camera.wait(timeout=20)
        except subprocess.TimeoutExpired:
            camera.kill()
