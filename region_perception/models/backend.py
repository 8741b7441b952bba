"""What every region model implements, so the engine, node and CLI need not care which runs.

A region reaches a backend as a :class:`RegionCue`: RegionVLM reads its points as text,
Florence-2 its box as location tokens. Per image, ``encode_image`` runs once and its
output is cached; every other call reuses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..common.timing import Timings
from .errors import ModelLoadError, loud_notice, one_line
from .sources import ResolvedSource, from_pretrained

# The instruction a model trained on referring expressions of their own is given before a sentence is
# scored as its answer (REFER's proposal route, comprehension). Only models whose region_perception.json
# says ``"refer_prompt": true`` (written by ``region-perception train`` with the refer task) use it;
# released checkpoints score the sentence as the region's caption, as RegionVLM's evaluation does.
REFER_INSTRUCTION = "Give a referring expression for {target}."


@dataclass(frozen=True)
class RegionCue:
    """One region as the models see it."""

    points_text: str  # RegionVLM: "[32 64] [36 62]" ("" = whole image)
    box_norm: tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1] of the image
    # RegionGPT pools any shape: bool HxW of the image (None: the box's rectangle)
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)


class RegionBackend(Protocol):
    name: str
    weights_random: bool
    region_aware: bool  # False: the weights never learnt this backend's region input
    uses_point_draws: bool  # True: REFER scores several random point draws per proposal
    device: torch.device

    def encode_image(self, image_rgb: np.ndarray) -> Any: ...

    def describe(
        self,
        features: Any,
        cues: Sequence[RegionCue],
        prompt: str = "",
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> str:
        """Caption (empty prompt) or answer ``prompt`` about the regions."""

    def caption_each(
        self,
        features: Any,
        cues: Sequence[RegionCue],
        *,
        max_new_tokens: int = 30,
        num_beams: int = 1,
        timings: Timings | None = None,
    ) -> list[str]:
        """One caption per region, as one batch."""

    def category(self, features: Any, cue: RegionCue, labels_hint: str, *, timings: Timings | None = None) -> str:
        """Free text naming the region's category (to be snapped onto a vocabulary)."""

    def score_regions(
        self,
        features: Any,
        cues: Sequence[RegionCue],
        texts: Sequence[str] | str,
        *,
        batch_size: int = 32,
        timings: Timings | None = None,
    ) -> np.ndarray:
        """Per-row mean token loss of ``texts[i]`` as a description of region ``cues[i]``."""

    def refer_native(
        self, features: Any, text: str, image_size: tuple[int, int], *, timings: Timings | None = None
    ) -> np.ndarray | None:
        """The model's own referring segmentation (a bool mask), or None if it has none."""


def row_mean_losses(
    hidden: torch.Tensor, labels: torch.Tensor, head: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Mean cross-entropy per row, the output head applied only where labels are scored.

    ``hidden`` is (rows, steps, dim) decoder output; ``labels`` (rows, steps) with -100 for
    padding. Skipping the vocabulary projection of unscored positions is what makes
    scoring many rows cheap.
    """
    scored = labels != -100
    token_loss = F.cross_entropy(head(hidden[scored]).float(), labels[scored], reduction="none")
    rows = torch.nonzero(scored, as_tuple=True)[0]
    sums = torch.zeros(labels.shape[0], device=labels.device).index_add_(0, rows, token_loss)
    return sums / scored.sum(dim=1).clamp(min=1)


def score_cue_rows(
    backend: Any,
    features: Any,
    cues: Sequence[RegionCue],
    texts: Sequence[str] | str,
    *,
    batch_size: int = 32,
    timings: Timings | None = None,
    task: str = "caption",
) -> np.ndarray:
    """``score_regions`` for backends whose rows are encoded once per cue (``encode_cues``) and then
    scored per text (``rows_loss``): one text for every cue, or one text each."""
    if isinstance(texts, str):
        texts = [texts] * len(cues)
    rows = backend.encode_cues(features, cues, batch_size=batch_size, timings=timings, task=task)
    return backend.rows_loss(rows, texts, timings=timings)


def chunked_losses(
    encoded: Sequence[Any],
    texts: Sequence[str],
    score_chunk: Callable[[Any, Sequence[str]], torch.Tensor],
    *,
    timings: Timings | None = None,
    rows_of: Callable[[Any], int] = lambda chunk: chunk[0].shape[0],
) -> np.ndarray:
    """``rows_loss`` of every backend: each chunk of ``encode_cues`` scored (``score_chunk``) against its
    rows' texts, in the ``lm_loss`` section, as one float array."""
    timings = timings or Timings()
    losses, start = [], 0
    with timings.section("lm_loss"):
        for chunk in encoded:
            rows = rows_of(chunk)
            losses.append(score_chunk(chunk, texts[start : start + rows]))
            start += rows
    return torch.cat(losses).float().cpu().numpy()


def decode_answers(tokenizer, ids: torch.Tensor) -> list[str]:
    """Generated ids as answers: special tokens dropped, whitespace stripped."""
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


class BackendBase:
    """What the backends share: the loaded pair and the engine's attributes, and ``score_regions`` in
    terms of the backend's ``encode_cues``/``rows_loss`` (each texts[i] scored as region i's caption)."""

    def __init__(self, model, processor, *, name: str, device: torch.device, weights_random: bool) -> None:
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        self.device = device
        self.weights_random = weights_random

    def score_regions(
        self,
        features: Any,
        cues: Sequence[RegionCue],
        texts: Sequence[str] | str,
        *,
        batch_size: int = 32,
        timings: Timings | None = None,
    ) -> np.ndarray:
        """Loss of each text as the caption of each region."""
        return score_cue_rows(self, features, cues, texts, batch_size=batch_size, timings=timings, task="caption")


def labels_hint(labels: Sequence[str], vocabulary_name: str = "") -> str:
    """RegionGPT's task-guided phrasing: "COCO-80 category names", or the list itself."""
    if vocabulary_name:
        return f"{vocabulary_name} category names"
    shown = ", ".join(labels[:40]) + (", ..." if len(labels) > 40 else "")
    return f"one of these names: {shown}"


# -- loading (each backend module's ``load(resolved, device, dtype, *, trust_remote_code)``) ---------------
def load_pretrained(resolved: ResolvedSource, model_class: type, *, dtype: torch.dtype, trust_remote_code: bool):
    """(model, processor) of a resolved region model, every failure a ModelLoadError; a model with
    random weights says so loudly. Import ``model_class`` before calling: importing it registers its
    config type (RegionGPT's), which AutoProcessor needs."""
    from transformers import AutoProcessor

    processor = from_pretrained(AutoProcessor, resolved.source, trust_remote_code=trust_remote_code)
    model = from_pretrained(model_class, resolved.source, dtype=dtype, trust_remote_code=trust_remote_code)
    if resolved.weights_random:
        loud_notice(f"{resolved.name}: RANDOM WEIGHTS (tiny offline model); "
                    "outputs exercise the code, they are not predictions.")
    return model, processor


@contextmanager
def wrapping(resolved: ResolvedSource) -> Iterator[None]:
    """Turning loaded weights into the engine's backend: any failure is an unreadable checkpoint."""
    try:
        yield
    except (ModelLoadError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as exc:
        raise resolved.error("unreadable_checkpoint", f"wrapping the loaded model failed: {one_line(exc)}") from exc
