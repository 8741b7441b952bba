"""The region-perception CLI on a real photograph with the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def photo(tmp_path_factory, astronaut):
    path = tmp_path_factory.mktemp("img") / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    return path


def run_cli(*args: str, env=None, model: str | None = "tiny-regionvlm") -> subprocess.CompletedProcess:
    if model and args and args[0] in {"describe", "ask", "refer", "classify"}:
        args = (*args, "--model", model)
    return subprocess.run(
        [sys.executable, "-m", "region_perception.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_describe_json(photo):
    run = run_cli("describe", str(photo), "--points", "200,100;210,120", "--box", "100,200,300,500", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["task"] == "caption" and result["weights_random"] is True and len(result["outputs"]) == 2
    assert {"vision_encode", "qformer", "generation"} <= set(result["timings_ms"])
    assert "RANDOM WEIGHTS" in run.stderr
    assert result["outputs"][0]["region_text"] == "[39 19] [41 23]"


def test_describe_normalized_and_whole_image(photo):
    run = run_cli("describe", str(photo), "--points", "0.5,0.25", "--normalized", "--json")
    assert json.loads(run.stdout)["outputs"][0]["region_text"] == "[50 25]"
    whole = json.loads(run_cli("describe", str(photo), "--json").stdout)
    assert whole["outputs"][0]["region_text"] == ""


def test_ask_json(photo):
    run = run_cli(
        "ask",
        str(photo),
        "--question",
        "what is he holding?",
        "--box",
        "0,0,256,256",
        "--box",
        "256,256,512,512",
        "--json",
    )
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["outputs"]) == 2


def test_refer_json_and_mask(photo, tmp_path):
    out = tmp_path / "mask.png"
    run = run_cli("refer", str(photo), "--text", "the helmet", "--out", str(out), "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    scores = result["candidate_scores"]
    assert result["selected_index"] == int(np.argmin(scores)) and len(result["candidate_boxes"]) == len(scores)
    mask = cv2.imread(str(out), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255} and mask.any()


def test_classify_answers_from_the_labels(photo):
    run = run_cli("classify", str(photo), "--box", "100,100,300,400", "--labels", "person,rocket,flag", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["outputs"][0]["label"] in {"person", "rocket", "flag"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["describe", "{photo}", "--box", "100,200,3000,500"], "outside the 512x512 image"),
        (["describe", "{photo}", "--points", "1,2,3"], "not an x,y pair"),
        (["describe", "/nonexistent.png"], "no such file"),
        (["describe", "{photo}", "--points", "nan,3"], "NaN"),
        (["refer", "{photo}", "--text", "  "], "empty"),
    ],
)
def test_bad_input_is_one_line_no_traceback(photo, args, message):
    run = run_cli(*[a.format(photo=photo) for a in args])
    assert run.returncode == 2
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("region-perception: error:") and message in last
    assert "Traceback" not in run.stderr


def test_models_lists_the_registry():
    run = run_cli("models", "--json")
    names = {row["name"] for row in json.loads(run.stdout)}
    assert "tiny-regionvlm" in names


def test_florence2_backend_from_the_cli(photo, tmp_path):
    run = run_cli("describe", str(photo), "--box", "100,200,300,500", "--json", model="tiny-florence2")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["model"] == "tiny-florence2" and result["weights_random"] is True
    assert {"vision_encode", "generation"} <= set(result["timings_ms"])
    run = run_cli(
        "classify", str(photo), "--box", "100,100,300,400", "--vocab", "coco80", "--json", model="tiny-florence2"
    )
    assert json.loads(run.stdout)["outputs"][0]["label"] in set(
        (REPO / "config" / "coco80.txt").read_text().split("\n")
    )
    for route in ("proposals", "native"):
        run = run_cli(
            "refer", str(photo), "--text", "the helmet", "--refer-route", route, "--json", model="tiny-florence2"
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["outputs"][0]["text"] == "the helmet"
    run = run_cli("ask", str(photo), "--question", "what is it?", model="tiny-florence2")
    assert run.returncode == 2 and "does not answer free questions" in run.stderr


def test_default_model_falls_back_loudly_without_network(photo):
    run = run_cli("describe", str(photo), "--box", "0,0,100,100", "--json", model=None)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["model"] == "tiny-florence2"
    assert "FALLING BACK to tiny-florence2 with RANDOM WEIGHTS" in run.stderr


def test_snap_prints_the_label_and_top5():
    run = run_cli("snap", "aircraft", "--vocab", "coco80", "--json")
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["label"] == "airplane" and len(result["top"]) == 5 and result["top"][0]["label"] == "airplane"
