"""Florence-2 (MIT; 0.23B base, 0.77B large) on transformers' ``Florence2ForConditionalGeneration``.

Florence-2 takes a region as a box of location tokens ``<loc_0>``..``<loc_999>`` and has
task prompts for it: ``<REGION_TO_DESCRIPTION>`` (caption), ``<REGION_TO_CATEGORY>``
(category) and ``<REFERRING_EXPRESSION_SEGMENTATION>`` (a sentence to a polygon). Its
released weights make it the practical default on small GPUs. The image is encoded once
(vision tower + projector) and reused by every prompt on that frame.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..common.timing import Timings
from .backend import (
    REFER_INSTRUCTION,
    BackendBase,
    RegionCue,
    chunked_losses,
    load_pretrained,
    row_mean_losses,
    wrapping,
)
from .sources import ResolvedSource

_LOC = re.compile(r"<loc_\d+>")


def refer_prompt(box_tokens: str) -> str:
    """For models trained with it (``refer_prompt``): the instruction a referring sentence answers."""
    return REFER_INSTRUCTION.format(target="the region") + box_tokens


def box_to_location_tokens(processor, box_px: Sequence[float], image_size: tuple[int, int]) -> str:
    """``<loc_x0><loc_y0><loc_x1><loc_y1>`` of a pixel box, with Florence-2's own quantizer."""
    h, w = image_size
    q = processor.post_processor.quantize(torch.tensor([list(box_px)], dtype=torch.float32), (w, h))[0]
    return "".join(f"<loc_{int(v)}>" for v in q)


def location_tokens_to_box(processor, text: str, image_size: tuple[int, int]) -> list[float]:
    """The pixel box of the first four location tokens in ``text`` (bin centres)."""
    h, w = image_size
    bins = [int(v) for v in re.findall(r"<loc_(\d+)>", text)[:4]]
    if len(bins) != 4:
        raise ValueError(f"expected four location tokens, got {len(bins)} in {text!r}")
    return [float(v) for v in processor.post_processor.dequantize(torch.tensor([bins]), (w, h))[0]]


def polygons_to_mask(polygons: Sequence[Sequence[float]], image_size: tuple[int, int]) -> np.ndarray:
    """Florence-2's polygons (flat x, y lists in pixels) filled into a bool mask."""
    mask = np.zeros(image_size, dtype=np.uint8)
    for poly in polygons:
        pts = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        if len(pts) >= 3:
            cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask.astype(bool)


