"""``make demo``: which demo runs where, how answers are judged, and the offline demo end to end.

Offline (no hub, as here and in CI) the demo must run the trained toy model on the synthetic
camera and print answers that match the scenes' ground truth; with the released model at
hand, the photos demo; with no trained toy, the photos demo with its random-weight fallback
and a word about ``make train-toy``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from region_perception.datasets.synthetic_camera import ground_truth, mask_from_truth
from region_perception.models.tiny import RANDOM_WEIGHTS_MARKER
from region_perception.models.toy import toy_path
from region_perception.ros.demo import TOY_LABEL, TOY_PARAMS, judge, make_plan, proposal_min_area, questions_for

REPO = Path(__file__).resolve().parents[1]


def trained_dir(tmp_path: Path, random: bool = False) -> Path:
    """A directory that looks like a trained toy (config.json), or one marked random."""
    path = tmp_path / ("random" if random else "trained")
    path.mkdir()
    (path / "config.json").write_text("{}")
    if random:
        (path / RANDOM_WEIGHTS_MARKER).write_text("")
    return path


def never(*_args) -> bool:
    return False


def always(*_args) -> bool:
    return True


def test_released_model_at_hand_runs_the_photos_demo():
    plan = make_plan(None, None, None, offline_env=never, available=always)
    assert plan.mode == "photos" and plan.params.name == "default.yaml" and not plan.notices


@pytest.mark.parametrize(
    ("force", "offline_env", "available", "reason"),
    [
        ("offline", never, always, "--offline"),
        (None, always, always, "HF_HUB_OFFLINE"),
        (None, never, never, "cannot be reached"),
    ],
)
def test_offline_runs_the_trained_toy(tmp_path, force, offline_env, available, reason):
    toy = trained_dir(tmp_path)
    plan = make_plan(force, str(toy), None, offline_env=offline_env, available=available)
    assert (plan.mode, plan.params, plan.model) == ("toy", TOY_PARAMS, str(toy))
    assert reason in plan.reason and not plan.notices


def test_a_toy_model_named_runs_the_toy_demo_even_online():
    plan = make_plan(None, "toy-regionvlm", None, offline_env=never, available=always)
    expected = "toy" if toy_path("toy-regionvlm").joinpath("config.json").is_file() else "photos"
    assert plan.mode == expected and "toy-regionvlm" in plan.reason


def test_online_flag_wins_even_offline(tmp_path):
    plan = make_plan("online", None, None, offline_env=always, available=never)
    assert plan.mode == "photos" and plan.reason == "--online"


@pytest.mark.parametrize("random", [False, True])
def test_no_trained_toy_falls_back_to_photos_and_says_make_train_toy(tmp_path, random):
    """Absent weights, or weights still marked random: the photos demo, with the reason."""
    untrained = trained_dir(tmp_path, random=True) if random else tmp_path / "absent"
    if not random:
        untrained.mkdir()
    plan = make_plan("offline", str(untrained), None, offline_env=always, available=never)
    assert plan.mode == "photos" and plan.params.name == "default.yaml" and plan.model == ""
    assert len(plan.notices) == 1 and "make train-toy" in plan.notices[0] and "RANDOM" in plan.notices[0]


def test_toy_config_names_the_toy_and_the_shapes_vocabulary():
    from region_perception.datasets.synthetic import SHAPES
    from region_perception.engine.settings import MODEL_OWN, model_own_settings
    from region_perception.models.toy import toy_path
    from region_perception.ros.node import PARAMETERS
    from region_perception.service.config_file import load_parameters, read_vocabulary

    params = load_parameters(TOY_PARAMS)
    assert params["model"] == "toy-regionvlm"
    assert set(params) <= set(PARAMETERS), set(params) - set(PARAMETERS)
    assert not set(params) & MODEL_OWN  # the toy brings its own: the YAML does not repeat (or override) them
    own = model_own_settings(json.loads((toy_path("toy-regionvlm") / "region_perception.json").read_text()),
                             toy_path("toy-regionvlm"))
    assert read_vocabulary(own["default_vocabulary"]) == list(SHAPES)


def scene_truth(index: int = 3) -> dict:
    truth = ground_truth(1, index)
    assert len(truth["objects"]) >= 2
    return truth


def test_questions_cover_the_four_kinds_and_refer_names_its_target():
    truth = scene_truth()
    for round_no in range(3):
        qs = questions_for(truth, round_no)
        assert [q.kind for q in qs] == ["caption-point", "caption-box", "classify-box", "refer"]
        refer = qs[-1]
        assert refer.spec["text"] in truth["objects"][refer.target]["expressions"]
        point = qs[0].spec["points"][0]
        assert mask_from_truth(truth["objects"][qs[0].target])[point[1], point[0]]


def test_refer_asks_about_an_object_the_node_can_propose(tmp_path):
    """The node drops proposals smaller than its filter's minimum: REFER targets a larger object."""
    from region_perception.geometry.proposals import ProposalFilter
    from region_perception.training.toys import TOY_SETTINGS

    own = TOY_SETTINGS["proposal_filter"]["min_area_fraction"]  # the toys' own: toy-sam proposals of small shapes
    assert own < ProposalFilter().min_area_fraction
    assert proposal_min_area(TOY_PARAMS) == own
    assert proposal_min_area(TOY_PARAMS, "toy-regiongpt") == own
    assert proposal_min_area(TOY_PARAMS.parent / "default.yaml") == ProposalFilter().min_area_fraction
    params = tmp_path / "p.yaml"
    params.write_text("region_perception:\n  ros__parameters:\n    model: toy-regionvlm\n    proposal_filter:\n"
                      "      min_area_fraction: 0.01\n")
    assert proposal_min_area(params) == 0.01  # the user's file wins over the model's own
    for index in range(10, 20):
        truth = ground_truth(1, index)
        refer = [q for q in questions_for(truth, index, 0.04) if q.kind == "refer"]
        large = [o for o in truth["objects"] if o["expressions"] and o["area"] >= 0.04 * truth["size"] ** 2]
        if refer and large:
            assert truth["objects"][refer[0].target]["area"] >= 0.04 * truth["size"] ** 2


