"""``region-perception ... --depth --intrinsics``: 3D positions in the CLI's JSON (no ROS)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from region_perception.datasets.synthetic_camera import (
    camera_intrinsics,
    ground_truth,
    synthetic_depth_frame,
    synthetic_frame,
)
from region_perception.geometry.depth import metres_to_16uc1

from .test_cli import run_cli

pytestmark = pytest.mark.slow
SIZE = 160


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("depth")
    image, objects = synthetic_frame(1, 3, SIZE)
    cv2.imwrite(str(d / "rgb.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(d / "depth.png"), metres_to_16uc1(synthetic_depth_frame(objects, SIZE)))  # 16-bit, mm
    for k, obj in enumerate(objects):
        cv2.imwrite(str(d / f"mask{k}.png"), obj.mask.astype(np.uint8) * 255)
    k = camera_intrinsics(SIZE)
    return d, ground_truth(1, 3, SIZE, objects), f"{k.fx},{k.fy},{k.cx},{k.cy}"


def test_positions_in_the_json_match_the_scene(scene):
    d, truth, intr = scene
    masks = [a for k in range(len(truth["objects"])) for a in ("--mask", str(d / f"mask{k}.png"))]
    run = run_cli("describe", str(d / "rgb.png"), *masks, "--depth", str(d / "depth.png"),
                  "--intrinsics", intr, "--max-new-tokens", "2", "--json")
    assert run.returncode == 0, run.stderr
    outs = json.loads(run.stdout)["outputs"]
    pixel_m = 3.0 / truth["camera"]["fx"]
    for out, obj in zip(outs, truth["objects"], strict=True):
        assert out["has_position"] and out["depth_valid_fraction"] == pytest.approx(1.0)
        assert out["position"][2] == pytest.approx(obj["depth_m"], abs=0.01)
        assert np.allclose(out["position"][:2], obj["position_m"][:2], atol=3 * pixel_m)
        assert len(out["size"]) == 3
    # text output says where too
    run = run_cli("classify", str(d / "rgb.png"), "--mask", str(d / "mask0.png"), "--labels", "circle,star",
                  "--depth", str(d / "depth.png"), "--intrinsics", intr)
    assert run.returncode == 0 and " m, size " in run.stdout, run.stdout + run.stderr


def test_bad_depth_input_is_one_line_and_bad_values_only_a_note(scene, tmp_path):
    d, _, intr = scene
    for extra, words in (
        (["--depth", str(d / "depth.png")], "--depth needs --intrinsics"),
        (["--depth", str(tmp_path / "none.png"), "--intrinsics", intr], "no such file"),
        (["--depth", str(d / "depth.png"), "--intrinsics", "1,2,3"], "expected four numbers"),
    ):
        run = run_cli("describe", str(d / "rgb.png"), "--box", "0,0,20,20", *extra, "--json")
        assert run.returncode == 2 and words in run.stderr, (extra, run.stderr)
        assert len(run.stderr.strip().splitlines()) == 1
    cv2.imwrite(str(tmp_path / "zeros.png"), np.zeros((SIZE, SIZE), np.uint16))
    run = run_cli("describe", str(d / "rgb.png"), "--box", "0,0,20,20", "--depth", str(tmp_path / "zeros.png"),
                  "--intrinsics", intr, "--max-new-tokens", "2", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["outputs"][0]["has_position"] is False
    assert any("every pixel zero or NaN" in n for n in result["notes"])
