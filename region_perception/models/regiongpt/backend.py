"""RegionGPT as a :class:`~region_perception.models.backend.RegionBackend`.

A region reaches RegionGPT as a mask (``RegionCue.mask``; a box without one becomes its
rectangle). Per image, ``encode_image`` runs the vision tower and the refinement once;
every prompt on that frame then pools its regions from the cached refined map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ...common.timing import Timings
from ..backend import (
    BackendBase,
    RegionCue,
    chunked_losses,
    decode_answers,
    load_pretrained,
    row_mean_losses,
    wrapping,
)
from ..errors import loud_notice
from ..sources import ResolvedSource
from . import processing_regiongpt as prompts
from .modeling_regiongpt import RegionGPTForConditionalGeneration

REFINEMENT_UNTRAINED = (
    "{name}: loaded as RegionGPT from a LLaVA checkpoint; its refinement module is NEW and UNTRAINED "
    "(region features are plain patch averages until `train` stage 1 has run)"
)


def cue_mask(cue: RegionCue, image_size: tuple[int, int]) -> np.ndarray:
    """The cue's mask, or its box as a rectangle when it has none."""
    mask = getattr(cue, "mask", None)
    if mask is not None:
        if mask.shape != tuple(image_size):
            raise ValueError(f"region mask {mask.shape} does not match the image {tuple(image_size)}")
        return mask.astype(bool)
    h, w = image_size
    x0, y0, x1, y1 = cue.box_norm
    out = np.zeros((h, w), dtype=bool)
    c0, r0 = int(np.floor(x0 * w)), int(np.floor(y0 * h))
    c1, r1 = max(int(np.ceil(x1 * w)), c0 + 1), max(int(np.ceil(y1 * h)), r0 + 1)
    out[r0:r1, c0:c1] = True
    return out


