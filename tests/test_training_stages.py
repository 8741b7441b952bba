"""Stage 0 (the vision tower on dense labels) and stage 1 on its frozen output; the toy RegionVLM's convolution
stem; referring sentences trained and scored after their own instruction.

Tiny sizes and a few steps: the machinery, not answer quality (``make train-toy`` measures that).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from region_perception.datasets import synthetic as syn
from region_perception.training.trainer import TrainConfig, train

SIZES = {
    "regionvlm": {"image_size": 64, "vision_hidden": 32, "vision_layers": 1, "vision_heads": 2,
                  "qformer_hidden": 32, "qformer_layers": 1, "qformer_heads": 2, "num_query_tokens": 4,
                  "lm_hidden": 32, "lm_layers": 1, "lm_heads": 2},
    "florence2": {"image_size": 64, "hidden": 32, "layers": 1},
    "regiongpt": {"image_size": 64, "vision_hidden": 32, "vision_layers": 1, "lm_hidden": 32, "lm_layers": 1},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("stages") / "world", images=12, size=64, seed=3, val_fraction=0.25)


def _cfg(world: Path, out: Path, backend: str, **kw) -> TrainConfig:
    base = dict(model=f"toy-{backend}", data=str(world), tasks=[], out=out, steps=20, batch_size=4, lr=3e-3,
                warmup_ratio=0.0, eval_limit=0, device="cpu", sizes=SIZES[backend], progress=False, stage="vision")
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("backend", ["regionvlm", "florence2", "regiongpt"])
def test_stage0_learns_and_stage1_freezes_the_tower(tmp_path, world, backend):
    tower = tmp_path / "stage0"
    s0 = train(_cfg(world, tower, backend, eval_limit=3))
    assert s0["final_loss"] < 0.8 * s0["first_loss"], (s0["first_loss"], s0["final_loss"])
    assert s0["train_groups"] == ["vision"] and s0["label_spaces"] == {"category": 4, "color": 6, "size": 3}
    probe = s0["probe"]
    assert set(probe) == {"category", "color", "size"} and probe["category"]["n"] > 0
    meta = json.loads((tower / "region_perception.json").read_text())
    assert meta["vision_pretrained"] and meta["stage0"]["steps"] == 20
    assert (tower / "RANDOM_WEIGHTS").exists(), "only the tower is trained: the rest is still random"
    assert "stage 0" in (tower / "README.md").read_text()

    out = tmp_path / "stage1"
    s1 = train(_cfg(world, out, backend, model=str(tower), stage="region", tasks=["caption", "classify", "refer"],
                    steps=3, sizes={}))
    assert "vision" not in s1["train_groups"] and len(s1["train_groups"]) >= 2
    before, after = load_file(str(tower / "model.safetensors")), load_file(str(out / "model.safetensors"))
    prefix = {"regionvlm": "vision_model.", "florence2": "model.vision_tower.", "regiongpt": "vision_tower."}
    tower_keys = [k for k in before if k.startswith(prefix[backend])]
    assert tower_keys
    for key in tower_keys:
        torch.testing.assert_close(before[key], after[key], msg=key)  # frozen
    assert any(not torch.equal(before[k], after[k]) for k in before if k not in tower_keys and k in after)
    meta = json.loads((out / "region_perception.json").read_text())
    assert meta["refer_prompt"] is True and meta["trained"] and not (out / "RANDOM_WEIGHTS").exists()


def test_stage0_refuses_data_without_regions_and_existing_out(tmp_path, world):
    from region_perception.cli import main

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    args = ["train", "--stage", "vision", "--model", "toy-florence2", "--steps", "1", "--no-progress"]
    assert main([*args, "--data", str(world), "--out", str(existing)]) == 2
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]
    assert main([*args, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_conv_stem_is_built_saved_and_loaded_by_from_pretrained(tmp_path):
    from region_perception.models.conv_stem import ConvStem
    from region_perception.models.regionvlm_model import RegionVLMForConditionalGeneration
    from region_perception.models.toy import build_toy_regionvlm

    out = build_toy_regionvlm(tmp_path / "toy", sizes=SIZES["regionvlm"])
    config = json.loads((out / "config.json").read_text())
    assert config["vision_config"]["conv_stem"] is True
    model = RegionVLMForConditionalGeneration.from_pretrained(out)
    assert isinstance(model.vision_model.embeddings.patch_embedding, ConvStem)
    saved = load_file(str(out / "model.safetensors"))
    stem_keys = [k for k in saved if "patch_embedding.stem" in k]
    assert stem_keys
    state = model.state_dict()
    for key in stem_keys:
        torch.testing.assert_close(state[key], saved[key], msg=key)  # loaded, not re-initialised
    pixels = torch.rand(2, 3, 64, 64)
    grid = model.vision_model(pixel_values=pixels).last_hidden_state
    assert grid.shape == (2, 1 + 4 * 4, 32)
    assert not torch.allclose(grid[0], grid[1]), "the tower's output depends on the image"


def test_toy_regiongpt_clip_tower_has_the_stem_too(tmp_path):
    from region_perception.models.conv_stem import ConvStem
    from region_perception.models.regiongpt import RegionGPTForConditionalGeneration
    from region_perception.models.regiongpt.tiny import build_toy_regiongpt

    out = build_toy_regiongpt(tmp_path / "toy", sizes=SIZES["regiongpt"])
    model = RegionGPTForConditionalGeneration.from_pretrained(out)
    assert isinstance(model.model.vision_tower.embeddings.patch_embedding, ConvStem)
    saved = load_file(str(out / "model.safetensors"))
    stem_keys = [k for k in saved if "patch_embedding.stem" in k]
    state = model.state_dict()
    assert stem_keys and all(torch.equal(state["model." + k] if "model." + k in state else state[k], saved[k])
                             for k in stem_keys)
    patches, _ = model.patch_features(torch.rand(1, 3, 64, 64))
    assert patches.shape == (1, 16, 32)


def test_a_released_instructblip_config_loads_without_a_stem(tmp_path):
    from region_perception.models.regionvlm_model import RegionVLMForConditionalGeneration
    from region_perception.models.toy import build_toy_regionvlm

    out = build_toy_regionvlm(tmp_path / "plain", sizes={**SIZES["regionvlm"], "conv_stem": False})
    model = RegionVLMForConditionalGeneration.from_pretrained(out)
    assert isinstance(model.vision_model.embeddings.patch_embedding, torch.nn.Conv2d)


def test_refer_rows_use_their_own_instruction_where_the_model_was_trained_with_it(tmp_path, world):
    from region_perception.engine import EngineConfig, RegionEngine
    from region_perception.geometry.regions import BoxRegion
    from region_perception.models.backend import REFER_INSTRUCTION
    from region_perception.training.examples import region_cue
    from region_perception.training.recipes import TrainExample
    from region_perception.training.recipes.regionvlm import task_prompt

    image = np.zeros((64, 64, 3), np.uint8)
    cue = region_cue(BoxRegion(np.array([4.0, 4.0, 30.0, 30.0])), (64, 64), np.random.default_rng(0))
    refer = TrainExample(image=image, cue=cue, task="refer", target="the red circle")
    caption = TrainExample(image=image, cue=cue, task="caption", target="a small red circle")
    assert task_prompt(refer) == REFER_INSTRUCTION.format(target="this region") and task_prompt(caption) == ""

    out = tmp_path / "out"
    train(_cfg(world, out, "regionvlm", stage="region", tasks=["caption", "refer"], steps=2))
    engine = RegionEngine.load(EngineConfig(model=str(out), segmenter="none", device="cpu"))
    backend = engine.model
    assert getattr(backend, "refer_prompt", None) is True
    feats = backend.encode_image(image)
    as_refer = backend.encode_cues(feats, [cue], task="refer")[0]
    as_caption = backend.encode_cues(feats, [cue], task="caption")[0]
    assert as_refer.shape[1] > as_caption.shape[1], "the referring instruction is part of the scored row"
