"""Per-backend training recipes: what the trainer asks of a backend (no rclpy).

Why an interface: the trainer (AdamW, schedule, accumulation, Accelerate, checkpoints, eval) is the
same for every backend; only how a batch is built from regions, how the loss is computed and which
parameters exist differ. A recipe is registered by backend name in :data:`RECIPES`; adding a backend
is one module under this package plus one line in :func:`_load_builtin`.

Contract (see :class:`TrainRecipe`):

- ``load(name_or_path, device)`` -> ``(model, processor)``: the transformers model in train mode
  and its processor, from any directory ``from_pretrained`` reads (or a registry name).
- ``parameter_groups(model)`` -> ``{group: [parameter names]}``: named groups for ``--train``
  (e.g. ``vision``, ``qformer``, ``projection``, ``lm``); every trainable parameter in exactly one.
- ``default_train``: the groups the paper's recipe trains (the rest are frozen).
- ``build_batch(model, processor, examples, pixels=True)`` -> dict of tensors (on CPU; the trainer moves
  them): ``image_index`` maps each row to its distinct image (:func:`distinct_images`), ``pixel_values``
  holds the distinct images (``vision_pixels``); with ``pixels=False`` it is left out for the trainer to
  put ``image_features`` (``tower_features`` of the same images, from its cache) in its place.
- ``row_losses(model, batch)`` -> ``(sums, counts)``: each row's summed target-token cross-entropy and its
  number of target tokens (:func:`row_token_losses` of the model's logits), from ``image_features`` when the
  batch has them, else ``tower_features`` of ``pixel_values``. ``loss`` (:class:`RecipeBase`) is their token
  mean; the trainer calls them inside the forward of a wrapper module, so under DDP/FSDP any submodule calls
  here are synchronised. Per row, because a referring sentence's negatives (``negative_for``) are scored
  against its positive (:func:`referring_loss`).
- ``tower_features(model, pixel_values)`` -> ``(N, ...)``: the vision tower's output per image, everything
  ``loss`` reads of an image before a part that may train; with the tower frozen stage 1 computes it once
  per image (the trainer's ``TowerCache``), so it must not depend on the rest of the batch.
- ``save(model, processor, out)``: ``save_pretrained`` (safetensors) of both.
- Stage 0 (``train --stage vision``, :mod:`..vision`): ``vision_pixels(processor, images)`` -> the
  tower's input, ``vision_grid(model, pixels)`` -> ``(B, C, G, G)`` the features the region pathway
  reads, and ``pad_square`` (the backend pads images to a centred square before resizing).

An example (:class:`TrainExample`) is one (image, region, task, target) row that the trainer draws
from a :class:`~region_perception.datasets.RegionDataset`; the region is given the way a user gives it
(points, scribble, box or mask, drawn by the trainer), already turned into the engine's
:class:`~region_perception.models.backend.RegionCue` so that training sees what inference sees.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...models.backend import RegionCue

TASKS = ("caption", "classify", "refer")


@dataclass
class TrainExample:
    """One training row: the target text the model should give for this region and task."""

    image: np.ndarray = field(repr=False)  # RGB uint8 HxWx3
    cue: RegionCue  # the region as the engine would give it to the backend
    task: str  # "caption" | "classify" | "refer"
    target: str  # caption, category name, or referring sentence
    labels: tuple[str, ...] = ()  # classify: the candidate names (the prompt's hint)
    image_id: int = -1
    # a referring sentence given with another object's region: the batch index of the row it is the negative
    # of (-1: an ordinary row, trained to say its target)
    negative_for: int = -1


class TrainRecipe(Protocol):
    backend: str
    default_train: tuple[str, ...]

    def load(self, name_or_path: str, device: torch.device) -> tuple[Any, Any]: ...

    def parameter_groups(self, model: torch.nn.Module) -> dict[str, list[str]]: ...

    def build_batch(self, model: torch.nn.Module, processor: Any, examples: Sequence[TrainExample],
                    pixels: bool = True) -> dict: ...

    def row_losses(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]: ...

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor: ...

    def save(self, model: torch.nn.Module, processor: Any, out) -> None: ...

    def vision_pixels(self, processor: Any, images: Sequence[np.ndarray]) -> torch.Tensor: ...

    def vision_grid(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor: ...

    def tower_features(self, model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor: ...


def distinct_images(examples: Sequence[TrainExample]) -> tuple[torch.Tensor, list[np.ndarray], list[int]]:
    """Rows that share an image (same ``image_id``) share one encoding: (row -> image index, the images, their
    keys). A key is the ``image_id``, or negative for a row without one (its image is its own, never cached)."""
    index: dict[int, int] = {}
    images: list[np.ndarray] = []
    rows = []
    for k, e in enumerate(examples):
        key = e.image_id if e.image_id >= 0 else -1 - k
        if key not in index:
            index[key] = len(images)
            images.append(e.image)
        rows.append(index[key])
    return torch.tensor(rows, dtype=torch.long), images, list(index)


def unique_images(examples: Sequence[TrainExample]) -> tuple[torch.Tensor, list[np.ndarray]]:
    """(row -> image index, the distinct images) of :func:`distinct_images`."""
    index, images, _ = distinct_images(examples)
    return index, images


def image_features(recipe, model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The batch's per-image tower output: given by the trainer (cached), or computed from its pixels."""
    if "image_features" in batch:
        return batch["image_features"]
    return recipe.tower_features(model, batch["pixel_values"])


