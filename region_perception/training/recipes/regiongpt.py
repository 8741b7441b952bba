"""RegionGPT's recipe: the engine's task-guided prompts, the region as a mask pooled into ``<region>``.

The paper trains in two stages: stage 1 the refinement and the projector (vision tower and LLM
frozen, lr 1e-3, cosine, 3 % warm-up), stage 2 also the LLM (lr 2e-5). ``default_train`` is
stage 1; :data:`STAGES` has both for the trainer's ``--train``/``--lr``. Each row's prompt is the
one the engine sends (caption, the classification prompt with its labels hint, the referring
instruction for a referring sentence: how REFER's proposal route then scores it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from ...models.backend import labels_hint
from ...models.regiongpt import processing_regiongpt as prompts
from ...models.regiongpt.backend import cue_mask
from . import (
    RecipeBase,
    TrainExample,
    distinct_images,
    image_features,
    register,
    row_token_losses,
    tokens_to_grid,
)

# stage: (groups trained, learning rate); both with a cosine schedule and 3 % warm-up
STAGES: dict[str, tuple[tuple[str, ...], float]] = {
    "1": (("refiner", "projector"), 1e-3),
    "2": (("refiner", "projector", "lm"), 2e-5),
}


def task_prompt(example: TrainExample, image_tokens: int) -> str:
    """The engine's prompt for this row's task (one region)."""
    if example.task == "classify":
        return prompts.classify_prompt(image_tokens, labels_hint(list(example.labels)))
    if example.task == "refer":  # its own instruction: a caption stays a caption
        return prompts.refer_prompt(image_tokens)
    return prompts.caption_prompt(image_tokens)


def image_token_count(config) -> int:
    vision = config.vision_config
    grid = vision.image_size // vision.patch_size
    return grid * grid + (1 if config.vision_feature_select_strategy == "full" else 0)


class RegionGPTRecipe(RecipeBase):
    backend = "regiongpt"
    default_train = STAGES["1"][0]
    stages = STAGES
    pad_square = True  # LLaVA-1.5 pads to a centred square before resizing
    groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision": ("model.vision_tower.",),
        "refiner": ("refiner.",),
        "projector": ("model.multi_modal_projector.",),
        "lm": ("model.language_model.", "lm_head."),
    }

    def model_class(self) -> type:
        from ...models.regiongpt import RegionGPTForConditionalGeneration

        return RegionGPTForConditionalGeneration

    def prepare(self, model, processor) -> None:
        """A LLaVA checkpoint gets the ``<region>`` token, as the engine's loader gives it."""
        prompts.ensure_region_token(model, processor)

    def build_batch(self, model, processor, examples: Sequence[TrainExample], pixels: bool = True) -> dict:
        """Each distinct image once (``image_index`` maps rows to them), padded square; each row's region mask
        at the processor's size; prompt + target + </s>."""
        tok = processor.tokenizer
        image_index, images, _ = distinct_images(examples)
        side = model.config.vision_config.image_size  # the tower's input side: what the processor gives
        masks = [torch.from_numpy(prompts.pad_mask(cue_mask(e.cue, e.image.shape[:2])))[None, None] for e in examples]
        region_masks = torch.cat([F.interpolate(m, size=(side, side), mode="area") for m in masks])  # (B, 1, S, S)
        n_image = image_token_count(model.config)
        rows, labels = [], []
        for e in examples:
            prompt = tok(task_prompt(e, n_image)).input_ids
            answer = [*tok(" " + e.target.strip(), add_special_tokens=False).input_ids, tok.eos_token_id]
            rows.append(prompt + answer)
            labels.append([-100] * len(prompt) + answer)
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, lab) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
            label_ids[i, : len(r)] = torch.tensor(lab)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "image_index": image_index,
            "region_masks": region_masks,
            "labels": label_ids,
        }
        if pixels:
            batch["pixel_values"] = self.vision_pixels(processor, images)
        return batch

    def row_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's forward split into its stages, so each distinct image is encoded and refined once
        (its tower output possibly from the trainer's cache) and each row pools its region from its image."""
        hidden = image_features(self, model, batch)
        patches = hidden[:, 1:]
        cls = hidden[:, :1] if model.config.vision_feature_select_strategy == "full" else None
        refined = model.refine(patches)
        index = batch["image_index"]
        images = model.image_tokens(refined, cls)[index]
        pooled = [model.region_tokens(refined[i], m)
                  for i, m in zip(index.tolist(), batch["region_masks"], strict=True) if len(m)]
        regions = torch.cat(pooled) if pooled else None
        embeds = model.embed(batch["input_ids"], images, regions)
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"])
        return row_token_losses(out.logits, batch["labels"], causal=True)

    def tower_features(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's layer that RegionGPT refines and pools (``vision_feature_layer``), CLS first: (B, 1 + g*g, C);
        ``loss`` drops the CLS as ``patch_features`` does unless the config keeps it."""
        layer = model.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("RegionGPT refines one vision feature layer; this config selects several")
        out = model.model.vision_tower(pixel_values.to(model.dtype), output_hidden_states=True, return_dict=True)
        return out.hidden_states[layer]

    def vision_pixels(self, processor, images) -> torch.Tensor:
        """Each image padded to a centred square with the mean colour, as the engine does, then processed."""
        ip = processor.image_processor
        fill = [int(round(255 * v)) for v in (getattr(ip, "image_mean", None) or [0.5, 0.5, 0.5])]
        return ip(images=[prompts.pad_image(im, fill) for im in images], return_tensors="pt").pixel_values

    def vision_grid(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's layer that RegionGPT refines and pools (``vision_feature_layer``) as a grid."""
        patches, _ = model.patch_features(pixel_values)
        return tokens_to_grid(patches)

    def save(self, model, processor, out: Path) -> None:
        out = Path(out)
        super().save(model, processor, out)
        meta = {"backend": "regiongpt", "refinement_trained": True}
        (out / "region_perception.json").write_text(json.dumps(meta))


register("regiongpt", RegionGPTRecipe)
