"""Stage 0: pre-train a model's vision tower with dense, direct supervision (``train --stage vision``).

Why: RegionVLM (BLIP-2) and RegionGPT (LLaVA) train their region pathway on a pre-trained, frozen
vision encoder, and Florence-2's DaViT is pre-trained too. A tower that must discover shape through a
language model's loss learns it far too slowly (the toys stayed at chance on shape). Here the tower's
output grid (G x G cells of C features) gets two losses from any COCO-format dataset with masks:

- **dense**: a linear head on every cell predicts the soft per-cell class mix (the fraction of the cell
  each category covers, plus background), and likewise each categorical attribute the annotations
  carry (the synthetic world: colour and size);
- **pooled**: each object's feature is the mean of the cells weighted by how much of each cell its mask
  covers, and linear heads classify it (category and attributes).

The heads exist only for this stage; the saved model is the base with its tower trained, marked so
that stage 1 (``train`` with the default stage) freezes the tower and trains the region pathway.
On the synthetic world this makes the toys' towers; on a user's COCO data it adapts a tower to their
domain. Plain Python, no rclpy.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import RegionDataset

STAGE0_META = "vision_pretrained"  # key in region_perception.json: the tower was trained by stage 0


def label_spaces(dataset: RegionDataset) -> dict[str, list[str]]:
    """What the heads predict: ``category`` and every categorical attribute that is not the category again."""
    spaces: dict[str, list[str]] = {"category": list(dataset.categories)}
    keys = sorted({k for s in dataset.samples for k, v in s.attributes.items() if isinstance(v, str)})
    for key in keys:
        values = [s.attributes.get(key) for s in dataset.samples]
        if all(v == s.category for v, s in zip(values, dataset.samples, strict=True)):
            continue  # e.g. the synthetic world's "shape": the category itself
        found = sorted({v for v in values if isinstance(v, str)})
        if len(found) >= 2:
            spaces[key] = found
    return spaces


def _pool(maps: np.ndarray, grid: int) -> np.ndarray:
    """(K, H, W) float maps -> (K, grid, grid): the fraction of each cell each map covers."""
    return F.adaptive_avg_pool2d(torch.from_numpy(maps).float(), grid).numpy()


@dataclass
class ImageTargets:
    """One image's targets on the tower's grid (flipping a grid flips the image: the pooling bins are symmetric)."""

    dense: dict[str, np.ndarray]  # key -> (K + 1, G, G) soft class mix, background first
    weights: np.ndarray  # (objects, G, G) each object's cover of each cell
    labels: dict[str, np.ndarray]  # key -> (objects,) class index, -1 where the object has no such label
    object_attrs: list[dict[str, str]] = field(default_factory=list)


class VisionSampler:
    """Images of a dataset split with their dense and pooled targets, computed once per image."""

    def __init__(self, dataset: RegionDataset, spaces: dict[str, list[str]], grid: int, *,
                 pad_square: bool = False) -> None:
        self.dataset = dataset
        self.spaces = spaces
        self.grid = grid
        self.pad_square = pad_square
        self.image_ids = sorted(i for i in dataset.images if dataset.samples_of(i))
        if not self.image_ids:
            raise ValueError(f"{dataset.root} ({dataset.split}): no image has an annotated region")
        self._cache: dict[int, tuple[np.ndarray, ImageTargets]] = {}

    def _frame(self, array: np.ndarray, fill) -> np.ndarray:
        """The array as the model sees its image: padded to a centred square where the backend pads."""
        if not self.pad_square or array.shape[0] == array.shape[1]:
            return array
        h, w = array.shape[:2]
        side = max(h, w)
        out = np.empty((side, side, *array.shape[2:]), dtype=array.dtype)
        out[...] = fill
        top, left = (side - h) // 2, (side - w) // 2
        out[top : top + h, left : left + w] = array
        return out

    def item(self, image_id: int) -> tuple[np.ndarray, ImageTargets]:
        if image_id in self._cache:
            return self._cache[image_id]
        image = self.dataset.read_image(image_id)
        samples = self.dataset.samples_of(image_id)
        masks = [self._frame(s.mask(), False) for s in samples]
        keep = [k for k, m in enumerate(masks) if m.any()]
        samples, masks = [samples[k] for k in keep], [masks[k] for k in keep]
        h, w = masks[0].shape if masks else self._frame(image[..., 0], 0).shape
        dense: dict[str, np.ndarray] = {}
        labels: dict[str, np.ndarray] = {}
        for key, names in self.spaces.items():
            index = {n: i for i, n in enumerate(names)}
            owner = np.zeros((h, w), dtype=np.int64)  # 0 = background; later regions on top
            per_object = []
            for s, m in zip(samples, masks, strict=True):
                value = s.category if key == "category" else s.attributes.get(key)
                k = index.get(value, -1) if isinstance(value, str) else -1
                per_object.append(k)
                if k >= 0:
                    owner[m] = k + 1
            onehot = np.eye(len(names) + 1, dtype=np.float32)[owner].transpose(2, 0, 1)
            dense[key] = _pool(onehot, self.grid)
            labels[key] = np.asarray(per_object, dtype=np.int64)
        weights = (_pool(np.stack(masks).astype(np.float32), self.grid) if masks
                   else np.zeros((0, self.grid, self.grid), np.float32))
        targets = ImageTargets(dense, weights, labels, [dict(s.attributes) for s in samples])
        self._cache[image_id] = (image, targets)
        return self._cache[image_id]

    def draw(self, n: int, rng: np.random.Generator, *, flip: bool = True) -> list[tuple[np.ndarray, ImageTargets]]:
        """``n`` random images with their targets, each flipped left-right with probability 1/2."""
        out = []
        for i in rng.integers(len(self.image_ids), size=n):
            image, t = self.item(self.image_ids[int(i)])
            if flip and rng.random() < 0.5:
                image = image[:, ::-1]
                t = ImageTargets({k: v[..., ::-1] for k, v in t.dense.items()}, t.weights[..., ::-1], t.labels,
                                 t.object_attrs)
            out.append((np.ascontiguousarray(image), t))
        return out


def collate(recipe, processor, items: Sequence[tuple[np.ndarray, ImageTargets]], spaces: dict[str, list[str]]
            ) -> dict:
    """Pixels and stacked targets of a batch; objects of all images in one list with their image index."""
    images = [image for image, _ in items]
    batch: dict = {"pixel_values": recipe.vision_pixels(processor, images)}
    owners, weights = [], []
    for b, (_, t) in enumerate(items):
        owners += [b] * len(t.weights)
        weights.append(torch.from_numpy(np.ascontiguousarray(t.weights)))
    batch["object_image"] = torch.tensor(owners, dtype=torch.long)
    batch["object_weights"] = torch.cat(weights) if weights else torch.zeros(0)
    for key in spaces:
        batch[f"dense:{key}"] = torch.stack([torch.from_numpy(np.ascontiguousarray(t.dense[key])) for _, t in items])
        batch[f"label:{key}"] = torch.cat([torch.from_numpy(t.labels[key]) for _, t in items])
    return batch


class VisionHeads(torch.nn.Module):
    """Linear dense and pooled heads per label space (the stage's only new parameters)."""

    def __init__(self, channels: int, spaces: dict[str, list[str]]) -> None:
        super().__init__()
        self.spaces = spaces
        self.dense = torch.nn.ModuleDict({k: torch.nn.Linear(channels, len(v) + 1) for k, v in spaces.items()})
        self.pooled = torch.nn.ModuleDict({k: torch.nn.Linear(channels, len(v)) for k, v in spaces.items()})

    @staticmethod
    def pool(grid: torch.Tensor, batch: dict) -> torch.Tensor:
        """Each object's feature: its image's cells (B, C, G, G) weighted by its cover of each cell."""
        w = batch["object_weights"].to(grid.dtype)
        cells = grid[batch["object_image"]].flatten(2)  # (N, C, G*G)
        w = w.flatten(1)
        return (cells @ w.unsqueeze(-1)).squeeze(-1) / w.sum(dim=1, keepdim=True).clamp(min=1e-6)

    def loss(self, grid: torch.Tensor, batch: dict) -> torch.Tensor:
        cells = grid.flatten(2).transpose(1, 2)  # (B, G*G, C)
        pooled = self.pool(grid, batch) if len(batch["object_image"]) else None
        total = grid.new_zeros(())
        for key in self.spaces:
            target = batch[f"dense:{key}"].to(grid.dtype).flatten(2).transpose(1, 2)  # (B, G*G, K+1)
            logp = F.log_softmax(self.dense[key](cells), dim=-1)
            total = total - (target * logp).sum(-1).mean()
            labels = batch[f"label:{key}"]
            if pooled is not None and bool((labels >= 0).any()):
                total = total + F.cross_entropy(self.pooled[key](pooled), labels, ignore_index=-1)
        return total


class VisionStage(torch.nn.Module):
    """The model and the heads as one module, so DDP/FSDP wrap the forward that computes the loss."""

    def __init__(self, model: torch.nn.Module, recipe, heads: VisionHeads) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.heads = heads

    def forward(self, batch: dict) -> torch.Tensor:
        return self.heads.loss(self.recipe.vision_grid(self.model, batch["pixel_values"]), batch)


def grid_shape(recipe, model, processor, image: np.ndarray) -> tuple[int, int]:
    """(channels, G) of the tower's output grid, from one forward."""
    with torch.no_grad():
        out = recipe.vision_grid(model, recipe.vision_pixels(processor, [image]))
    if out.shape[-1] != out.shape[-2]:
        raise ValueError(f"the vision tower's grid is not square: {tuple(out.shape)}")
    return int(out.shape[1]), int(out.shape[-1])


@torch.no_grad()
def probe_accuracy(stage: VisionStage, processor, sampler: VisionSampler, *, batch_size: int = 32,
                   device: torch.device | str = "cpu") -> dict:
    """Pooled-head accuracy per label space on every image of ``sampler`` (no flip), split by size word."""
    stage.eval()
    spaces = stage.heads.spaces
    right = {k: 0 for k in spaces}
    seen = {k: 0 for k in spaces}
    by_size: dict[str, list[int]] = {}
    for start in range(0, len(sampler.image_ids), batch_size):
        items = [sampler.item(i) for i in sampler.image_ids[start : start + batch_size]]
        batch = collate(stage.recipe, processor, items, spaces)
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        if not len(batch["object_image"]):
            continue
        grid = stage.recipe.vision_grid(stage.model, batch["pixel_values"])
        pooled = VisionHeads.pool(grid, batch)
        sizes = [a.get("size", "") for _, t in items for a in t.object_attrs]
        for key in spaces:
            labels = batch[f"label:{key}"]
            hit = (stage.heads.pooled[key](pooled).argmax(-1) == labels) & (labels >= 0)
            right[key] += int(hit.sum())
            seen[key] += int((labels >= 0).sum())
            if key == "category":
                for s, h in zip(sizes, hit.tolist(), strict=True):
                    by_size.setdefault(s, [0, 0])[0] += int(h)
                    by_size[s][1] += 1
    out = {k: {"accuracy": round(100.0 * right[k] / max(seen[k], 1), 2), "n": seen[k],
               "chance": round(100.0 / len(spaces[k]), 2)} for k in spaces}
    if len(by_size) > 1 or "" not in by_size:
        out["category"]["by_size"] = {s: round(100.0 * r / max(n, 1), 2) for s, (r, n) in sorted(by_size.items())}
    return out


def mark_stage0(out: Path, *, data: str, steps: int, probe: dict) -> None:
    """Say in the directory that its tower is pre-trained (stage 1 then freezes it) and the rest is not."""
    from ..models.tiny import RANDOM_WEIGHTS_MARKER

    meta_path = Path(out) / "region_perception.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.update({STAGE0_META: True, "stage0": {"data": data, "steps": steps, "probe": probe}})
    meta_path.write_text(json.dumps(meta, indent=1))
    marker = Path(out) / RANDOM_WEIGHTS_MARKER
    if marker.exists():
        marker.write_text("Vision tower pre-trained by `region-perception train --stage vision`; every other part "
                          "has RANDOM weights until `region-perception train` (stage 1) has run.\n")
