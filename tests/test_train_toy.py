"""``make train-toy``'s script: both stages per toy, a model card that says how it was made, installed only
when the targets are met, and packaged weights never replaced unless asked.

A few steps on a small world: the machinery, not the quality (the shipped toys' cards hold that).
"""

from __future__ import annotations

import json

import pytest

from region_perception.training import toys


@pytest.fixture
def quick(monkeypatch):
    """Two steps per stage on a 12-image world."""
    monkeypatch.setattr(toys, "WORLD", {"images": 12, "size": 128, "seed": 4, "val_fraction": 0.25})
    monkeypatch.setitem(toys.RECIPES, "toy-florence2", {"stage0": {**toys.STAGE0, "steps": 2},
                                                        "stage1": {**toys.STAGE1, "steps": 2}})


def test_two_stages_a_card_and_no_install_when_targets_are_missed(tmp_path, quick, capsys):
    dest = tmp_path / "toy"
    code = toys.main(["--only", "toy-florence2", "--work", str(tmp_path / "work"), "--dest", str(dest),
                      "--eval-limit", "2", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1, printed  # two steps meet no target
    assert not (dest / "toy-florence2").exists(), "a toy that misses its targets is not installed"
    out = tmp_path / "work" / "toy-florence2"
    report = json.loads((tmp_path / "work" / "train-toy.json").read_text())["toy-florence2"]
    assert report["stage0"]["steps"] == 2 and report["steps"] == 2 and report["installed"] is False
    assert "vision" not in report["train_groups"], "stage 1 keeps the pre-trained tower frozen"
    assert {row["eval"] for row in report["targets"]} >= {"caption-box", "classify-box", "comprehension-gt"}
    card = (out / "README.md").read_text()
    for words in ("How it was made", "stage 0", "--stage vision", "seed", "synthetic", "chance", "s a step"):
        assert words in card, words
    assert "stage 0" in printed and "s a step" in printed and "NOT installed" in printed


def test_packaged_weights_are_not_replaced_without_overwrite(tmp_path, capsys):
    dest = tmp_path / "toy"
    (dest / "toy-regionvlm").mkdir(parents=True)
    (dest / "toy-regionvlm" / "config.json").write_text("{}")
    code = toys.main(["--only", "toy-regionvlm", "--work", str(tmp_path / "work"), "--dest", str(dest)])
    assert code == 2 and "--overwrite" in capsys.readouterr().err
    assert (dest / "toy-regionvlm" / "config.json").read_text() == "{}"
    assert not (tmp_path / "work").exists()


def test_targets_are_checked_against_the_issue_figures():
    metrics = {"caption-box": {"name_accuracy": 85.0, "chance": {"name_accuracy": 4.2}},
               "classify-box": {"accuracy": 91.0, "chance": {"accuracy": 25.0}},
               "classify-mask": {"accuracy": 89.9, "chance": {"accuracy": 25.0}},
               "comprehension-gt": {"accuracy": 70.0, "chance": {"accuracy": 25.0}},
               "refer-proposals": {"mIoU": 30.0, "chance": {"mIoU": 20.0}}}
    rows = {r["eval"]: r for r in toys.check_targets(metrics)}
    assert rows["caption-box"]["met"] and rows["classify-box"]["met"] and rows["comprehension-gt"]["met"]
    assert rows["classify-mask"]["met"] is False and rows["refer-proposals"]["met"] is None
    assert rows["caption-box"]["chance"] == 4.2
