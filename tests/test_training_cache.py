"""Stage 1's cache of the frozen vision tower's output: the same losses as without it, and off where it would not be.

The cache changes how often the tower runs, never what the step computes: a run with it and a run without it
must give the same loss at every step (float round-off from the tower's batch size aside).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import region_perception.training.trainer as trainer
from region_perception.datasets import synthetic as syn
from region_perception.training.recipes import TrainExample, get_recipe
from region_perception.training.trainer import TowerCache, TrainConfig, train

from .test_training import BACKENDS, SIZES

# every group but the tower: what stage 1 trains on a stage-0 tower
NOT_VISION = {"regionvlm": ["qformer", "projection", "lm"], "florence2": ["projector", "lm"],
              "regiongpt": ["refiner", "projector", "lm"]}
# two encoder layers: the Florence-2 toy's region wiring (models/toy.py, in progress) reads a second one
SIZES = {**SIZES, "florence2": {**SIZES["florence2"], "layers": 2}}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("cachesyn") / "world", images=8, seed=5, val_fraction=0.25)


def _run(world: Path, out: Path, backend: str, monkeypatch, **kw) -> tuple[list[float], dict]:
    """The per-step losses and the summary of a short stage-1 run."""
    seen: dict = {}
    real = trainer._optimise

    def spy(*args, **kwargs):
        loop = real(*args, **kwargs)
        seen["losses"] = list(loop.losses)
        return loop

    monkeypatch.setattr(trainer, "_optimise", spy)
    cfg = dict(model=f"toy-{backend}", data=str(world), tasks=["caption", "classify", "refer"], out=out, steps=8,
               batch_size=4, lr=2e-3, warmup_ratio=0.0, eval_limit=0, device="cpu", sizes=SIZES.get(backend, {}),
               progress=False, train=NOT_VISION[backend])
    summary = train(TrainConfig(**{**cfg, **kw}))
    return seen["losses"], summary


@pytest.mark.parametrize("backend", BACKENDS)
def test_cached_tower_gives_the_same_losses(tmp_path, world, backend, monkeypatch):
    plain, s0 = _run(world, tmp_path / "plain", backend, monkeypatch, tower_cache_mb=0)
    cached, s1 = _run(world, tmp_path / "cached", backend, monkeypatch)
    assert s0["tower_cache"] is None
    # 8 steps of one image each over the 6 training images: some are drawn again and come from the cache
    assert s1["tower_cache"]["hits"] > 0 and s1["tower_cache"]["images"] == s1["tower_cache"]["misses"]
    np.testing.assert_allclose(cached, plain, rtol=1e-5, atol=1e-5)


def test_a_tower_that_trains_is_not_cached(tmp_path, world, monkeypatch):
    _, summary = _run(world, tmp_path / "out", "regionvlm", monkeypatch, steps=2, train=None)  # a random base: all
    assert "vision" in summary["train_groups"] and summary["tower_cache"] is None


# -- the cache on its own ---------------------------------------------------------------------------------------


class _Recipe:
    """A stand-in recipe: the tower is one linear layer (optionally with dropout) on 4-pixel images."""

    def __init__(self, dropout: float = 0.0) -> None:
        self.dropout = dropout
        self.encoded = 0

    def vision_pixels(self, processor, images) -> torch.Tensor:
        return torch.stack([torch.from_numpy(im.astype(np.float32)).flatten() for im in images])

    def tower_features(self, model, pixels: torch.Tensor) -> torch.Tensor:
        self.encoded += len(pixels)
        return model.tower(pixels)

    def build_batch(self, model, processor, examples, pixels: bool = True) -> dict:
        batch: dict = {"rows": len(examples)}
        if pixels:
            batch["pixel_values"] = self.vision_pixels(processor, [e.image for e in examples])
        return batch


def _model(dropout: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.tower = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Dropout(dropout))
    model.tower.requires_grad_(False)
    return model.train()


def _examples(ids: list[int]) -> list[TrainExample]:
    return [TrainExample(image=np.full((2, 2, 3), i, np.uint8), cue=None, task="caption", target="x", image_id=i)
            for i in ids]


def _cache(recipe, max_bytes: int = 1 << 20) -> TowerCache:
    from contextlib import nullcontext

    return TowerCache(recipe, None, max_bytes, nullcontext)


def test_each_image_is_encoded_once_and_the_store_is_bounded():
    recipe = _Recipe()
    model = _model(0.0)
    cache = _cache(recipe, max_bytes=2 * 8 * 4)  # room for two images' features (8 float32 each)
    first = cache.batch(model, _examples([3, 1, 3]), torch.device("cpu"))
    assert "pixel_values" not in first and first["image_features"].shape == (2, 8)  # 3 and 1, once each
    encoded = recipe.encoded
    again = cache.batch(model, _examples([1, 3]), torch.device("cpu"))
    assert recipe.encoded == encoded  # both from the store
    torch.testing.assert_close(again["image_features"], first["image_features"].flip(0), rtol=0, atol=0)
    third = cache.batch(model, _examples([5, 1]), torch.device("cpu"))  # 5 does not fit: encoded, not kept
    assert sorted(cache.store) == [1, 3] and cache.bytes <= 2 * 8 * 4
    expected = model.tower(recipe.vision_pixels(None, [e.image for e in _examples([5, 1])]))
    torch.testing.assert_close(third["image_features"], expected)


def test_a_tower_with_dropout_is_not_cached_and_the_rng_is_left_alone():
    recipe = _Recipe(dropout=0.5)
    cache = _cache(recipe)
    model = _model(0.5)
    torch.manual_seed(7)
    batch = cache.batch(model, _examples([1, 2]), torch.device("cpu"))
    after = torch.rand(3)
    torch.manual_seed(7)
    assert cache.checked is False and "pixel_values" in batch and "image_features" not in batch
    torch.testing.assert_close(after, torch.rand(3))  # the check drew nothing a later step would see


def test_applies_only_to_a_frozen_tower_without_batch_norm_statistics():
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    one = SimpleNamespace(distributed_type=DistributedType.NO)  # one process, parameters whole
    recipe = get_recipe("regionvlm")
    model = torch.nn.Module()
    model.vision_model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    model.qformer = torch.nn.Linear(2, 2)
    groups = recipe.parameter_groups(model)
    assert TowerCache.applies(recipe, model, groups, one) == "the vision tower trains"
    model.vision_model.requires_grad_(False)
    assert TowerCache.applies(recipe, model, groups, one) is None
    model.vision_model.append(torch.nn.BatchNorm1d(2))
    model.vision_model.requires_grad_(False)
    assert "batch-norm" in TowerCache.applies(recipe, model, recipe.parameter_groups(model), one)


def test_two_gloo_processes_use_the_cache(tmp_path, world, child_env):
    out = tmp_path / "ddp"
    env = {**child_env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "region_perception.cli", "train",
           "--model", "toy-regionvlm", "--data", str(world), "--out", str(out), "--steps", "6", "--batch-size", "4",
           "--train", "qformer,projection,lm", "--device", "cpu", "--eval-limit", "0", "--no-progress", "--json",
           "--sizes", json.dumps(SIZES["regionvlm"])]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["world_size"] == 2 and summary["tower_cache"]["hits"] > 0
