"""Robot logs with depth: an MCAP of colour, aligned depth and CameraInfo gives 3D positions
offline (run-log), replayed into the node, and again from what the recorder wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import Point32

from region_perception.datasets.synthetic_camera import (
    camera_intrinsics,
    ground_truth,
    synthetic_depth_frame,
    synthetic_frame,
)
from region_perception.logs.make_log import write_rgbd_log
from region_perception.logs.reader import LogReader
from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.ros.processes import camera_command, node_command

from .test_logs import stopped

SIZE = 160
T0 = 1_700_000_000_000_000_000
FRAME_ID = "camera_color_optical_frame"


def scenes(n: int = 3) -> list[tuple[int, np.ndarray, np.ndarray, dict]]:
    out = []
    for i in range(n):
        rgb, objects = synthetic_frame(1, 20 + i, SIZE)
        out.append((T0 + i * 250_000_000, rgb, synthetic_depth_frame(objects, SIZE), ground_truth(1, 20 + i, SIZE)))
    return out


def rgbd_log(path: Path, frames, delay_ns: int = 20_000_000) -> Path:
    """Depth stamped 20 ms after its colour frame, as drivers that align depth later do."""
    return write_rgbd_log(path, [(s, rgb, d) for s, rgb, d, _ in frames], camera_intrinsics(SIZE),
                          frame_id=FRAME_ID, depth_delay_ns=delay_ns)


def write_masks_script(path: Path, frames) -> Path:
    queries = []
    for i, (stamp, _, _, truth) in enumerate(frames):
        obj = truth["objects"][0]
        mask_file = path.parent / f"mask{i}.png"
        from region_perception.datasets.synthetic_camera import mask_from_truth

        cv2.imwrite(str(mask_file), mask_from_truth(obj).astype(np.uint8) * 255)
        at = {"sec": stamp // 1_000_000_000, "nanosec": stamp % 1_000_000_000}
        queries.append({"id": f"m{i}", "task": "caption", "at": at, "mask": mask_file.name, "max_new_tokens": 2})
    path.write_text(json.dumps({"queries": queries}))
    return path


def check_positions(records: dict, frames, pixel_m: float) -> None:
    for i, (_, _, _, truth) in enumerate(frames):
        rec, obj = records[f"m{i}"], truth["objects"][0]
        assert rec["status_name"] == "OK", rec["error"]
        out = rec["outputs"][0]
        assert out["has_position"], rec["notes"]
        assert out["position"]["z"] == pytest.approx(obj["depth_m"], abs=0.01)
        assert abs(out["position"]["x"] - obj["position_m"][0]) < 3 * pixel_m
        assert rec["header"]["frame_id"] == FRAME_ID


@pytest.mark.slow
def test_run_log_gives_positions_from_the_logs_depth(tmp_path):
    frames = scenes()
    log = rgbd_log(tmp_path / "rgbd.mcap", frames)
    reader = LogReader(log)
    assert reader.image_topic() == "/camera/color/image_raw"  # the colour topic, not the depth one
    script = write_masks_script(tmp_path / "queries.yaml", frames)
    out = tmp_path / "out.jsonl"

    def run_log(log: Path, out: Path) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "region_perception.cli", "run-log", str(log), "--queries", str(script),
               "--out", str(out), "--model", "tiny-regionvlm", "--no-progress"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

    done = run_log(log, out)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert summary["depth_topic"] == "/camera/aligned_depth_to_color/image_raw"
    records = {r["query_id"]: r for r in map(json.loads, out.read_text().splitlines())}
    check_positions(records, frames, 3.0 / camera_intrinsics(SIZE).fx)
    # depth 120 ms late (frames 250 ms apart): beyond the tolerance, answered without positions, and said so
    late = rgbd_log(tmp_path / "late.mcap", frames, delay_ns=120_000_000)
    done = run_log(late, tmp_path / "late.jsonl")
    assert done.returncode == 0, done.stderr
    for r in map(json.loads, (tmp_path / "late.jsonl").read_text().splitlines()):
        assert r["status_name"] == "OK" and not r["outputs"][0]["has_position"]
        assert any("120 ms newer than the colour frame" in n for n in r["notes"]), r["notes"]


@pytest.mark.slow
def test_rgbd_mcap_replays_into_the_node_and_the_recording_keeps_depth(tmp_path, child_env):
    from .helpers.ros_client import RosClient

    frames = scenes()
    log = rgbd_log(tmp_path / "rgbd.mcap", frames)
    node = subprocess.Popen(
        node_command(model="tiny-regionvlm", image_reliability="reliable", image_qos_depth=5, frame_buffer_size=10,
                     diagnostics_period_s=0.5, depth_topic="depth/image_raw", camera_info_topic="depth/camera_info"),
        env=child_env, stdout=open(tmp_path / "node.log", "w"), stderr=subprocess.STDOUT,
    )
    recorder = subprocess.Popen(
        [sys.executable, "-m", "region_perception.ros.record", "--out", str(tmp_path / "rec.mcap")],
        env=child_env, stdout=open(tmp_path / "record.log", "w"), stderr=subprocess.STDOUT,
    )
    player = subprocess.Popen(
        camera_command("--source", str(log), "--rate", "4", "--loop", "--reliable", "--no-progress"),
        env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = RosClient("logs_depth_client")
    try:
        assert client.client.wait_for_service(timeout_sec=120), "node did not come up"
        client.wait_active()
        assert client.wait(lambda: int(client.diagnostic_values().get("depth_frames_received", "0")) >= 3, 60)
        pixel_m = 3.0 / camera_intrinsics(SIZE).fx
        for i, (stamp, _, _, truth) in enumerate(frames):
            obj = truth["objects"][0]
            q = RegionQuery(query_id=f"m{i}", task=RegionQuery.CAPTION, max_new_tokens=2)
            q.header.stamp.sec, q.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            q.regions = [Region(kind=Region.POINTS, points=[Point32(x=float(obj["point"][0]),
                                                                    y=float(obj["point"][1]))])]
            result = client.ask(q)
            assert result.status == RegionResult.OK, result.error
            out = result.outputs[0]
            assert out.has_position, result.notes
            assert out.position.z == pytest.approx(obj["depth_m"], abs=0.01)
            assert result.header.frame_id == FRAME_ID
            # the clicked point's disk: its position is the point back-projected at the object's depth
            k = camera_intrinsics(SIZE)
            assert abs(out.position.x - (obj["point"][0] - k.cx) * obj["depth_m"] / k.fx) < 3 * pixel_m
        stopped(recorder)
        assert recorder.returncode == 0, (tmp_path / "record.log").read_text()
        rec = LogReader(tmp_path / "rec.mcap")
        topics = rec.topics()
        assert topics["/depth/image_raw"].count >= 3 and topics["/depth/camera_info"].count >= 1, topics
        assert rec.depth_topic() == "/depth/image_raw" and rec.image_topic() == "/image"
    finally:
        client.close()
        stopped(player, recorder, node)
    # the recording answers offline with positions too
    script = write_masks_script(tmp_path / "queries.yaml", frames)
    out = tmp_path / "rec.jsonl"
    done = subprocess.run([sys.executable, "-m", "region_perception.cli", "run-log", str(tmp_path / "rec.mcap"),
                           "--queries", str(script), "--out", str(out), "--model", "tiny-regionvlm", "--no-progress"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    check_positions({r["query_id"]: r for r in map(json.loads, out.read_text().splitlines())}, frames,
                    3.0 / camera_intrinsics(SIZE).fx)