class RegionGPTRegion(BackendBase):
    """Caption / ask / category / scoring / "Region [i]" comprehension with RegionGPT."""

    uses_point_draws = False  # a mask is deterministic: one row per proposal
    answers_questions = True
    supports_dialogue = True
    refer_prompt = False  # True: score sentences after REFER_INSTRUCTION (set by the loader from the model's files)

    def __init__(
        self,
        model: RegionGPTForConditionalGeneration,
        processor,
        *,
        name: str,
        device: torch.device,
        weights_random: bool,
        refinement_trained: bool = True,
    ) -> None:
        super().__init__(model, processor, name=name, device=device, weights_random=weights_random)
        self.refinement_trained = refinement_trained
        self.region_aware = refinement_trained
        self.region_note = "RegionGPT's refinement is untrained (a LLaVA checkpoint): region features are coarse"
        self.trained_on_points = True  # masks are native: no point text to learn
        mean = getattr(processor.image_processor, "image_mean", None) or [0.5, 0.5, 0.5]
        self._pad_fill = [int(round(255 * v)) for v in mean]

    # -- image ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode_image(self, image_rgb: np.ndarray) -> dict:
        """Refined map (C, 4g, 4g) and projected image tokens of the centred-square-padded image."""
        square = prompts.pad_image(image_rgb, self._pad_fill)
        pixels = self.processor.image_processor(images=square, return_tensors="pt").pixel_values
        patches, cls = self.model.patch_features(pixels.to(self.device, self.model.dtype))
        refined = self.model.refine(patches)
        return {
            "refined": refined[0],
            "image_tokens": self.model.image_tokens(refined, cls)[0],
            "image_size": tuple(image_rgb.shape[:2]),
        }

    def region_tokens(self, features: dict, cues: Sequence[RegionCue]) -> torch.Tensor:
        """One projected, mask-pooled token per cue (R, D)."""
        masks = np.stack([prompts.pad_mask(cue_mask(c, features["image_size"])) for c in cues])
        masks_t = torch.from_numpy(masks).to(self.device, features["refined"].dtype)
        return self.model.region_tokens(features["refined"], masks_t)

    # -- prompts -------------------------------------------------------------------------------
    def _n_image(self, features: dict) -> int:
        return int(features["image_tokens"].shape[0])

    def _prompt_embeds(
        self, features: dict, texts: Sequence[str], region_sets: Sequence[Sequence[RegionCue]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded embeddings (B, L, D) and attention mask of prompts with their regions."""
        enc = self.tokenizer(list(texts), padding=True, return_tensors="pt").to(self.device)
        images = features["image_tokens"].expand(len(texts), -1, -1)
        cues = [c for group in region_sets for c in group]
        regions = self.region_tokens(features, cues) if cues else None
        return self.model.embed(enc.input_ids, images, regions), enc.attention_mask

    @torch.inference_mode()
    def _generate(
        self,
        features: dict,
        texts: Sequence[str],
        region_sets: Sequence[Sequence[RegionCue]],
        *,
        max_new_tokens: int,
        num_beams: int,
        timings: Timings | None,
    ) -> list[str]:
        timings = timings or Timings()
        embeds, mask = self._prompt_embeds(features, texts, region_sets)
        with timings.section("generation"):
            out = self.model.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                min_new_tokens=1,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                suppress_tokens=self._never_generate(),
            )
        return decode_answers(self.tokenizer, out)

    def _never_generate(self) -> list[int]:
        ids = {self.model.config.image_token_index, self.model.config.region_token_index, self.tokenizer.pad_token_id}
        ids |= {self.tokenizer.unk_token_id, self.tokenizer.bos_token_id}
        return sorted(i for i in ids if i is not None and 0 <= i < self.model.config.text_config.vocab_size)

    # -- the backend interface -----------------------------------------------------------------
    def describe(
        self,
        features: dict,
        cues: Sequence[RegionCue],
        prompt: str = "",
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
        history: Sequence[tuple[str, str]] = (),
    ) -> str:
        """Caption (empty prompt, one region) or answer ``prompt`` about the regions.

        ``history``: earlier (question, answer) turns of the same conversation. A single
        whole-image cue is the image alone (no ``<region>``).
        """
        cues = [c for c in cues if not _whole_image(c)]
        if not prompt and not history and len(cues) == 1:
            return self.caption_each(
                features, cues, max_new_tokens=max_new_tokens, num_beams=num_beams, timings=timings
            )[0]
        prompt = prompt or prompts.CAPTION.format(target=prompts.target(len(cues)))
        text = prompts.ask_prompt(self._n_image(features), len(cues), prompt, history)
        return self._generate(
            features, [text], [cues], max_new_tokens=max_new_tokens, num_beams=num_beams, timings=timings
        )[0]

    def caption_each(
        self,
        features: dict,
        cues: Sequence[RegionCue],
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> list[str]:
        """A separate task-guided caption prompt per region, generated as one batch."""
        text = prompts.caption_prompt(self._n_image(features))
        return self._generate(
            features,
            [text] * len(cues),
            [[c] for c in cues],
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            timings=timings,
        )

    def category(self, features: dict, cue: RegionCue, labels_hint: str, *, timings: Timings | None = None) -> str:
        """The paper's classification prompt: "Answer the question using COCO-80 category names." """
        text = prompts.classify_prompt(self._n_image(features), labels_hint)
        return self._generate(features, [text], [[cue]], max_new_tokens=10, num_beams=1, timings=timings)[0]

    @torch.inference_mode()
    def encode_cues(
        self, features: dict, cues: Sequence[RegionCue], *, batch_size: int = 32, timings: Timings | None = None,
        task: str = "refer",
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The text-independent part of scoring: each region's prompt embedded (same length): the
        referring instruction where the model was trained with it (``task`` refer), else the caption's."""
        n = self._n_image(features)
        text = prompts.refer_prompt(n) if task == "refer" and self.refer_prompt else prompts.caption_prompt(n)
        return [
            self._prompt_embeds(features, [text] * len(chunk), [[c] for c in chunk])
            for chunk in (cues[s : s + batch_size] for s in range(0, len(cues), batch_size))
        ]

    @torch.inference_mode()
    def rows_loss(
        self, encoded: list[tuple[torch.Tensor, torch.Tensor]], texts: Sequence[str], *, timings: Timings | None = None
    ) -> np.ndarray:
        """Mean token loss of ``texts[i]`` (then ``</s>``) as the answer to row i's prompt."""
        return chunked_losses(
            encoded, texts, lambda chunk, rows: self._answer_loss(*chunk, [f" {t.strip()}" for t in rows]),
            timings=timings,
        )

    def _answer_loss(self, embeds: torch.Tensor, mask: torch.Tensor, answers: Sequence[str]) -> torch.Tensor:
        rows = [
            [*self.tokenizer(a, add_special_tokens=False).input_ids, self.tokenizer.eos_token_id] for a in answers
        ]
        width = max(len(r) for r in rows)  # right-padded: the answer follows its prompt directly
        ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        amask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            amask[i, : len(r)] = 1
        ids, amask = ids.to(self.device), amask.to(self.device)
        full = torch.cat([embeds, self.model.embed(ids)], dim=1)
        hidden = self.model.model.language_model(
            inputs_embeds=full, attention_mask=torch.cat([mask, amask], dim=1), return_dict=True
        ).last_hidden_state
        prompt_len = embeds.shape[1]
        labels = ids.masked_fill(amask == 0, -100)
        return row_mean_losses(hidden[:, prompt_len - 1 : prompt_len - 1 + ids.shape[1]], labels, self.model.lm_head)

    @torch.inference_mode()
    def comprehend(
        self, features: dict, cues: Sequence[RegionCue], text: str, *, timings: Timings | None = None
    ) -> np.ndarray:
        """RegionGPT's own comprehension: candidates listed as Region [i]; the loss of answering
        "Region [i]" for each i (lowest = the model's answer)."""
        timings = timings or Timings()
        prompt = prompts.comprehend_prompt(self._n_image(features), len(cues), text)
        embeds, mask = self._prompt_embeds(features, [prompt], [list(cues)])
        answers = [" " + prompts.comprehend_answer(i) for i in range(len(cues))]
        with timings.section("lm_loss"):
            losses = self._answer_loss(embeds.expand(len(cues), -1, -1), mask.expand(len(cues), -1), answers)
        return losses.float().cpu().numpy()

    def refer_native(
        self, features: dict, text: str, image_size: tuple[int, int], *, timings: Timings | None = None
    ) -> np.ndarray | None:
        """None: RegionGPT's comprehension picks among given regions (see :meth:`comprehend`)."""
        return None


def _whole_image(cue: RegionCue) -> bool:
    mask = getattr(cue, "mask", None)
    if mask is not None:
        return bool(mask.all())
    return tuple(cue.box_norm) == (0.0, 0.0, 1.0, 1.0) and cue.points_text == ""


def load(resolved: ResolvedSource, device: torch.device, dtype: torch.dtype, *, trust_remote_code: bool = False):
    """The engine's RegionGPT from a resolved checkpoint: a RegionGPT directory, or LLaVA's
    (``loading.BACKENDS["regiongpt"]``).

    A LLaVA checkpoint has no ``<region>`` token and no refinement: the token is added (its
    embedding is never looked up) and the fresh refinement is flagged untrained, loudly.
    """
    model, processor = load_pretrained(
        resolved, RegionGPTForConditionalGeneration, dtype=dtype, trust_remote_code=trust_remote_code
    )
    with wrapping(resolved):
        model = model.to(device)
        prompts.ensure_region_token(model, processor)
        trained = bool(resolved.meta.get("refinement_trained", False))
        if not resolved.weights_random and not trained:
            loud_notice(REFINEMENT_UNTRAINED.format(name=resolved.name))
        return RegionGPTRegion(
            model,
            processor,
            name=resolved.name,
            device=device,
            weights_random=resolved.weights_random,
            refinement_trained=trained,
        )
