"""Florence-2's recipe: ``<REGION_TO_DESCRIPTION>`` / ``<REGION_TO_CATEGORY>`` with the box as location tokens.

The processor builds the prompts exactly as at inference (the task token becomes its sentence, the box
Florence-2's own quantized ``<loc_*>`` tokens); the target is the caption, the category name, or a
referring sentence after the referring instruction (how REFER's proposal route then ranks regions).
By default the vision tower stays frozen; the projector and the language model learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from ...models.florence2 import box_to_location_tokens, refer_prompt
from . import RecipeBase, TrainExample, image_features, register, row_token_losses, unique_images


def task_prompt(processor, example: TrainExample) -> str:
    """The engine's task prompt for this row: the task token and the region's box."""
    h, w = example.image.shape[:2]
    x0, y0, x1, y1 = example.cue.box_norm
    box = box_to_location_tokens(processor, (x0 * w, y0 * h, x1 * w, y1 * h), (h, w))
    if example.task == "refer":  # its own instruction: a description stays a description
        return refer_prompt(box)
    task = "<REGION_TO_CATEGORY>" if example.task == "classify" else "<REGION_TO_DESCRIPTION>"
    return task + box


class Florence2Recipe(RecipeBase):
    backend = "florence2"
    default_train = ("projector", "lm")
    pad_square = False  # Florence-2's processor resizes to a square
    # "lm" is BART whole; "encoder" / "decoder" split it (the word embeddings, shared by both and tied to the LM
    # head, go with the decoder): ``--train decoder`` keeps an encoder that already reads the box as it is
    groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision": ("model.vision_tower.",),
        "projector": ("model.multi_modal_projector.",),
        "encoder": ("model.language_model.encoder.",),
        "decoder": ("model.language_model.", "lm_head."),
    }

    def parameter_groups(self, model) -> dict[str, list[str]]:
        groups = super().parameter_groups(model)
        groups["lm"] = groups["encoder"] + groups["decoder"]
        return groups

    def model_class(self) -> type:
        from transformers import Florence2ForConditionalGeneration

        return Florence2ForConditionalGeneration

    def build_batch(self, model, processor, examples: Sequence[TrainExample], pixels: bool = True) -> dict:
        """Each distinct image once (``image_index`` maps rows to them); prompts as the engine writes them."""
        image_index, images = unique_images(examples)
        tok = processor.tokenizer
        words = processor._construct_prompts([task_prompt(processor, e) for e in examples])
        texts = [tok.image_token * processor.num_image_tokens + tok.bos_token + w + tok.eos_token for w in words]
        enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
        target = tok([e.target for e in examples], padding=True, return_tensors="pt")
        batch = {
            "input_ids": enc.input_ids,
            "attention_mask": enc.attention_mask,
            "image_index": image_index,
            "labels": target.input_ids.masked_fill(target.attention_mask == 0, -100),
        }
        if pixels:
            batch["pixel_values"] = self.vision_pixels(processor, images)
        return batch

    def row_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tower once per distinct image (or its cached output), the projector, then the usual
        encoder-decoder loss."""
        embeds = model.get_input_embeddings()(batch["input_ids"])
        # what get_image_features does, split so that the tower's part can come from the trainer's cache
        feats = model.model.multi_modal_projector(image_features(self, model, batch))[batch["image_index"]]
        slots = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, feats.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], labels=batch["labels"],
                    return_dict=True)
        return row_token_losses(out.logits, batch["labels"])

    def vision_pixels(self, processor, images) -> torch.Tensor:
        return processor.image_processor(images=list(images), return_tensors="pt").pixel_values

    def tower_features(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """DaViT's last stage (B, C, G, G), what the projector turns into image tokens."""
        return model.model.vision_tower(pixel_values).last_hidden_state

    def vision_grid(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """The tower's output is already the grid the region pathway reads."""
        return self.tower_features(model, pixel_values)


register("florence2", Florence2Recipe)