class Florence2Region(BackendBase):
    """Region caption / category / scoring / referring segmentation with Florence-2."""

    uses_point_draws = False  # a box is deterministic: one draw per proposal
    answers_questions = False  # Florence-2 has task prompts, not free questions
    region_aware = True
    refer_prompt = False  # True: score sentences after REFER_INSTRUCTION (set by the loader from the model's files)

    def __init__(self, model, processor, *, name: str, device: torch.device, weights_random: bool) -> None:
        super().__init__(model, processor, name=name, device=device, weights_random=weights_random)
        self.trained_on_points = True  # region input is native to Florence-2
        self.num_image_tokens = processor.num_image_tokens
        self.image_token_id = model.config.image_token_id
        self._never_generate = [t for t in (self.tokenizer.pad_token_id, self.tokenizer.unk_token_id) if t is not None]
        # a description or a category is words: location tokens would only be stripped again
        locations = self.tokenizer.convert_tokens_to_ids([f"<loc_{i}>" for i in range(1000)])
        self._words_only = self._never_generate + [t for t in locations if t != self.tokenizer.unk_token_id]

    @torch.inference_mode()
    def encode_image(self, image_rgb: np.ndarray) -> dict:
        pixels = self.processor.image_processor(images=image_rgb, return_tensors="pt").pixel_values
        pixels = pixels.to(self.device, self.model.dtype)
        feats = self.model.get_image_features(pixel_values=pixels).pooler_output
        return {"image_features": feats, "image_size": tuple(image_rgb.shape[:2])}

    # -- prompts ------------------------------------------------------------------------------
    def _box_tokens(self, cue: RegionCue, image_size: tuple[int, int]) -> str:
        h, w = image_size
        x0, y0, x1, y1 = cue.box_norm
        return box_to_location_tokens(self.processor, (x0 * w, y0 * h, x1 * w, y1 * h), image_size)

    def _embeds(self, features: dict, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input of each prompt: the image tokens, then the task prompt's words."""
        words = self.processor._construct_prompts(list(prompts))  # the task token -> its sentence
        tok = self.tokenizer
        texts = [tok.image_token * self.num_image_tokens + tok.bos_token + w + tok.eos_token for w in words]
        enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt").to(self.device)
        embeds = self.model.get_input_embeddings()(enc.input_ids)
        feats = features["image_features"].to(embeds.dtype).expand(len(texts), -1, -1)
        slots = (enc.input_ids == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(slots, feats.reshape(-1, feats.shape[-1])), enc.attention_mask

    @torch.inference_mode()
    def _generate(
        self,
        features: dict,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        num_beams: int,
        timings: Timings | None,
        keep_special: bool = False,
        words_only: bool = True,
    ) -> list[str]:
        """One generation per prompt, as one batch (the prompts of one task have one length)."""
        timings = timings or Timings()
        embeds, mask = self._embeds(features, prompts)
        with timings.section("generation"):
            encoded = self.model.model.language_model.encoder(
                inputs_embeds=embeds, attention_mask=mask, return_dict=True
            )
            out = self.model.generate(
                encoder_outputs=encoded,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                min_new_tokens=1,
                suppress_tokens=self._words_only if words_only else self._never_generate,
            )
        texts = self.tokenizer.batch_decode(out, skip_special_tokens=not keep_special)
        return texts if keep_special else [_LOC.sub("", t).strip() for t in texts]

    def _describe_prompt(self, cue: RegionCue, features: dict) -> str:
        return "<REGION_TO_DESCRIPTION>" + self._box_tokens(cue, features["image_size"])

    # -- the backend interface ----------------------------------------------------------------
    def describe(
        self,
        features: dict,
        cues: Sequence[RegionCue],
        prompt: str = "",
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> str:
        if prompt:
            raise ValueError(f"{self.name} does not answer free questions: use CAPTION, or a RegionVLM model for ASK")
        if len(cues) != 1:
            raise ValueError(f"{self.name} describes one region at a time")
        return self.caption_each(features, cues, max_new_tokens=max_new_tokens, num_beams=num_beams, timings=timings)[0]

    def caption_each(
        self,
        features: dict,
        cues: Sequence[RegionCue],
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> list[str]:
        """A separate ``<REGION_TO_DESCRIPTION>`` for every region, generated as one batch."""
        prompts = [self._describe_prompt(c, features) for c in cues]
        return self._generate(features, prompts, max_new_tokens=max_new_tokens, num_beams=num_beams, timings=timings)

    def category(self, features: dict, cue: RegionCue, labels_hint: str, *, timings: Timings | None = None) -> str:
        prompt = "<REGION_TO_CATEGORY>" + self._box_tokens(cue, features["image_size"])
        return self._generate(features, [prompt], max_new_tokens=10, num_beams=1, timings=timings)[0]

    def category_many(
        self, features: dict, cues: Sequence[RegionCue], hints: Sequence[str], *, timings: Timings | None = None
    ) -> list[str]:
        """:meth:`category` of several regions as one generation (the hint is not used by Florence-2)."""
        prompts = ["<REGION_TO_CATEGORY>" + self._box_tokens(c, features["image_size"]) for c in cues]
        return self._generate(features, prompts, max_new_tokens=10, num_beams=1, timings=timings)

    def describe_rows(
        self,
        features: dict,
        rows: Sequence[tuple[Sequence[RegionCue], str]],
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> list[str]:
        """Several one-region captions as one generation (Florence-2 has no free questions)."""
        if any(prompt or len(cues) != 1 for cues, prompt in rows):
            raise ValueError(f"{self.name} describes one region at a time and answers no free questions")
        cues = [cues[0] for cues, _ in rows]
        return self.caption_each(features, cues, max_new_tokens=max_new_tokens, num_beams=num_beams, timings=timings)

    @torch.inference_mode()
    def encode_cues(
        self, features: dict, cues: Sequence[RegionCue], *, batch_size: int = 32, timings: Timings | None = None,
        task: str = "refer",
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The text-independent part of scoring: each region's prompt through the encoder.

        ``task`` refer uses the referring instruction where the model was trained with it, else the
        description prompt (the released model's only region-to-text prompt)."""
        timings = timings or Timings()
        encoder = self.model.model.language_model.encoder
        chunks = []
        refer = task == "refer" and self.refer_prompt
        for start in range(0, len(cues), batch_size):
            prompts = [refer_prompt(self._box_tokens(c, features["image_size"])) if refer
                       else self._describe_prompt(c, features) for c in cues[start : start + batch_size]]
            with timings.section("lm_encode"):
                embeds, mask = self._embeds(features, prompts)
                hidden = encoder(inputs_embeds=embeds, attention_mask=mask, return_dict=True).last_hidden_state
            chunks.append((hidden, mask))
        return chunks

    @torch.inference_mode()
    def rows_loss(
        self, encoded: list[tuple[torch.Tensor, torch.Tensor]], texts: Sequence[str], *, timings: Timings | None = None
    ) -> np.ndarray:
        """Mean token loss of ``texts[i]`` as row i's description; LM head on scored positions only."""
        from transformers.models.florence2.modeling_florence2 import shift_tokens_right

        cfg = self.model.config.text_config
        decoder = self.model.model.language_model.decoder

        def score(chunk, texts):
            hidden, mask = chunk
            tok = self.tokenizer(list(texts), padding=True, return_tensors="pt")
            labels = tok.input_ids.masked_fill(tok.attention_mask == 0, -100).to(self.device)
            dec = decoder(
                input_ids=shift_tokens_right(labels, cfg.pad_token_id, cfg.decoder_start_token_id),
                encoder_hidden_states=hidden,
                encoder_attention_mask=mask,
                return_dict=True,
            ).last_hidden_state
            return row_mean_losses(dec, labels, self.model.lm_head)

        return chunked_losses(encoded, texts, score, timings=timings)

    @torch.inference_mode()
    def reference_row_loss(self, image_rgb: np.ndarray, cue: RegionCue, text: str) -> float:
        """The unsplit procedure: processor and full forward (vision tower included) per row."""
        h, w = image_rgb.shape[:2]
        x0, y0, x1, y1 = cue.box_norm
        prompt = "<REGION_TO_DESCRIPTION>" + box_to_location_tokens(
            self.processor, (x0 * w, y0 * h, x1 * w, y1 * h), (h, w)
        )
        inputs = self.processor(text=prompt, images=image_rgb, return_tensors="pt").to(self.device)
        labels = self.tokenizer([text], return_tensors="pt").input_ids.to(self.device)
        return float(self.model(**inputs, labels=labels).loss)

    def refer_native(
        self, features: dict, text: str, image_size: tuple[int, int], *, timings: Timings | None = None
    ) -> np.ndarray | None:
        task = "<REFERRING_EXPRESSION_SEGMENTATION>"
        raw = self._generate(
            features,
            [task + text],
            max_new_tokens=256,
            num_beams=1,
            timings=timings,
            keep_special=True,
            words_only=False,
        )[0]
        h, w = image_size
        parsed = self.processor.post_process_generation(raw, task=task, image_size=(w, h))[task]
        polygons = [p for instance in parsed.get("polygons", []) for p in instance]
        return polygons_to_mask(polygons, image_size)


def load(resolved: ResolvedSource, device: torch.device, dtype: torch.dtype, *, trust_remote_code: bool = False):
    """The engine's Florence-2 from a resolved model (``loading.BACKENDS["florence2"]``)."""
    from transformers import Florence2ForConditionalGeneration

    model, processor = load_pretrained(
        resolved, Florence2ForConditionalGeneration, dtype=dtype, trust_remote_code=trust_remote_code
    )
    with wrapping(resolved):
        return Florence2Region(
            model.to(device), processor, name=resolved.name, device=device, weights_random=resolved.weights_random
        )
