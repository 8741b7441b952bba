"""Map the released RegionVLM checkpoint (a LAVIS ``.pth``) onto transformers' InstructBLIP.

RegionVLM is LAVIS's BLIP-2 FlanT5-XL whose Q-Former keeps its text input (like
InstructBLIP). LAVIS names its parts ``visual_encoder``, ``ln_vision``, ``Qformer.bert``,
``query_tokens``, ``t5_proj`` and ``t5_model``; transformers names them ``vision_model``,
``qformer``, ``language_projection`` and ``language_model``. LAVIS checkpoints often hold
only the trained parameters (Q-Former, query tokens, projection), so the rest comes from
a base model with the same architecture (``Salesforce/instructblip-flan-t5-xl``).

The checkpoint is loaded with ``torch.load(weights_only=True)``: a checkpoint that needs
arbitrary pickled objects is refused unless the caller explicitly allows it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

DEFAULT_BASE = "Salesforce/instructblip-flan-t5-xl"

# (LAVIS pattern, transformers replacement), applied in order to each key
_RENAMES: list[tuple[str, str]] = [
    (r"^visual_encoder\.cls_token$", "vision_model.embeddings.class_embedding"),
    (r"^visual_encoder\.pos_embed$", "vision_model.embeddings.position_embedding"),
    (r"^visual_encoder\.patch_embed\.proj\.", "vision_model.embeddings.patch_embedding."),
    (r"^ln_vision\.", "vision_model.post_layernorm."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm1\.", r"vision_model.encoder.layers.\1.layer_norm1."),
    (r"^visual_encoder\.blocks\.(\d+)\.norm2\.", r"vision_model.encoder.layers.\1.layer_norm2."),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.qkv\.weight$", r"vision_model.encoder.layers.\1.self_attn.qkv.weight"),
    (r"^visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision_model.encoder.layers.\1.self_attn.projection."),
    (r"^visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision_model.encoder.layers.\1.mlp."),
    (r"^Qformer\.bert\.embeddings\.LayerNorm\.", "qformer.embeddings.layernorm."),
    (r"^Qformer\.bert\.embeddings\.", "qformer.embeddings."),
    (r"^Qformer\.bert\.encoder\.", "qformer.encoder."),
    (r"\.attention\.self\.", ".attention.attention."),
    (r"\.crossattention\.self\.", ".crossattention.attention."),
    (r"^t5_proj\.", "language_projection."),
    (r"^t5_model\.", "language_model."),
]
_DROP = [r"^Qformer\.cls\.", r"position_ids$", r"^visual_encoder\.blocks\.\d+\.attn\.(q|v)_bias$"]


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint needs pickled Python objects to load."""


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The state dict of a LAVIS checkpoint (``{"model": {...}}`` or a bare state dict)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError for disallowed globals
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"{path}: loading needs pickled Python objects ({str(exc).splitlines()[0]}). Pickles can run "
                "code; pass --allow-pickle only if you trust where this file came from."
            ) from None
        obj = torch.load(path, map_location="cpu", weights_only=False)
    state = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: no state dict of tensors found (keys: {list(obj)[:8]})")
    return state


def map_lavis_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename LAVIS keys to transformers' InstructBLIP keys.

    The EVA ViT keeps separate q and v biases (k has none); transformers keeps one qkv bias,
    so it is rebuilt as ``[q_bias, 0, v_bias]``. Returns (mapped, keys that were not used).
    """
    mapped: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    for key, value in state.items():
        if any(re.search(p, key) for p in _DROP):
            continue
        new = key
        for pattern, repl in _RENAMES:
            new = re.sub(pattern, repl, new)
        if new == key and not key.startswith("query_tokens"):
            unused.append(key)
            continue
        mapped[new] = value
    for key in state:
        m = re.match(r"^visual_encoder\.blocks\.(\d+)\.attn\.q_bias$", key)
        if m:
            q = state[key]
            v = state[f"visual_encoder.blocks.{m.group(1)}.attn.v_bias"]
            mapped[f"vision_model.encoder.layers.{m.group(1)}.self_attn.qkv.bias"] = torch.cat(
                [q, torch.zeros_like(v), v]
            )
    return mapped, unused


def convert(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    base: str = DEFAULT_BASE,
    allow_pickle: bool = False,
    base_model=None,
    base_processor=None,
) -> dict[str, object]:
    """Write an InstructBLIP directory with RegionVLM's weights; returns a report."""
    from transformers import AutoProcessor, InstructBlipForConditionalGeneration

    mapped, unused = map_lavis_state_dict(load_checkpoint(checkpoint, allow_pickle))
    model = base_model or InstructBlipForConditionalGeneration.from_pretrained(base)
    processor = base_processor or AutoProcessor.from_pretrained(base)
    own = model.state_dict()
    wrong_shape = [k for k, v in mapped.items() if k in own and own[k].shape != v.shape]
    if wrong_shape:
        k = wrong_shape[0]
        raise ValueError(
            f"{len(wrong_shape)} tensors do not fit the base model, e.g. {k}: "
            f"checkpoint {tuple(mapped[k].shape)} vs base {tuple(own[k].shape)}"
        )
    unknown = sorted(k for k in mapped if k not in own)
    # The Q-Former's text embeddings may be resized in LAVIS (tokenizer + special tokens)
    missing, _ = model.load_state_dict({k: v for k, v in mapped.items() if k in own}, strict=False)
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    (out / "region_perception.json").write_text(
        json.dumps({"regionvlm_points": True, "converted_from": str(checkpoint), "base": base})
    )
    return {
        "from_checkpoint": len(mapped) - len(unknown),
        "from_base": len(missing),
        "unused_checkpoint_keys": unused + unknown,
        "out_dir": str(out),
    }
