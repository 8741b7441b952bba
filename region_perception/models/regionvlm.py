"""RegionVLM on transformers' InstructBLIP: the region is text for the Q-Former.

RegionVLM (arXiv 2403.18260) is BLIP-2 FlanT5-XL whose Q-Former also reads the region as
text (K points, see :mod:`region_perception.geometry.region_text`); InstructBLIP's
``qformer_input_ids`` is the same design, so the released weights map onto
``InstructBlipForConditionalGeneration`` (see :mod:`.convert_regionvlm`).

The model is split in three stages so that work is shared: the vision encoder runs once
per image (:meth:`encode_image`), the Q-Former once per region text, and the language
model once per batch of rows. :meth:`reference_loss` is the unsplit forward of
transformers, used to check that the split gives the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..common.timing import Timings
from ..geometry.region_text import multi_region_prompt
from .backend import (
    REFER_INSTRUCTION,
    BackendBase,
    RegionCue,
    chunked_losses,
    decode_answers,
    load_pretrained,
    row_mean_losses,
    wrapping,
)
from .errors import loud_notice
from .sources import ResolvedSource

NOT_POINT_TRAINED = (
    "{name}: this InstructBLIP checkpoint was never trained on RegionVLM's point text; it loads and "
    "runs, but its answers ignore the region. Use the released RegionVLM weights "
    "(region-perception convert-regionvlm) for region answers."
)


@dataclass
class ImageFeatures:
    """Vision-encoder output of one image: computed once, reused by every query on it."""

    image_embeds: torch.Tensor  # (1, patches, vision_hidden)
    image_size: tuple[int, int]  # (height, width) of the original image

    def nbytes(self) -> int:
        return self.image_embeds.numel() * self.image_embeds.element_size()


class RegionVLMModel(BackendBase):
    """Caption, ask and score text for regions given as RegionVLM point text."""

    uses_point_draws = True
    answers_questions = True
    refer_prompt = False  # True: score sentences after REFER_INSTRUCTION (set by the loader from the model's files)

    def __init__(
        self, model, processor, *, name: str, device: torch.device, weights_random: bool, trained_on_points: bool
    ) -> None:
        super().__init__(model, processor, name=name, device=device, weights_random=weights_random)
        self.qformer_tokenizer = processor.qformer_tokenizer
        self.trained_on_points = trained_on_points
        self.region_aware = trained_on_points or weights_random
        self.num_query_tokens = model.config.num_query_tokens
        self.image_token_id = model.config.image_token_index
        self.dtype = next(model.language_model.parameters()).dtype
        # padding and unknown-word tokens are never a useful word of an answer
        self._never_generate = [i for i in (self.tokenizer.pad_token_id, self.tokenizer.unk_token_id) if i is not None]

    # -- stage 1: vision encoder, once per image ---------------------------------------
    def pixel_values(self, image_rgb: np.ndarray) -> torch.Tensor:
        pixels = self.processor.image_processor(images=image_rgb, return_tensors="pt").pixel_values
        return pixels.to(self.device, self.model.vision_model.dtype)

    @torch.inference_mode()
    def encode_image(self, image_rgb: np.ndarray) -> ImageFeatures:
        embeds = self.model.vision_model(pixel_values=self.pixel_values(image_rgb), return_dict=True)
        return ImageFeatures(embeds.last_hidden_state, tuple(image_rgb.shape[:2]))

    # -- stage 2: Q-Former reads the region text --------------------------------------
    @torch.inference_mode()
    def region_tokens(self, features: ImageFeatures, region_texts: Sequence[str]) -> torch.Tensor:
        """Language-model input embeddings of each region: (R, num_query_tokens, lm_hidden)."""
        enc = self.qformer_tokenizer(list(region_texts), padding=True, return_tensors="pt").to(self.device)
        rows = len(region_texts)
        # The image keeps batch size 1: the cross-attention's key/value projections of the
        # image are computed once and broadcast over the rows, not once per row.
        image_embeds = features.image_embeds
        query_tokens = self.model.query_tokens.expand(rows, -1, -1)
        query_mask = torch.ones(query_tokens.shape[:2], dtype=torch.long, device=self.device)
        out = self.model.qformer(
            input_ids=enc.input_ids,
            attention_mask=torch.cat([query_mask, enc.attention_mask], dim=1),
            query_embeds=query_tokens,
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:2], dtype=torch.long, device=self.device),
            return_dict=True,
        )
        return self.model.language_projection(out.last_hidden_state[:, : self.num_query_tokens, :])

    # -- stage 3: the language model ----------------------------------------------------
    def _ids(self, text: str, eos: bool) -> list[int]:
        return self.tokenizer(text, add_special_tokens=eos).input_ids if text or eos else []

    def _prompt_embeds(self, region_tokens: torch.Tensor, pieces: Sequence[str]) -> torch.Tensor:
        """Embeddings of ``piece0 <Z0> piece1 <Z1> ... last_piece`` for one row.

        ``region_tokens`` is (regions, Q, hidden); ``pieces`` has regions + 1 strings, the
        last one ended by EOS as the tokenizer does for a whole prompt.
        """
        ids: list[int] = []
        for i in range(region_tokens.shape[0]):
            ids += self._ids(pieces[i], eos=False) + [self.image_token_id] * self.num_query_tokens
        ids += self._ids(pieces[-1], eos=True)
        ids_t = torch.tensor([ids], device=self.device)
        embeds = self.model.get_input_embeddings()(ids_t)
        slots = (ids_t == self.image_token_id).unsqueeze(-1).expand_as(embeds)
        return embeds.masked_scatter(slots, region_tokens.reshape(-1, embeds.shape[-1]).to(embeds.dtype))

    def _lm_generate(
        self,
        embeds: torch.Tensor,
        max_new_tokens: int,
        num_beams: int,
        timings: Timings,
        attention_mask: torch.Tensor | None = None,
    ) -> list[str]:
        """Greedy/beam generation from prepared input embeddings, one text per row."""
        if attention_mask is None:
            attention_mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        with timings.section("generation"):
            out = self.model.language_model.generate(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                min_new_tokens=1,
                do_sample=False,
                suppress_tokens=self._never_generate,
            )
        return decode_answers(self.tokenizer, out)

    @torch.inference_mode()
    def generate(
        self,
        features: ImageFeatures,
        region_texts: Sequence[str],
        prompt: str = "",
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> str:
        """One answer for the regions: one region -> ``<Z> prompt``; several -> ``[0]: <Z0> ... prompt``."""
        timings = timings or Timings()
        with timings.section("qformer"):
            tokens = self.region_tokens(features, region_texts)
        if len(region_texts) == 1:
            pieces = ["", prompt]
        else:
            pieces = multi_region_prompt(len(region_texts), prompt)
        embeds = self._prompt_embeds(tokens, pieces)
        return self._lm_generate(embeds, max_new_tokens, num_beams, timings)[0]

    @torch.inference_mode()
    def caption_each(
        self,
        features: ImageFeatures,
        cues,
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> list[str]:
        """A separate caption for every region, generated as one batch."""
        timings = timings or Timings()
        with timings.section("qformer"):
            tokens = self.region_tokens(features, [c.points_text for c in cues])
        embeds = torch.cat([self._prompt_embeds(tokens[i : i + 1], ["", ""]) for i in range(len(cues))])
        return self._lm_generate(embeds, max_new_tokens, num_beams, timings)

    @torch.inference_mode()
    def describe_rows(
        self,
        features: ImageFeatures,
        rows: Sequence[tuple[Sequence[RegionCue], str]],
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> list[str]:
        """Several :meth:`describe` calls (captions, answers) as one Q-Former pass and one generation.

        Rows of different lengths are left-padded and masked, so each row reads as it would alone;
        this is what lets the node answer several queries on one frame in one batch.
        """
        timings = timings or Timings()
        with timings.section("qformer"):
            tokens = self.region_tokens(features, [c.points_text for cues, _ in rows for c in cues])
        embeds, start = [], 0
        for cues, prompt in rows:
            n = len(cues)
            pieces = ["", prompt] if n == 1 else multi_region_prompt(n, prompt)
            embeds.append(self._prompt_embeds(tokens[start : start + n], pieces)[0])
            start += n
        longest = max(e.shape[0] for e in embeds)
        padded = embeds[0].new_zeros((len(embeds), longest, embeds[0].shape[-1]))
        mask = torch.zeros((len(embeds), longest), dtype=torch.long, device=self.device)
        for i, e in enumerate(embeds):
            padded[i, longest - e.shape[0] :] = e
            mask[i, longest - e.shape[0] :] = 1
        return self._lm_generate(padded, max_new_tokens, num_beams, timings, attention_mask=mask)

    def category_many(
        self,
        features: ImageFeatures,
        cues: Sequence[RegionCue],
        hints: Sequence[str],
        *,
        timings: Timings | None = None,
    ) -> list[str]:
        """:meth:`category` of several regions (each with its own label hint) as one generation."""
        rows = [([cue], _category_prompt(hint)) for cue, hint in zip(cues, hints, strict=True)]
        return self.describe_rows(features, rows, max_new_tokens=8, num_beams=1, timings=timings)

    def _labels(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt")
        labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
        return labels.to(self.device)

    def _is_t5(self) -> bool:
        lm = self.model.language_model
        return hasattr(lm, "_shift_right") and hasattr(lm, "lm_head")

    @torch.inference_mode()
    def encode_rows(
        self,
        features: ImageFeatures,
        region_texts: Sequence[str],
        *,
        batch_size: int = 32,
        timings: Timings | None = None,
        prompt: str = "",
    ) -> list[torch.Tensor]:
        """The part of scoring that does not depend on the text: Q-Former and LM encoder.

        One tensor per batch of rows: the T5 encoder's output (or, for a decoder-only LM,
        its input embeddings). Several sentences on the same rows reuse it. ``prompt``
        follows the region tokens (empty: the caption prompt).
        """
        timings = timings or Timings()
        chunks = []
        for start in range(0, len(region_texts), batch_size):
            chunk = region_texts[start : start + batch_size]
            with timings.section("qformer"):
                tokens = self.region_tokens(features, chunk)
            with timings.section("lm_encode"):
                prefix = self._prompt_embeds(tokens[:1], ["", prompt])  # layout of one row
                embeds = prefix.expand(len(chunk), -1, -1).clone()
                embeds[:, : self.num_query_tokens] = tokens.to(embeds.dtype)  # the image slots lead the row
                if self._is_t5():
                    mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
                    embeds = self.model.language_model.get_encoder()(
                        inputs_embeds=embeds, attention_mask=mask, return_dict=True
                    ).last_hidden_state
            chunks.append(embeds)
        return chunks

    @torch.inference_mode()
    def rows_loss(
        self, encoded: list[torch.Tensor], texts: Sequence[str], *, timings: Timings | None = None
    ) -> np.ndarray:
        """Mean token loss of ``texts[i]`` for row i; the LM head only sees scored positions."""
        lm = self.model.language_model

        def score(hidden, texts):
            labels = self._labels(texts)
            mask = torch.ones(hidden.shape[:2], dtype=torch.long, device=self.device)
            if self._is_t5():
                dec = lm.get_decoder()(
                    input_ids=lm._shift_right(labels),
                    encoder_hidden_states=hidden,
                    encoder_attention_mask=mask,
                    return_dict=True,
                ).last_hidden_state
                if getattr(lm.config, "scale_decoder_outputs", False):
                    dec = dec * (lm.config.d_model**-0.5)
                return row_mean_losses(dec, labels, lm.lm_head)
            logits = lm(inputs_embeds=hidden, attention_mask=mask, labels=labels, return_dict=True).logits
            return row_mean_losses(logits, labels, lambda x: x)

        return chunked_losses(encoded, texts, score, timings=timings, rows_of=lambda hidden: hidden.shape[0])

    def score_texts(
        self,
        features: ImageFeatures,
        region_texts: Sequence[str],
        texts: Sequence[str] | str,
        *,
        batch_size: int = 32,
        timings: Timings | None = None,
    ) -> np.ndarray:
        """Per-row language-model loss of ``texts[i]`` given region ``region_texts[i]``.

        The captioning prompt is empty, as in RegionVLM's referring evaluation: lower loss
        means the text describes the region better. Rows are scored in batches.
        """
        if isinstance(texts, str):
            texts = [texts] * len(region_texts)
        if len(texts) != len(region_texts):
            raise ValueError("score_texts needs one text per region text")
        encoded = self.encode_rows(features, region_texts, batch_size=batch_size, timings=timings)
        return self.rows_loss(encoded, texts, timings=timings)

    @torch.inference_mode()
    def reference_loss(self, image_rgb: np.ndarray, region_text: str, text: str) -> float:
        """The unsplit procedure: transformers' full forward, vision encoder included.

        This is what RegionVLM's released evaluation does for every proposal and draw.
        """
        q = self.qformer_tokenizer([region_text], return_tensors="pt").to(self.device)
        ids = torch.tensor(
            [[self.image_token_id] * self.num_query_tokens + self._ids("", eos=True)], device=self.device
        )
        out = self.model(
            pixel_values=self.pixel_values(image_rgb),
            qformer_input_ids=q.input_ids,
            qformer_attention_mask=q.attention_mask,
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            labels=self._labels([text]),
            return_dict=True,
        )
        return float(out.loss)

    # -- the backend interface (see .backend) ---------------------------------------------------
    def describe(
        self,
        features: ImageFeatures,
        cues,
        prompt: str = "",
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> str:
        return self.generate(
            features,
            [c.points_text for c in cues],
            prompt,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            timings=timings,
        )

    def category(
        self, features: ImageFeatures, cue: RegionCue, labels_hint: str, *, timings: Timings | None = None
    ) -> str:
        """RegionGPT's task-guided prompt, asked of the region."""
        prompt = _category_prompt(labels_hint)
        return self.generate(features, [cue.points_text], prompt, max_new_tokens=8, timings=timings)

    def score_regions(
        self, features: ImageFeatures, cues, texts, *, batch_size: int = 32, timings: Timings | None = None
    ) -> np.ndarray:
        return self.score_texts(features, [c.points_text for c in cues], texts, batch_size=batch_size, timings=timings)

    def encode_cues(
        self, features: ImageFeatures, cues, *, batch_size: int = 32, timings: Timings | None = None,
        task: str = "refer",
    ):
        """Text-independent part of scoring, for several sentences on one frame (``task``: refer or caption)."""
        prompt = refer_prompt() if task == "refer" and self.refer_prompt else ""
        return self.encode_rows(
            features, [c.points_text for c in cues], batch_size=batch_size, timings=timings, prompt=prompt
        )

    def reference_row_loss(self, image_rgb: np.ndarray, cue: RegionCue, text: str) -> float:
        """:meth:`reference_loss` for a cue (the benchmark's reference procedure)."""
        return self.reference_loss(image_rgb, cue.points_text, text)

    def refer_native(self, features, text: str, image_size, *, timings: Timings | None = None):
        return None  # RegionVLM refers by scoring proposals


