"""``region-perception run-log LOG --follow``: one object followed through a recorded log's frames (no ROS
graph), on an RGB-D log the project's own log maker writes from a moving synthetic sequence."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from region_perception import cli
from region_perception.datasets.synthetic_camera import camera_intrinsics, inside_point
from region_perception.datasets.synthetic_motion import motion_sequence
from region_perception.logs.make_log import write_rgbd_log

T0 = 1_700_000_000_000_000_000
PERIOD = 125_000_000  # 8 Hz


@pytest.fixture(scope="module")
def motion_log(tmp_path_factory) -> tuple[Path, object]:
    seq = motion_sequence(1, 0)
    frames = [(T0 + t * PERIOD, f.image, f.depth_m) for t, f in ((t, seq.render(t)) for t in range(seq.frames))]
    path = write_rgbd_log(tmp_path_factory.mktemp("log") / "motion.mcap", frames, camera_intrinsics(seq.size))
    return path, seq


def _run(capsys, *args: str) -> tuple[int, dict | None]:
    code, summary, _ = _run_said(capsys, *args)
    return code, summary


def _run_said(capsys, *args: str) -> tuple[int, dict | None, str]:
    """(exit status, the summary line as JSON or None, stderr)."""
    code = cli.main(["run-log", *map(str, args), "--no-progress"])
    err = capsys.readouterr().err
    try:
        return code, json.loads(err.strip().splitlines()[-1]), err
    except (IndexError, json.JSONDecodeError):
        return code, None, err


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ious(records: list[dict], seq, object_id: int) -> list[float]:
    out = []
    for r in records:
        truth = seq.render(r["frame_index"]).visible[object_id]
        pred = cv2.imread(r["mask_file"], cv2.IMREAD_GRAYSCALE) > 0 if "mask_file" in r else np.zeros_like(truth)
        union = (pred | truth).sum()
        out.append(float((pred & truth).sum() / union) if union else 1.0)
    return out


def test_follow_through_an_occlusion_in_a_log_without_a_model(motion_log, tmp_path, capsys):
    log, seq = motion_log
    hidden = seq.by_role("occluded").object_id
    start = 2  # the follow starts on the frame --start names, not the log's first
    first = tmp_path / "first.png"
    cv2.imwrite(str(first), seq.render(start).visible[hidden].astype(np.uint8) * 255)
    out, masks = tmp_path / "track.jsonl", tmp_path / "masks"
    code, summary = _run(capsys, log, "--follow", "--mask", first, "--model", "none", "--out", out,
                         "--masks", masks, "--start", f"{(T0 + start * PERIOD) / 1e9:.3f}")
    assert code == 0, summary
    records = _records(out)
    assert [r["frame_index"] for r in records] == list(range(start, seq.frames)), "every frame from the start, once"
    assert summary["followed"] == len(records) and summary["start_frame"] == start and summary["model"] == "none"
    states = [r["state"] for r in records]
    assert states[0] == "tracking" and "occluded" in states
    assert "reacquired" in states[states.index("occluded"):] and states[-1] == "tracking"
    assert summary["states"] == {s: states.count(s) for s in set(states)}
    ious = _ious(records, seq, hidden)
    seen = [i for i, r in zip(ious, records, strict=True) if seq.render(r["frame_index"]).visibility(hidden) > 0.5]
    assert np.mean(seen) > 0.95, ious
    # the log's depth: the object's position on the frames it is seen (it moves at 3 m from the camera)
    located = [r for r in records if r["mask"]["area"]]
    assert located and all(r["has_position"] and 2.5 < r["position"]["z"] < 3.5 for r in located)
    assert all(not r["has_position"] for r in records if not r["mask"]["area"])
    assert summary["rechecks"] >= 1 and summary["model_calls"] == 0


def test_follow_a_click_with_the_toy_model_judging(motion_log, tmp_path, capsys):
    from .conftest import REPO

    log, seq = motion_log
    target = seq.by_role("crossing_far").object_id
    x, y = inside_point(seq.render(0).visible[target])
    out = tmp_path / "click.jsonl"
    code, summary = _run(capsys, log, "--follow", "--points", f"{x},{y}", "--config", REPO / "config" / "toy.yaml",
                         "--device", "cpu", "--out", out, "--masks", tmp_path / "m", "--recheck-every", "8",
                         "--depth-topic", "none")
    assert code == 0, summary
    records = _records(out)
    assert len(records) == seq.frames and summary["model"] == "toy-regionvlm" and not summary["weights_random"]
    assert summary["model_calls"] >= 1 + (seq.frames - 1) // 8 - 1, "a first caption, then the model's re-checks"
    assert summary["model_calls"] <= seq.frames // 3, "the model is not run on every frame"
    assert sum(r["rechecked"] for r in records) == summary["rechecks"]
    ious = _ious(records, seq, target)
    assert np.mean(ious) > 0.7, ious
    assert "has_position" not in records[0], "--depth-topic none: no 3D fields"


def test_follow_input_is_checked_before_anything_loads(motion_log, tmp_path, capsys):
    log, _ = motion_log
    out = tmp_path / "x.jsonl"
    for args, says in (
        (["--follow", "--points", "1,2", "--box", "1,2,3,4"], "exactly one of"),
        (["--follow"], "exactly one of"),
        (["--follow", "the red circle", "--model", "none"], "needs a model"),
        (["--queries", "q.yaml", "--points", "1,2"], "--points: for --follow only"),
    ):
        code, _, err = _run_said(capsys, log, *args, "--out", out)
        assert code == 2 and says in err, (args, err)
    code, summary = _run(capsys, log, "--follow", "--points", "500,500", "--model", "none", "--out", out, "--force")
    assert code == 3 and "outside" in summary["error"]
    assert _records(out)[0]["state"] == "failed"
