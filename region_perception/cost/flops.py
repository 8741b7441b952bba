"""Exact FLOP counts of the released models' stages, built from their configs on the meta device.

No weights are needed: every module is created on ``torch.device("meta")`` and run on meta
tensors, and ``torch.utils.flop_counter.FlopCounterMode`` counts the matmuls, convolutions
and attention that the shapes imply (2 FLOPs per multiply-add). Elementwise work (norms,
activations, softmax) is not counted; it is a few percent of a transformer's FLOPs.

Stages follow the engine: the vision tower runs once per frame; region work (Q-Former rows,
LM encoder, generation or loss) per query. Generation of ``n`` tokens is counted as the
forward of the prefix plus ``n`` tokens minus the forward of the prefix (what a KV cache
saves), attention counted dense.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

META = torch.device("meta")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "data" / "model_configs"

# Sizes of one query (stated, not measured): tokens of a caption / a category / a REFER sentence
CAPTION_TOKENS = 20
CATEGORY_TOKENS = 8
SENTENCE_TOKENS = 8
PROMPT_TOKENS = 16  # task prompt words around the region
REGION_TEXT_TOKENS = 40  # RegionVLM's ten points as text, "[32 64] [36 62] ..."
REFER_PROPOSALS = 20
REFER_DRAWS = 5


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` runs (matmul, conv, attention), as FlopCounterMode counts them."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    # meta modules run under a fake-tensor mode: shapes only, and transformers skips its data-dependent checks
    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter, torch.no_grad():
        fn()
    return int(counter.get_total_flops())


def load_config(name: str) -> dict[str, Any]:
    """A bundled released config (``region_perception/data/model_configs/<name>.json``), with its ``_source``."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def param_count(module: torch.nn.Module) -> int:
    """Parameters, each shared tensor once (tied embeddings are one tensor)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


@dataclass
class Stage:
    name: str
    flops: int
    runs_per: str  # "frame" (once per camera frame, cached) or "query"
    decode_tokens: int = 0  # tokens generated one at a time (memory-bound on a GPU at batch 1)
    weight_bytes: int = 0  # fp16 weights this stage reads


@dataclass
class TaskCost:
    task: str
    stages: list[Stage] = field(default_factory=list)

    @property
    def flops(self) -> int:
        return sum(s.flops for s in self.stages)


@dataclass
class ModelCost:
    name: str
    source: str
    params: int
    tasks: list[TaskCost]
    notes: list[str] = field(default_factory=list)

    @property
    def fp16_bytes(self) -> int:
        return 2 * self.params


def _meta(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(*shape, device=META, dtype=dtype)


def _ids(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, device=META, dtype=torch.long)


def _decode(forward: Callable[[int], Any], prefix: int, new: int) -> int:
    """FLOPs of ``new`` tokens after a cached ``prefix``: forward(prefix + new) - forward(prefix).

    ``forward(n)`` runs the body over n tokens (no output head: add it for the scored tokens).
    """
    return count_flops(lambda: forward(prefix + new)) - (count_flops(lambda: forward(prefix)) if prefix else 0)


def _head(head: torch.nn.Module, rows: int, tokens: int, width: int) -> int:
    """The vocabulary projection of ``tokens`` positions per row (generated or scored ones only)."""
    return count_flops(lambda: head(_meta(rows, tokens, width)))


# -- RegionVLM: BLIP-2 FlanT5-XL whose Q-Former reads the region text ----------------------------------


def regionvlm_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """RegionVLM's architecture (InstructBLIP layout: a Q-Former that reads text) from a BLIP-2 config, on meta."""
    from transformers import InstructBlipConfig, InstructBlipForConditionalGeneration

    config = InstructBlipConfig(
        vision_config=cfg["vision_config"],
        qformer_config=cfg["qformer_config"],
        text_config=cfg["text_config"],
        num_query_tokens=cfg["num_query_tokens"],
    )
    with META:
        model = InstructBlipForConditionalGeneration(config)
        untie_t5_head(model.language_model, cfg["text_config"])
    return model


