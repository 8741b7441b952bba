"""The RegionVLM (LAVIS) checkpoint converter, on a tiny LAVIS-shaped state dict."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import AutoProcessor, InstructBlipForConditionalGeneration

from region_perception.models.convert_regionvlm import UnsafeCheckpointError, convert, load_checkpoint
from region_perception.models.loading import tiny_path


def lavis_name(hf_key: str) -> str | None:
    """How LAVIS's blip2_t5 names a parameter (None: LAVIS stores it differently)."""
    rules = [
        (r"^vision_model\.embeddings\.class_embedding$", "visual_encoder.cls_token"),
        (r"^vision_model\.embeddings\.position_embedding$", "visual_encoder.pos_embed"),
        (r"^vision_model\.embeddings\.patch_embedding\.", "visual_encoder.patch_embed.proj."),
        (r"^vision_model\.post_layernorm\.", "ln_vision."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.layer_norm(\d)\.", r"visual_encoder.blocks.\1.norm\2."),
        (r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.projection\.", r"visual_encoder.blocks.\1.attn.proj."),
        (
            r"^vision_model\.encoder\.layers\.(\d+)\.self_attn\.qkv\.weight$",
            r"visual_encoder.blocks.\1.attn.qkv.weight",
        ),
        (r"^vision_model\.encoder\.layers\.(\d+)\.mlp\.", r"visual_encoder.blocks.\1.mlp."),
        (r"^qformer\.embeddings\.layernorm\.", "Qformer.bert.embeddings.LayerNorm."),
        (r"^qformer\.embeddings\.", "Qformer.bert.embeddings."),
        (r"^qformer\.encoder\.", "Qformer.bert.encoder."),
        (r"\.attention\.attention\.", ".attention.self."),
        (r"\.crossattention\.attention\.", ".crossattention.self."),
        (r"^language_projection\.", "t5_proj."),
        (r"^language_model\.", "t5_model."),
    ]
    if re.search(r"self_attn\.qkv\.bias$", hf_key):
        return None
    name = hf_key
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


@pytest.fixture(scope="module")
def source():
    path = tiny_path("tiny-regionvlm")
    return InstructBlipForConditionalGeneration.from_pretrained(path), AutoProcessor.from_pretrained(path)


def _lavis_state(model) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        name = lavis_name(key)
        if name is None:  # EVA ViT: separate q and v biases, no k bias
            layer = re.search(r"layers\.(\d+)\.", key).group(1)
            q, _, v = value.chunk(3)
            state[f"visual_encoder.blocks.{layer}.attn.q_bias"] = q.clone()
            state[f"visual_encoder.blocks.{layer}.attn.v_bias"] = v.clone()
        else:
            state[name] = value.clone()
    state["Qformer.cls.predictions.bias"] = torch.zeros(3)  # LAVIS keeps an MLM head; it is dropped
    return state


def _fresh_base(model):
    torch.manual_seed(99)
    return InstructBlipForConditionalGeneration(model.config).eval()


def test_full_checkpoint_maps_every_tensor(tmp_path, source):
    model, processor = source
    # zero the k bias so the [q, 0, v] rebuild is exact
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.bias"):
                p[p.shape[0] // 3 : 2 * p.shape[0] // 3] = 0
    ckpt = tmp_path / "regionvlm.pth"
    torch.save({"model": _lavis_state(model)}, ckpt)
    report = convert(ckpt, tmp_path / "out", base_model=_fresh_base(model), base_processor=processor)
    assert report["unused_checkpoint_keys"] == [] and report["from_base"] == 0
    converted = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "out")
    want = model.state_dict()
    for key, value in converted.state_dict().items():
        torch.testing.assert_close(value, want[key], msg=key)
    assert (tmp_path / "out" / "region_perception.json").exists()


def test_partial_checkpoint_takes_the_rest_from_the_base(tmp_path, source):
    model, processor = source
    state = {k: v for k, v in _lavis_state(model).items() if k.startswith(("Qformer.", "query_tokens", "t5_proj."))}
    ckpt = tmp_path / "trained_only.pth"
    torch.save({"model": state}, ckpt)
    base = _fresh_base(model)
    base_vision = base.vision_model.embeddings.patch_embedding.weight.clone()
    report = convert(ckpt, tmp_path / "out", base_model=base, base_processor=processor)
    assert report["from_base"] > 0
    converted = InstructBlipForConditionalGeneration.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(converted.query_tokens, model.query_tokens)
    torch.testing.assert_close(converted.vision_model.embeddings.patch_embedding.weight, base_vision)


class _Evil:
    def __reduce__(self):
        return (print, ("this ran from a pickle",))


def test_pickled_code_is_refused_unless_allowed(tmp_path):
    ckpt = tmp_path / "evil.pth"
    torch.save({"model": {"query_tokens": torch.zeros(1)}, "config": _Evil()}, ckpt)
    with pytest.raises(UnsafeCheckpointError, match="--allow-pickle"):
        load_checkpoint(ckpt)
    assert "query_tokens" in load_checkpoint(ckpt, allow_pickle=True)
