"""The trainer: loss falls for each backend, OUT loads as a trained model, resume, bad input, two processes.

Tiny sizes and a few steps: these check the training machinery, not answer quality (``make train-toy``
measures that on the toy models).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from region_perception.datasets import synthetic as syn
from region_perception.training.trainer import TrainConfig, evaluate_out, train

SIZES = {
    "regionvlm": {"image_size": 64, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2,
                  "qformer_hidden": 32, "qformer_layers": 1, "qformer_heads": 2, "num_query_tokens": 4,
                  "lm_hidden": 32, "lm_layers": 1, "lm_heads": 2},
    "florence2": {"image_size": 64, "hidden": 32, "layers": 1},
}


def _has_regiongpt_toy() -> bool:
    try:
        from region_perception.models.regiongpt.tiny import build_toy_regiongpt  # noqa: F401
        from region_perception.training.recipes import get_recipe

        get_recipe("regiongpt")
    except (ImportError, ValueError):
        return False
    return True


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("trainsyn") / "world", images=8, seed=5, val_fraction=0.25)


def _cfg(world: Path, out: Path, backend: str = "regionvlm", **kw) -> TrainConfig:
    base = dict(model=f"toy-{backend}", data=str(world), tasks=["caption", "classify", "refer"], out=out, steps=4,
                batch_size=4, lr=2e-3, warmup_ratio=0.0, eval_limit=0, device="cpu", sizes=SIZES.get(backend, {}),
                progress=False)
    return TrainConfig(**{**base, **kw})


BACKENDS = ["regionvlm", "florence2",
            pytest.param("regiongpt", marks=pytest.mark.skipif(not _has_regiongpt_toy(),
                                                               reason="toy RegionGPT builder not present"))]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_few_steps_lower_the_loss(tmp_path, world, backend):
    summary = train(_cfg(world, tmp_path / "out", backend, steps=25, lr=3e-3))
    first = summary["first_loss"]
    assert summary["final_loss"] < 0.8 * first, (first, summary["final_loss"])
    assert summary["backend"] == backend


def test_out_loads_as_a_trained_model_with_a_model_card(tmp_path, world):
    from region_perception.engine import EngineConfig, RegionEngine
    from region_perception.geometry.regions import BoxRegion

    out = tmp_path / "out"
    summary = train(_cfg(world, out, eval_limit=3))
    assert (out / "model.safetensors").is_file() and not (out / "RANDOM_WEIGHTS").exists()
    assert not (out / "checkpoints").exists()
    card = (out / "README.md").read_text()
    assert "toy-regionvlm" in card and str(world) in card and "comprehension" in card
    meta = json.loads((out / "region_perception.json").read_text())
    assert meta["trained"] and meta["steps"] == 4 and meta["regionvlm_points"]
    assert set(summary["metrics"]) == {"caption-box", "classify-box", "classify-mask", "comprehension-gt",
                                       "refer-proposals"}
    assert all(m["n"] == 3 for m in summary["metrics"].values())
    engine = RegionEngine.load(EngineConfig(model=str(out), segmenter="none", device="cpu"))
    assert engine.weights_random is False
    import numpy as np

    res = engine.caption(np.zeros((64, 64, 3), np.uint8), [BoxRegion(np.array([4.0, 4.0, 30.0, 30.0]))])
    assert res.weights_random is False and isinstance(res.outputs[0].text, str)


def _state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "model.safetensors"))


def test_resume_continues_to_the_same_weights(tmp_path, world, monkeypatch):
    import region_perception.training.trainer as trainer

    straight = tmp_path / "straight"
    train(_cfg(world, straight, steps=4, save_every=2))

    cut = tmp_path / "cut"
    real = trainer._checkpoint

    def crash_after_checkpoint(accelerator, out, step):
        real(accelerator, out, step)
        raise KeyboardInterrupt  # the run is killed right after its step-2 checkpoint

    monkeypatch.setattr(trainer, "_checkpoint", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(world, cut, steps=4, save_every=2))
    monkeypatch.setattr(trainer, "_checkpoint", real)
    assert (cut / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    assert not (cut / "model.safetensors").exists()
    summary = train(_cfg(world, cut, steps=4, save_every=2, resume=True))
    assert summary["resumed_at"] == 2
    a, b = _state(straight), _state(cut)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def _cli(args: list[str], env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "region_perception.cli", "train", *args], capture_output=True,
                          text=True, env=env, timeout=600)


def _assert_one_line_error(proc, words: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("region-perception: error:"), proc.stderr[-2000:]
    assert words in lines[0], lines[0]


def test_bad_input_is_one_line_and_nothing_is_overwritten(tmp_path, world):
    import shutil

    from region_perception.cli import main

    base = ["--model", "toy-regionvlm", "--steps", "1", "--no-progress"]
    # an unknown task, and an OUT that exists: in-process (main returns 2 and prints one line)
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    for extra, words in (
        (["--data", str(world), "--tasks", "caption,dance", "--out", str(tmp_path / "o1")], "dance"),
        (["--data", str(world), "--out", str(existing)], "--overwrite"),
        (["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o2")], "does not exist"),
    ):
        proc = _cli([*base, *extra])
        _assert_one_line_error(proc, words)
    assert (existing / "keep.txt").read_text() == "mine" and sorted(os.listdir(existing)) == ["keep.txt"]
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()

    # a dataset whose annotations are empty
    empty = tmp_path / "empty"
    shutil.copytree(world, empty)
    for split in ("train", "val"):
        coco = json.loads((empty / f"instances_{split}.json").read_text())
        coco["annotations"] = []
        (empty / f"instances_{split}.json").write_text(json.dumps(coco))
    assert main(["train", *base, "--data", str(empty), "--out", str(tmp_path / "o3")]) == 2
    assert not (tmp_path / "o3").exists()

    # an image missing
    holed = tmp_path / "holed"
    shutil.copytree(world, holed)
    coco = json.loads((holed / "instances_train.json").read_text())
    (holed / "images" / coco["images"][0]["file_name"]).unlink()
    proc = _cli([*base, "--data", str(holed), "--out", str(tmp_path / "o4")])
    _assert_one_line_error(proc, "missing")
    assert not (tmp_path / "o4").exists()


def test_two_gloo_processes_train_and_shard_eval_like_one(tmp_path, world, child_env):
    out = tmp_path / "ddp"
    env = {**child_env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "region_perception.cli", "train",
           "--model", "toy-regionvlm", "--data", str(world), "--out", str(out), "--steps", "3", "--batch-size", "2",
           "--device", "cpu", "--eval-limit", "6", "--no-progress", "--json", "--sizes", json.dumps(SIZES["regionvlm"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["steps"] == 3
    # the sharded evaluation (two ranks, merged) reports what one process reports on the same weights
    single = evaluate_out(out, str(world), "val", ["caption", "classify", "refer"], limit=6, device="cpu",
                          progress=False)
    assert summary["metrics"] == single