def refer_prompt() -> str:
    """The instruction before a referring sentence, for models trained with it (``refer_prompt``)."""
    return REFER_INSTRUCTION.format(target="this region")


def _category_prompt(labels_hint: str) -> str:
    return f"What is the category of this region? Answer the question using {labels_hint}."


def load(resolved: ResolvedSource, device: torch.device, dtype: torch.dtype, *, trust_remote_code: bool = False):
    """The engine's RegionVLM from a resolved InstructBLIP model (``loading.BACKENDS["regionvlm"]``); a
    checkpoint whose ``region_perception.json`` does not say it learnt point text is flagged, loudly."""
    from .regionvlm_model import RegionVLMForConditionalGeneration  # InstructBLIP (+ the toy's conv stem)

    model, processor = load_pretrained(
        resolved, RegionVLMForConditionalGeneration, dtype=dtype, trust_remote_code=trust_remote_code
    )
    with wrapping(resolved):
        model = model.to(device)
        trained_on_points = bool(resolved.meta.get("regionvlm_points", False))
        if not resolved.weights_random and not trained_on_points:
            loud_notice(NOT_POINT_TRAINED.format(name=resolved.name))
        return RegionVLMModel(
            model,
            processor,
            name=resolved.name,
            device=device,
            weights_random=resolved.weights_random,
            trained_on_points=trained_on_points,
        )
