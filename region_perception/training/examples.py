"""Training rows from a region dataset, with the region given the ways users give it.

Why: a model trained only on ground-truth masks never sees a single clicked point or a loose box, yet
the node gets those. Each row draws a region kind (points, scribble, box, mask) inside the annotated
object and turns it into a :class:`RegionCue` with the engine's own functions (``regions``,
``region_text``), so the points text and box a backend learns from are exactly what it is sent later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..datasets import RegionDataset, RegionSample
from ..geometry.region_text import points_to_text
from ..geometry.regions import (
    BoxRegion,
    MaskRegion,
    PointsRegion,
    Region,
    ScribbleRegion,
    mask_to_box,
    normalize_points,
    region_box,
    region_mask,
    region_points,
    sample_points_in_mask,
)
from ..models.backend import RegionCue
from .recipes import TASKS, TrainExample

REGION_KINDS = ("points", "scribble", "box", "mask")


def user_region(mask: np.ndarray, kind: str, rng: np.random.Generator) -> Region:
    """A region of ``kind`` a user could give for the object ``mask`` (points and scribbles inside it)."""
    if kind == "points":
        return PointsRegion(sample_points_in_mask(mask, int(rng.integers(1, 4)), rng))
    if kind == "scribble":
        return ScribbleRegion(sample_points_in_mask(mask, int(rng.integers(2, 4)), rng))
    if kind == "box":
        return BoxRegion(mask_to_box(mask))
    if kind == "mask":
        return MaskRegion(mask)
    raise ValueError(f"unknown region kind {kind!r}; expected one of {', '.join(REGION_KINDS)}")


def region_cue(region: Region, image_size: tuple[int, int], rng: np.random.Generator, k: int = 10) -> RegionCue:
    """The cue the engine (no segmenter) makes of ``region``: K points as text, the mask's box, the mask."""
    h, w = image_size
    mask = region_mask(region, image_size)
    pts = region_points(region, image_size, k, rng, mask=mask)
    box = mask_to_box(mask) if mask.any() else region_box(region, image_size)
    return RegionCue(points_to_text(normalize_points(pts, image_size)), (box[0] / w, box[1] / h, box[2] / w,
                                                                        box[3] / h), mask=mask)


def check_tasks(tasks: Sequence[str]) -> list[str]:
    """The tasks, validated (one clear error for an unknown one)."""
    out = [t.strip() for t in tasks if t.strip()]
    unknown = [t for t in out if t not in TASKS]
    if unknown or not out:
        raise ValueError(f"unknown task(s) {', '.join(unknown) or '(none given)'}; expected some of {', '.join(TASKS)}")
    return out


def targets(sample: RegionSample, task: str) -> list[str]:
    """What the model should say for ``sample`` under ``task`` (empty: nothing to learn)."""
    if task == "caption":
        return list(sample.captions)
    if task == "classify":
        return [sample.category] if sample.category else []
    return [sentence for _, sentence in sample.refs]


@dataclass
class ExampleSampler:
    """Draws random training rows (task, region kind, target) from a dataset held in memory."""

    dataset: RegionDataset
    tasks: list[str]
    points_per_region: int = 10
    kinds: tuple[str, ...] = REGION_KINDS
    rows_per_image: int = 4  # rows drawn from one image together: its encoding is shared in the batch
    # each referring row also brings its sentence with another object of its category in the same image (a
    # negative, ``TrainExample.negative_for``), beyond the ``n`` rows drawn
    refer_negatives: bool = False

    def __post_init__(self) -> None:
        self.tasks = check_tasks(self.tasks)
        self.rows = [(s, t) for s in self.dataset.samples for t in self.tasks if targets(s, t)]
        if not self.rows:
            raise ValueError(
                f"{self.dataset.root} ({self.dataset.split}): no annotation gives a target for {', '.join(self.tasks)}"
            )
        self.by_image: dict[int, list[int]] = {}
        for k, (sample, _) in enumerate(self.rows):
            self.by_image.setdefault(sample.image_id, []).append(k)
        self.image_ids = sorted(self.by_image)
        self._images: dict[int, np.ndarray] = {}
        self._masks: dict[int, np.ndarray] = {}

    def image(self, image_id: int) -> np.ndarray:
        if image_id not in self._images:
            self._images[image_id] = self.dataset.read_image(image_id)
        return self._images[image_id]

    def mask(self, sample: RegionSample) -> np.ndarray:
        if sample.ann_id not in self._masks:
            self._masks[sample.ann_id] = sample.mask()
        return self._masks[sample.ann_id]

    def draw(self, n: int, rng: np.random.Generator) -> list[TrainExample]:
        """``n`` rows, plus a negative after each referring row when ``refer_negatives``."""
        out: list[TrainExample] = []
        picks: list[int] = []
        drawn = 0
        while drawn < n:
            if not picks:
                rows = self.by_image[self.image_ids[int(rng.integers(len(self.image_ids)))]]
                picks = [rows[int(i)] for i in rng.integers(len(rows), size=min(self.rows_per_image, n - drawn))]
            sample, task = self.rows[picks.pop()]
            mask = self.mask(sample)
            if not mask.any():
                continue
            image = self.image(sample.image_id)
            region = user_region(mask, self.kinds[int(rng.integers(len(self.kinds)))], rng)
            cue = region_cue(region, mask.shape, rng, self.points_per_region)
            options = targets(sample, task)
            row = TrainExample(image=image, cue=cue, task=task, target=options[int(rng.integers(len(options)))],
                               labels=tuple(self.dataset.categories), image_id=sample.image_id)
            out.append(row)
            drawn += 1
            if task == "refer" and self.refer_negatives:
                negative = self.negative(row, sample, len(out) - 1, rng)
                if negative is not None:
                    out.append(negative)
        return out

    def negative(self, row: TrainExample, sample: RegionSample, index: int, rng: np.random.Generator
                 ) -> TrainExample | None:
        """``row``'s sentence with another object of the same category in its image (drawn uniformly), or None when
        there is none: those are the objects the sentence exists to tell apart (another category's is told apart
        by the head noun alone, and costs a row for a hinge that is already met)."""
        others = [s for s in self.dataset.samples_of(sample.image_id)
                  if s.ann_id != sample.ann_id and s.category == sample.category]
        while others:
            other = others.pop(int(rng.integers(len(others))))
            mask = self.mask(other)
            if mask.any():
                region = user_region(mask, self.kinds[int(rng.integers(len(self.kinds)))], rng)
                cue = region_cue(region, mask.shape, rng, self.points_per_region)
                return TrainExample(image=row.image, cue=cue, task="refer", target=row.target, labels=row.labels,
                                    image_id=row.image_id, negative_for=index)
        return None