def test_judging_compares_with_the_ground_truth():
    truth = scene_truth()
    objects = truth["objects"]
    caption, classify, refer = (q for q in questions_for(truth, 0) if q.kind != "caption-box")
    target = objects[caption.target]
    assert judge(caption, truth, f"a {target['size']} {target['color']} {target['shape']}", None)[0]
    wrong_caption = f"a {target['color']} {'star' if target['shape'] != 'star' else 'circle'}"
    assert not judge(caption, truth, wrong_caption, None)[0]
    assert judge(classify, truth, objects[classify.target]["shape"], None)[0]
    assert not judge(classify, truth, "star" if objects[classify.target]["shape"] != "star" else "circle", None)[0]
    right, line = judge(refer, truth, "", mask_from_truth(objects[refer.target]))
    assert right and "IoU 1.00" in line
    others = [o for k, o in enumerate(objects) if k != refer.target]
    assert not judge(refer, truth, "", mask_from_truth(others[0]))[0]
    assert not judge(refer, truth, "", np.zeros((truth["size"],) * 2, bool))[0]
    assert not judge(refer, truth, "", None)[0]


@pytest.mark.slow
def test_offline_demo_runs_the_trained_toy_and_answers_match_the_truth(child_env, tmp_path):
    """`make demo` with no hub: the toy on the synthetic camera, most answers right (chance ~ 1/4)."""
    name = str(__import__("yaml").safe_load(TOY_PARAMS.read_text())["region_perception"]["ros__parameters"]["model"])
    path = toy_path(name)
    if not (path / "config.json").is_file():
        pytest.skip(f"{path}: {name} is not shipped (its last `make train-toy` missed a target, docs/training.md)")
    assert not (path / RANDOM_WEIGHTS_MARKER).exists(), f"{path}: RANDOM weights; run `make train-toy`"
    env = dict(child_env, HF_HUB_OFFLINE="1")
    out = tmp_path / "demo_out"
    proc = subprocess.run(
        [sys.executable, "-m", "region_perception.ros.demo", "--out", str(out)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=500,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "TOY MODEL TRAINED ON SYNTHETIC SHAPES" in proc.stdout and "HF_HUB_OFFLINE" in proc.stdout, log[-4000:]
    tally = re.search(rf"\[demo\] {TOY_LABEL} \(([^)]+)\): (\d+)/(\d+) right .*; (\d+)/(\d+) questions answered",
                      proc.stdout)
    assert tally, log[-4000:]
    model, right, judged, answered, asked = tally.group(1), *map(int, tally.groups()[1:])
    # two scenes, four questions each (three where no object can be named unambiguously)
    assert model == name and asked == answered == judged >= 6, log[-4000:]
    # each answer is printed beside its truth
    assert proc.stdout.count("| truth:") == judged, proc.stdout
    assert right >= 0.75 * judged, f"{right}/{judged} right:\n{proc.stdout[-4000:]}"
    assert len(list(out.glob("toy_scene*.png"))) >= judged - 2  # a refused REFER has no overlay