def untie_t5_head(lm: torch.nn.Module, text_config: dict[str, Any]) -> None:
    """Give the T5 LM its own output head when the released config says the head is not tied.

    Why: transformers 5 always builds T5 with ``lm_head`` tied to ``shared`` (it only unties
    while loading a checkpoint that holds both, as FlanT5's does), so a model built from the
    config alone would miss FlanT5-XL's separate 32128 x 2048 head in the parameter count.
    """
    head, shared = getattr(lm, "lm_head", None), getattr(lm, "shared", None)
    if text_config.get("tie_word_embeddings", True) or head is None or head.weight is not shared.weight:
        return
    head.weight = torch.nn.Parameter(torch.empty_like(shared.weight, device=META))


def regionvlm_cost(cfg: dict[str, Any] | None = None) -> ModelCost:
    cfg = cfg or load_config("blip2-flan-t5-xl")
    model = regionvlm_model(cfg)
    v, q = cfg["vision_config"], cfg["num_query_tokens"]
    patches = (v["image_size"] // v["patch_size"]) ** 2 + 1
    d_model = cfg["text_config"]["d_model"]
    lm = model.language_model
    image = _meta(1, patches, v["hidden_size"])

    def vision():
        model.vision_model(pixel_values=_meta(1, 3, v["image_size"], v["image_size"]))

    def qformer(rows: int) -> int:
        def run():
            out = model.qformer(
                input_ids=_ids(rows, REGION_TEXT_TOKENS),
                attention_mask=torch.ones(rows, q + REGION_TEXT_TOKENS, device=META, dtype=torch.long),
                query_embeds=model.query_tokens.expand(rows, -1, -1),
                encoder_hidden_states=image,  # batch 1: the image's keys/values once, as the engine runs it
                return_dict=True,
            )
            model.language_projection(out.last_hidden_state[:, :q])

        return count_flops(run)

    def encoder(rows: int, tokens: int) -> int:
        return count_flops(lambda: lm.get_encoder()(inputs_embeds=_meta(rows, tokens, d_model)))

    def decoder(rows: int, enc_tokens: int) -> Callable[[int], Any]:
        def forward(n: int):
            lm.get_decoder()(input_ids=_ids(rows, n), encoder_hidden_states=_meta(rows, enc_tokens, d_model))

        return forward

    prompt = q + PROMPT_TOKENS
    lm_bytes = 2 * param_count(lm)
    vis = Stage("vision (EVA ViT-g)", count_flops(vision), "frame", weight_bytes=2 * param_count(model.vision_model))
    qf_bytes = 2 * (param_count(model.qformer) + param_count(model.language_projection))
    tasks = []
    for task, tokens in (("caption", CAPTION_TOKENS), ("classify", CATEGORY_TOKENS)):
        dec = _decode(decoder(1, prompt), 0, tokens) + _head(lm.lm_head, 1, tokens, d_model)
        tasks.append(
            TaskCost(
                task,
                [
                    vis,
                    Stage("Q-Former (1 region)", qformer(1), "query", weight_bytes=qf_bytes),
                    Stage("FlanT5 encoder", encoder(1, prompt), "query", weight_bytes=lm_bytes // 2),
                    Stage(f"FlanT5 decoder ({tokens} tokens)", dec, "query", tokens, lm_bytes // 2),
                ],
            )
        )
    rows = REFER_PROPOSALS * REFER_DRAWS
    loss = _decode(decoder(rows, q + 1), 0, SENTENCE_TOKENS) + _head(lm.lm_head, rows, SENTENCE_TOKENS, d_model)
    tasks.append(
        TaskCost(
            "refer",
            [
                vis,
                Stage(f"Q-Former ({rows} rows)", qformer(rows), "query", weight_bytes=qf_bytes),
                Stage(f"FlanT5 encoder ({rows} rows)", encoder(rows, q + 1), "query", weight_bytes=lm_bytes // 2),
                Stage(f"FlanT5 decoder loss ({rows} rows)", loss, "query", weight_bytes=lm_bytes // 2),
            ],
        )
    )
    return ModelCost(
        "RegionVLM (BLIP-2 FlanT5-XL)",
        cfg["_source"],
        param_count(model),
        tasks,
        [f"REFER: {REFER_PROPOSALS} proposals x {REFER_DRAWS} point draws = {rows} rows, sentence-independent rows"],
    )


# -- Florence-2: DaViT + BART-style encoder-decoder, the region as location tokens ----------------------


def florence2_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """Florence-2 from its released (remote-code) config, as transformers' native class, on meta."""
    from transformers import Florence2Config, Florence2ForConditionalGeneration

    vc = dict(cfg["vision_config"])
    vision_config = {
        "model_type": "florence_vision",
        "embed_dim": vc["dim_embed"],
        "num_heads": vc["num_heads"],
        "num_groups": vc["num_groups"],
        "depths": vc["depths"],
        "patch_size": vc["patch_size"],
        "patch_stride": vc["patch_stride"],
        "patch_padding": vc["patch_padding"],
        "patch_prenorm": vc["patch_prenorm"],
        "window_size": vc["window_size"],
        "projection_dim": vc["projection_dim"],
    }
    text_config = {"model_type": "bart", **cfg["text_config"]}
    config = Florence2Config(vision_config=vision_config, text_config=text_config)
    with META:
        return Florence2ForConditionalGeneration(config)


def florence2_cost(name: str = "florence-2-base", cfg: dict[str, Any] | None = None) -> ModelCost:
    cfg = cfg or load_config(name)
    model = florence2_model(cfg)
    size = cfg["image_size"]
    d_model = cfg["text_config"]["d_model"]
    image_tokens = (size // 32) ** 2 + 1  # the last stage's grid plus the pooled token
    lm = model.model.language_model

    def vision():
        model.get_image_features(pixel_values=_meta(1, 3, size, size))

    def encoder(rows: int, tokens: int) -> int:
        return count_flops(lambda: lm.encoder(inputs_embeds=_meta(rows, tokens, d_model)))

    def decoder(rows: int, enc_tokens: int) -> Callable[[int], Any]:
        def forward(n: int):
            lm.decoder(input_ids=_ids(rows, n), encoder_hidden_states=_meta(rows, enc_tokens, d_model))

        return forward

    prompt = image_tokens + PROMPT_TOKENS
    enc_bytes, dec_bytes = 2 * param_count(lm.encoder), 2 * param_count(lm.decoder)
    vision_params = param_count(model.model.vision_tower) + param_count(model.model.multi_modal_projector)
    vis = Stage("vision (DaViT + projector)", count_flops(vision), "frame", weight_bytes=2 * vision_params)
    tasks = []
    for task, tokens in (("caption", CAPTION_TOKENS), ("classify", CATEGORY_TOKENS)):
        dec = _decode(decoder(1, prompt), 0, tokens) + _head(model.lm_head, 1, tokens, d_model)
        tasks.append(
            TaskCost(
                task,
                [
                    vis,
                    Stage("encoder (image + prompt)", encoder(1, prompt), "query", weight_bytes=enc_bytes),
                    Stage(f"decoder ({tokens} tokens)", dec, "query", tokens, dec_bytes),
                ],
            )
        )
    rows = REFER_PROPOSALS  # a box is deterministic: one draw per proposal
    loss = _decode(decoder(rows, prompt), 0, SENTENCE_TOKENS) + _head(model.lm_head, rows, SENTENCE_TOKENS, d_model)
    tasks.append(
        TaskCost(
            "refer",
            [
                vis,
                Stage(f"encoder ({rows} rows)", encoder(rows, prompt), "query", weight_bytes=enc_bytes),
                Stage(f"decoder loss ({rows} rows)", loss, "query", weight_bytes=dec_bytes),
            ],
        )
    )
    return ModelCost(
        name.replace("florence", "Florence"),
        cfg["_source"],
        param_count(model),
        tasks,
        [f"REFER: {REFER_PROPOSALS} proposals x 1 box each (no point draws); the encoder reads the image per row"],
    )


# -- RegionGPT: LLaVA-1.5-7B + two stride-2 deconvolutions and mask pooling ---------------------------------


def llava_model(cfg: dict[str, Any]) -> torch.nn.Module:
    """LLaVA-1.5 from its released config, on meta."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    config = LlavaConfig(
        vision_config=cfg["vision_config"],
        text_config=cfg["text_config"],
        vision_feature_layer=cfg["vision_feature_layer"],
        vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
        projector_hidden_act=cfg["projector_hidden_act"],
    )
    with META:
        return LlavaForConditionalGeneration(config)


def regiongpt_cost(cfg: dict[str, Any] | None = None) -> ModelCost:
    cfg = cfg or load_config("llava-1.5-7b-hf")
    model = llava_model(cfg)
    width = cfg["vision_config"]["hidden_size"]
    with META:
        refine = torch.nn.Sequential(  # RegionGPT's feature refinement: 4x finer map
            torch.nn.ConvTranspose2d(width, width, 2, stride=2),
            torch.nn.GELU(),
            torch.nn.ConvTranspose2d(width, width, 2, stride=2),
        )
    v = cfg["vision_config"]
    grid = v["image_size"] // v["patch_size"]
    image_tokens = grid * grid
    hidden = cfg["text_config"]["hidden_size"]
    tower, projector, lm = model.model.vision_tower, model.model.multi_modal_projector, model.model.language_model

    def vision():
        tower(pixel_values=_meta(1, 3, v["image_size"], v["image_size"]))
        projector(_meta(1, image_tokens, width))
        refine(_meta(1, width, grid, grid))

    def llm(rows: int) -> Callable[[int], Any]:
        def forward(n: int):
            lm(inputs_embeds=_meta(rows, n, hidden), use_cache=False)

        return forward

    lm_bytes = 2 * (param_count(lm) + param_count(model.lm_head))
    vision_bytes = 2 * (param_count(tower) + param_count(projector) + param_count(refine))
    vis = Stage("vision (CLIP ViT-L/336 + 2 deconv + MLP)", count_flops(vision), "frame", weight_bytes=vision_bytes)
    prefix = image_tokens + PROMPT_TOKENS + 1  # image, task-guided prompt, one <region> feature

    def decode(tokens: int) -> int:  # the first token comes with the prefill
        return _decode(llm(1), prefix, tokens - 1) + _head(model.lm_head, 1, tokens - 1, hidden)

    tasks = []
    for task, tokens in (("caption", CAPTION_TOKENS), ("classify", CATEGORY_TOKENS)):
        prefill = count_flops(lambda: llm(1)(prefix)) + _head(model.lm_head, 1, 1, hidden)  # first token
        tasks.append(
            TaskCost(
                task,
                [
                    vis,
                    Stage(f"LLM prefill ({prefix} tokens)", prefill, "query", weight_bytes=lm_bytes),
                    Stage(f"LLM decode ({tokens} tokens)", decode(tokens), "query", tokens, lm_bytes),
                ],
            )
        )
    rows = REFER_PROPOSALS  # a mask-pooled region: no point draws
    shared = image_tokens + PROMPT_TOKENS
    suffix = 1 + SENTENCE_TOKENS
    per_row = _decode(llm(rows), shared, suffix) + _head(model.lm_head, rows, SENTENCE_TOKENS, hidden)
    tasks.append(
        TaskCost(
            "refer",
            [
                vis,
                Stage(
                    f"LLM prefill, shared image prefix ({shared} tokens)",
                    count_flops(lambda: llm(1)(shared)),
                    "query",
                    weight_bytes=lm_bytes,
                ),
                Stage(f"LLM sentence loss ({rows} rows x {suffix} tokens)", per_row, "query", weight_bytes=lm_bytes),
            ],
        )
    )
    return ModelCost(
        "RegionGPT (LLaVA-1.5-7B)",
        cfg["_source"],
        param_count(model) + param_count(refine),
        tasks,
        [
            "refinement: two ConvTranspose2d(1024, 1024, 2, stride 2) as the paper describes (widths assumed)",
            f"REFER: {REFER_PROPOSALS} mask-pooled proposals scored after one shared image prefix (KV cache)",
        ],
    )
