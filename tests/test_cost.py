"""`region-perception cost`: exact FLOP counts on the meta device, from the released models' configs."""

from __future__ import annotations

import json

import pytest
import torch

from region_perception.cost.flops import (
    CONFIG_DIR,
    META,
    Stage,
    count_flops,
    florence2_model,
    llava_model,
    load_config,
    param_count,
    regionvlm_model,
)
from region_perception.cost.report import DEVICES, stage_ms


def test_counter_equals_a_hand_count_of_an_mlp():
    with META:
        mlp = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    rows = 3
    assert count_flops(lambda: mlp(torch.empty(rows, 8, device=META))) == 2 * rows * (8 * 16 + 16 * 4)


def test_counter_equals_a_hand_count_of_a_tiny_decoder_layer():
    """One Llama layer: q, k, v, o and the gated MLP's three matmuls per token, plus dense attention."""
    from transformers import LlamaConfig, LlamaModel

    h, inter, heads, tokens, rows = 16, 24, 2, 5, 2
    config = LlamaConfig(
        hidden_size=h, intermediate_size=inter, num_hidden_layers=1, num_attention_heads=heads, vocab_size=32
    )
    with META:
        model = LlamaModel(config)
    counted = count_flops(lambda: model(inputs_embeds=torch.empty(rows, tokens, h, device=META), use_cache=False))
    linear = 2 * rows * tokens * (4 * h * h + 3 * h * inter)
    attention = 2 * 2 * rows * tokens * tokens * h  # QK^T and AV, every head's width summed to h
    assert counted == linear + attention


@pytest.mark.parametrize(
    ("name", "build", "published_b"),
    [
        ("florence-2-base", florence2_model, 0.23),  # "0.23B" (model card)
        ("florence-2-large", florence2_model, 0.77),  # "0.77B"
        ("llava-1.5-7b-hf", llava_model, 7.06),  # 7.06 B parameters (llava-hf model card)
    ],
)
def test_bundled_configs_build_the_released_model_sizes(name, build, published_b):
    cfg = load_config(name)
    assert cfg["_source"], "every bundled config names its source"
    params = param_count(build(cfg)) / 1e9
    assert params == pytest.approx(published_b, rel=0.01), f"{name}: {params:.3f} B parameters"


def test_regionvlm_config_is_blip2_flan_t5_xl():
    cfg = load_config("blip2-flan-t5-xl")
    t5, vit = cfg["text_config"], cfg["vision_config"]
    assert (t5["d_model"], t5["d_ff"], t5["num_layers"], t5["num_heads"], t5["vocab_size"]) == (
        2048,
        5120,
        24,
        32,
        32128,
    )
    assert (vit["hidden_size"], vit["num_hidden_layers"], vit["image_size"]) == (1408, 39, 224)  # EVA ViT-g/14
    model = regionvlm_model(cfg)
    # flan-t5-xl is 2.85 B with its own (untied) 32128 x 2048 output head
    assert param_count(model.language_model) / 1e9 == pytest.approx(2.85, rel=0.005)
    assert model.language_model.lm_head.weight is not model.language_model.shared.weight
    # the same config in BLIP-2's own layout is the released 3.94 B (model card)
    from transformers import Blip2Config, Blip2ForConditionalGeneration

    from region_perception.cost.flops import untie_t5_head

    blip2_config = Blip2Config(
        vision_config=vit, qformer_config=cfg["qformer_config"], text_config=t5, num_query_tokens=32
    )
    with META:
        blip2 = Blip2ForConditionalGeneration(blip2_config)
        untie_t5_head(blip2.language_model, t5)
    assert param_count(blip2) / 1e9 == pytest.approx(3.94, rel=0.005)
    # RegionVLM's Q-Former also reads the region text: word/position embeddings and the text-side FFNs
    text_path = param_count(model.qformer) - param_count(blip2.qformer)
    words = cfg["qformer_config"]["vocab_size"] + cfg["qformer_config"]["max_position_embeddings"]
    text_ffn = cfg["qformer_config"]["num_hidden_layers"] * 2 * 768 * 3072
    assert words * 768 + text_ffn <= text_path <= words * 768 + text_ffn + 10**6  # + their biases and norms
    assert param_count(model) == param_count(blip2) + text_path


def test_every_bundled_config_is_small_json_with_a_source():
    files = sorted(CONFIG_DIR.glob("*.json"))
    assert {f.stem for f in files} >= {"florence-2-base", "florence-2-large", "blip2-flan-t5-xl", "llava-1.5-7b-hf"}
    for f in files:
        assert f.stat().st_size < 8000 and json.loads(f.read_text())["_source"]


def test_latency_estimate_is_the_slower_of_compute_and_weight_reads():
    gpu = DEVICES[0]
    compute_bound = Stage("prefill", int(2e12), "query", weight_bytes=10**6)
    decode = Stage("decode", int(1e9), "query", decode_tokens=20, weight_bytes=10**9)
    assert stage_ms(compute_bound, gpu) > stage_ms(Stage("x", int(1e12), "query"), gpu)
    # 20 tokens, each reading 1 GB of weights, dominate its 1 GFLOP
    assert stage_ms(decode, gpu) == pytest.approx(20 * 1e9 / (gpu.bandwidth_gbs * 1e9 * 0.7) * 1000)