def row_token_losses(logits: torch.Tensor, labels: torch.Tensor, *, causal: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's summed cross-entropy over its scored tokens (labels not -100) and how many there are.

    ``causal``: a decoder-only LM's logits predict the next position (shifted as its own loss does). The
    token mean over a batch is exactly the loss transformers' models return for the same labels.
    """
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    scored = labels != -100
    token_loss = F.cross_entropy(logits[scored].float(), labels[scored], reduction="none")
    rows = torch.nonzero(scored, as_tuple=True)[0]
    sums = torch.zeros(labels.shape[0], device=labels.device).index_add(0, rows, token_loss)
    return sums, scored.sum(dim=1)


def negative_index(examples: Sequence[TrainExample]) -> torch.Tensor | None:
    """The batch's ``negative_for`` column, or None when no row is a negative (the plain loss then)."""
    if all(e.negative_for < 0 for e in examples):
        return None
    return torch.tensor([e.negative_for for e in examples], dtype=torch.long)


def referring_loss(sums: torch.Tensor, counts: torch.Tensor, negative_for: torch.Tensor, margin: float,
                   weight: float) -> torch.Tensor:
    """The ordinary rows' token-mean loss plus ``weight`` x a hinge per negative row: its sentence must cost
    at least ``margin`` (mean nats a token) more than with its positive's region.

    Why: REFER picks the region whose sentence loss is lowest, but the language-model loss alone never sees a
    wrong region, so nothing teaches that "the triangle above the orange triangle" fits the orange triangle
    worse than the triangle above it. This is the max-margin form of maximum mutual information training for
    referring expressions (Mao et al., CVPR 2016), on the loss REFER ranks by.
    """
    ordinary = negative_for < 0
    lm = sums[ordinary].sum() / counts[ordinary].sum().clamp(min=1)
    negatives = torch.nonzero(~ordinary, as_tuple=True)[0]
    if negatives.numel() == 0:
        return lm
    mean = sums / counts.clamp(min=1)
    hinge = F.relu(margin + mean[negative_for[negatives]] - mean[negatives])
    return lm + weight * hinge.mean()


def tokens_to_grid(tokens: torch.Tensor) -> torch.Tensor:
    """(B, G*G, C) patch tokens -> (B, C, G, G)."""
    b, n, c = tokens.shape
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} patch tokens are not a square grid")
    return tokens.transpose(1, 2).reshape(b, c, g, g)


RECIPES: dict[str, Callable[[], TrainRecipe]] = {}


def register(backend: str, factory: Callable[[], TrainRecipe]) -> None:
    """Make ``factory`` the recipe of ``backend`` (a later registration replaces an earlier one)."""
    RECIPES[backend] = factory


def _load_builtin() -> None:
    """Import the built-in recipes (each registers itself); a missing optional one is skipped."""
    import importlib

    for module in ("regionvlm", "florence2", "regiongpt"):
        try:
            importlib.import_module(f"{__name__}.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{module}":
                raise


def get_recipe(backend: str) -> TrainRecipe:
    """The recipe for a backend name; a clear error naming the known ones otherwise."""
    if backend not in RECIPES:
        _load_builtin()
    if backend not in RECIPES:
        raise ValueError(f"no training recipe for backend {backend!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[backend]()


def select_trainable(model: torch.nn.Module, groups: dict[str, list[str]], train: Sequence[str]) -> list[str]:
    """Freeze every parameter, then unfreeze the named groups; returns the trained parameter names."""
    unknown = [g for g in train if g not in groups]
    if unknown:
        raise ValueError(f"unknown --train group(s) {', '.join(unknown)}; this backend has {', '.join(groups)}")
    names = {n for g in train for n in groups[g]}
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
    return sorted(names)


class RecipeBase:
    """What the recipes share: ``load`` from any name ``loading.resolve`` knows (registry, tiny, toy,
    local path, hub id), ``parameter_groups`` from the class's :attr:`groups` prefixes, ``save``.

    A recipe sets ``groups`` and ``model_class()``; ``processor_class()`` and ``prepare()`` (run on the
    freshly loaded pair, e.g. RegionGPT's ``<region>`` token) where they differ.
    """

    groups: ClassVar[dict[str, tuple[str, ...]]] = {}

    def model_class(self) -> type:
        raise NotImplementedError

    def processor_class(self) -> type:
        from transformers import AutoProcessor

        return AutoProcessor

    def prepare(self, model: torch.nn.Module, processor: Any) -> None:
        """Fix up a freshly loaded (model, processor) before training (nothing by default)."""

    def load(self, name_or_path: str, device: torch.device) -> tuple[Any, Any]:
        from ...models.loading import resolve

        path = str(resolve(name_or_path).path)
        model = self.model_class().from_pretrained(path, dtype=torch.float32)
        processor = self.processor_class().from_pretrained(path)
        self.prepare(model, processor)
        return model.to(device).train(), processor

    def parameter_groups(self, model: torch.nn.Module) -> dict[str, list[str]]:
        return groups_by_prefix(model, self.groups)

    def row_losses(self, model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """Mean token cross-entropy of the targets over the batch."""
        sums, counts = self.row_losses(model, batch)
        return sums.sum() / counts.sum().clamp(min=1)

    def save(self, model: torch.nn.Module, processor: Any, out) -> None:
        model.save_pretrained(out, safe_serialization=True)
        processor.save_pretrained(out)


def groups_by_prefix(model: torch.nn.Module, prefixes: dict[str, tuple[str, ...]]) -> dict[str, list[str]]:
    """Parameter groups from name prefixes; a parameter matching none goes to the last group."""
    out: dict[str, list[str]] = {g: [] for g in prefixes}
    last = list(prefixes)[-1]
    for name, _ in model.named_parameters():
        group = next((g for g, ps in prefixes.items() if name.startswith(ps)), last)
        out[group].append(name)
    return out
