"""RegionVLM's recipe: the region's points as Q-Former text, the target as the T5 answer.

As the released LAVIS code: the vision tower and language model stay frozen by default, the Q-Former
(with its text embeddings and query tokens) and the language projection learn. The prompt of each task
is the one the engine sends (empty for a caption, the task-guided category question for classify, the
referring instruction for a referring sentence), so what is trained is what is asked at inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from ...models.backend import labels_hint
from ...models.regionvlm import _category_prompt, refer_prompt
from . import RecipeBase, TrainExample, image_features, register, row_token_losses, tokens_to_grid, unique_images


def task_prompt(example: TrainExample) -> str:
    """The engine's prompt for this row's task."""
    if example.task == "classify":
        return _category_prompt(labels_hint(list(example.labels)))
    if example.task == "refer":  # its own instruction: a caption stays a caption (colour, size, shape)
        return refer_prompt()
    return ""


class RegionVLMRecipe(RecipeBase):
    backend = "regionvlm"
    default_train = ("qformer", "projection")
    pad_square = False  # BLIP's processor resizes to a square
    groups: ClassVar[dict[str, tuple[str, ...]]] = {
        "vision": ("vision_model.",),
        "qformer": ("qformer.", "query_tokens"),
        "projection": ("language_projection.",),
        "lm": ("language_model.",),
    }

    def model_class(self) -> type:
        from ...models.regionvlm_model import RegionVLMForConditionalGeneration

        return RegionVLMForConditionalGeneration

    def processor_class(self) -> type:
        from transformers import InstructBlipProcessor

        return InstructBlipProcessor

    def build_batch(self, model, processor, examples: Sequence[TrainExample], pixels: bool = True) -> dict:
        """Each distinct image once (``image_index`` maps rows to them); prompts as the engine writes them."""
        image_index, images = unique_images(examples)
        q = processor.qformer_tokenizer([e.cue.points_text for e in examples], padding=True, return_tensors="pt")
        nq = model.config.num_query_tokens
        image_token = model.config.image_token_index
        tok = processor.tokenizer
        rows = [[image_token] * nq + tok(task_prompt(e)).input_ids for e in examples]
        longest = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), longest), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = torch.tensor(r)
            attention[i, : len(r)] = 1
        target = tok([e.target for e in examples], padding=True, return_tensors="pt")
        batch = {
            "image_index": image_index,
            "qformer_input_ids": q.input_ids,
            "qformer_attention_mask": q.attention_mask,
            "input_ids": input_ids,
            "attention_mask": attention,
            "labels": target.input_ids.masked_fill(target.attention_mask == 0, -100),
        }
        if pixels:
            batch["pixel_values"] = self.vision_pixels(processor, images)
        return batch

    def row_losses(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Vision tower once per distinct image; Q-Former reads each row's points; T5 loss of the target."""
        image_embeds = image_features(self, model, batch)[batch["image_index"]]
        rows = batch["input_ids"].shape[0]
        query = model.query_tokens.expand(rows, -1, -1)
        query_mask = torch.ones(query.shape[:2], dtype=torch.long, device=query.device)
        q = model.qformer(
            input_ids=batch["qformer_input_ids"],
            attention_mask=torch.cat([query_mask, batch["qformer_attention_mask"]], dim=1),
            query_embeds=query,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=query.device),
            return_dict=True,
        ).last_hidden_state[:, : query.shape[1]]
        tokens = model.language_projection(q)
        embeds = model.get_input_embeddings()(batch["input_ids"])
        slots = (batch["input_ids"] == model.config.image_token_index).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, tokens.to(embeds.dtype).reshape(-1, embeds.shape[-1]))
        out = model.language_model(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                    labels=batch["labels"], return_dict=True)
        return row_token_losses(out.logits, batch["labels"])

    def vision_pixels(self, processor, images) -> torch.Tensor:
        return processor.image_processor(images=list(images), return_tensors="pt").pixel_values

    def tower_features(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT's output tokens (CLS and patches), what the Q-Former cross-attends to."""
        return model.vision_model(pixel_values=pixel_values, return_dict=True).last_hidden_state

    def vision_grid(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """The ViT's output patches (what the Q-Former cross-attends to) as a grid."""
        return tokens_to_grid(self.tower_features(model, pixel_values)[:, 1:])


register("regionvlm", RegionVLMRecipe)
