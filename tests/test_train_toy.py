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

    # --remeasure: the installed toy's evaluation re-run as shipped; figures and card rewritten, weights untouched
    import shutil

    shutil.copytree(out, dest / "toy-florence2", ignore=shutil.ignore_patterns("eval", "checkpoints"))
    meta_path = dest / "toy-florence2" / "region_perception.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "metrics": {"stale": True}}))
    weights = (dest / "toy-florence2" / "model.safetensors").read_bytes()
    toys.main(["--remeasure", "--only", "toy-florence2", "--work", str(tmp_path / "work"), "--dest", str(dest),
               "--eval-limit", "2", "--no-progress"])
    meta = json.loads(meta_path.read_text())
    assert "stale" not in meta["metrics"] and meta["metrics"]["caption-box"]["n"] == 2
    assert (dest / "toy-florence2" / "model.safetensors").read_bytes() == weights
    assert not (dest / "toy-florence2" / "eval").exists(), "the per-item rows stay out of the installed toy"
    card = (dest / "toy-florence2" / "README.md").read_text()
    assert "--remeasure" in card and "**toy-florence2**" in card
    assert toys.main(["--remeasure", "--only", "toy-regiongpt", "--work", str(tmp_path / "work"), "--dest",
                      str(dest)]) == 2  # not installed: nothing to re-measure


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


def test_the_toy_segmenter_trains_in_two_processes_with_its_recipe(tmp_path, monkeypatch, capsys):
    """On two cores toy-sam trains as `train --stage segmenter` under torchrun, two ranks of one thread each
    splitting the recipe's images a step; the recipe's prompt mix reaches the command, and the card and targets
    come back as from one process."""
    monkeypatch.setattr(toys, "WORLD", {"images": 12, "size": 128, "seed": 4, "val_fraction": 0.25})
    monkeypatch.setitem(toys.SEGMENTER_RECIPES, "toy-sam",
                        {**toys.SEGMENTER_RECIPES["toy-sam"], "steps": 2, "batch_size": 4, "box_fraction": 0.5,
                         "max_corrections": 2})
    monkeypatch.setattr(toys, "segmenter_processes", lambda: 2)
    dest = tmp_path / "toy"
    code = toys.main(["--only", "toy-sam", "--work", str(tmp_path / "work"), "--dest", str(dest),
                      "--eval-limit", "1", "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 1, printed  # two steps meet no target
    report = json.loads((tmp_path / "work" / "train-toy.json").read_text())["toy-sam"]
    assert report["world_size"] == 2 and report["batch_size"] == 2 and report["steps"] == 2
    assert report["box_fraction"] == 0.5 and report["max_corrections"] == 2
    assert report["metrics"]["n"] > 0 and report["installed"] is False
    assert not (dest / "toy-sam").exists()
    assert "2 process(es)" in (tmp_path / "work" / "toy-sam" / "README.md").read_text()


def test_segmenter_processes_follow_the_threads_and_divide_the_batch(monkeypatch):
    import torch

    for threads, expected in ((1, 1), (2, 2), (3, 2), (4, 4)):
        monkeypatch.setattr(torch, "get_num_threads", lambda t=threads: t)
        assert toys.segmenter_processes() == expected


def test_the_segmenter_command_defaults_are_the_toy_recipe():
    """`region-perception train --stage segmenter` with no recipe flags trains toy-sam as `make train-toy` does."""
    from region_perception.training.segmenter import SegmenterTrainConfig

    recipe = toys.SEGMENTER_RECIPES["toy-sam"]
    defaults = SegmenterTrainConfig(data="d", out="o")
    assert {k: getattr(defaults, k) for k in recipe} == recipe


@pytest.mark.parametrize("name", sorted(toys.RECIPES))
def test_the_shipped_toys_carry_the_recipe_settings(name):
    """What `make train-toy` writes as a toy's own settings is what the shipped toy carries (toy-sam, its
    proposals and their filter), so the card's figures and a user naming the toy see the same route."""
    from region_perception.engine.settings import flatten
    from region_perception.models.toy import TOY_DIR

    meta = json.loads((TOY_DIR / name / "region_perception.json").read_text())
    assert {k: v for k, v in meta["settings"].items() if k != "default_vocabulary"} == flatten(toys.TOY_SETTINGS)
