"""The moving synthetic world: deterministic sequences with crossings, a full occlusion and their truth."""

from __future__ import annotations

import json
import signal
import subprocess
import threading

import numpy as np
import pytest

from region_perception.datasets.synthetic_motion import (
    generate_sequences,
    load_sequences,
    motion_sequence,
    stream_truth,
)
from region_perception.ros.processes import camera_command


def test_sequences_are_deterministic_and_differ_by_seed():
    a, b, c = motion_sequence(3, 2), motion_sequence(3, 2), motion_sequence(4, 2)
    assert np.array_equal(a.render(5).image, b.render(5).image)
    assert not np.array_equal(a.render(5).image, c.render(5).image)


@pytest.mark.parametrize("index", range(6))
def test_each_sequence_has_a_crossing_and_a_full_occlusion_that_ends(index):
    seq = motion_sequence(1, index)
    frames = [seq.render(t) for t in range(seq.frames)]
    hidden = seq.by_role("occluded").object_id
    far = seq.by_role("crossing_far").object_id
    occluder = seq.by_role("occluder").object_id
    vis = [f.visibility(hidden) for f in frames]
    first_hidden = vis.index(0.0)
    assert vis[0] > 0.9 and first_hidden > 0, "starts in view, then disappears"
    assert max(vis[first_hidden:]) > 0.9 and vis[-1] > 0.9, "comes back into view"
    assert min(f.visibility(far) for f in frames) < 0.9, "the crossing covers part of the farther object"
    assert all(f.visibility(occluder) == 1.0 for f in frames), "the occluder is nearest and in view"
    colours = {(o.color, o.shape) for o in seq.objects}
    assert len({c for c, _ in colours}) == len({s for _, s in colours}) == len(seq.objects), "unique looks"
    # masks are disjoint, and the depth image agrees with who covers whom
    f = frames[first_hidden]
    inst = f.instance_map()
    for o in seq.objects:
        assert np.array_equal(inst == o.object_id, f.visible[o.object_id])
        if f.visible[o.object_id].any():
            assert np.allclose(f.depth_m[f.visible[o.object_id]], o.depth_m)


def test_written_dataset_reads_back_with_its_truth(tmp_path):
    out = generate_sequences(tmp_path / "motion", sequences=2, frames=12, seed=7)
    with pytest.raises(FileExistsError):
        generate_sequences(out, sequences=1, frames=12)
    seqs = load_sequences(out)
    assert [s.name for s in seqs] == ["0000", "0001"]
    seq = seqs[1]
    ref = motion_sequence(7, 1, 12)
    for t in (0, 6, 11):
        fr = ref.render(t)
        assert np.array_equal(seq.images[t], fr.image)
        for o in ref.objects:
            assert np.array_equal(seq.mask(t, o.object_id), fr.visible[o.object_id])
        truth = seq.info["frame_truth"][t]
        assert [o["visibility"] for o in truth["objects"]] == [round(fr.visibility(o.object_id), 4)
                                                                for o in ref.objects]
    assert seq.info["targets"] == [1, 2, 3]
    assert seq.object(3)["role"] == "occluded" and seq.object(3)["expression"].startswith("the ")


def test_stream_truth_is_json_and_names_each_object():
    seq = motion_sequence(1, 0)
    truth = json.loads(json.dumps(stream_truth(seq, seq.render(3))))
    assert (truth["sequence"], truth["index"], truth["size"]) == (0, 3, 128)
    assert {o["role"] for o in truth["objects"]} == {"crossing_near", "crossing_far", "occluded", "occluder"}
    assert all(o["caption"].endswith(o["shape"]) and "mask" in o for o in truth["objects"])


def test_dataset_command_writes_sequences(tmp_path, child_env, python):
    out = tmp_path / "seqs"
    proc = subprocess.run([python, "-m", "region_perception.cli", "dataset", "synthetic", "--sequences", "1",
                           "--frames", "10", "--out", str(out), "--json"], env=child_env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["sequences"] == 1
    assert len(list((out / "0000" / "frames").glob("*.png"))) == 10


def test_motion_is_refused_off_synthetic(child_env):
    proc = subprocess.run(camera_command("--motion"), env=child_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--motion" in proc.stderr


@pytest.mark.slow
def test_camera_publishes_moving_frames_with_their_truth(child_env):
    from sensor_msgs.msg import Image
    from std_msgs.msg import String

    from region_perception.ros.image_conversion import image_msg_to_rgb

    from .helpers.ros_client import RosClient

    client = RosClient("motion_camera_client")
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
        camera_command("--source", "synthetic", "--motion", "--seed", "2", "--start", "1", "--rate", "20",
                       "--reliable"),
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:

        def matched() -> list[int]:
            with lock:
                return [s for s in images if s in truths]

        assert client.wait(lambda: len(matched()) >= 3, 120), f"frames {len(images)}, truths {len(truths)}"
        keys = matched()
        with lock:
            pairs = [(images[s], truths[s]) for s in keys]
        for image, truth in pairs:  # sequence after sequence from --start 1, however far the camera got
            assert truth["seed"] == 2 and truth["sequence"] >= 1
            assert np.array_equal(image, motion_sequence(2, truth["sequence"]).render(truth["index"]).image)
    finally:
        client.close()
        camera.send_signal(signal.SIGINT)
        try:
            camera.wait(timeout=20)
        except subprocess.TimeoutExpired:
            camera.kill()
