"""``eval segment``: how good a segmenter's masks are, by the interactive-segmentation protocol (no rclpy).

Why these figures: they are what SAM and the interactive-segmentation literature report, so a toy and a
released model are measured alike, and each has a baseline that needs no segmenter beside it:

- **one click**: the object's most interior pixel (the maximum of its distance transform) as a single
  positive click; mIoU over objects, and over small objects alone (``size`` attribute "small"), beside
  the disk the node draws at a click when it has no segmenter;
- **box**: the object's box as the prompt, beside the box itself as the mask;
- **NoC@85 / NoC@90**: clicks until the IoU reaches 85 / 90 % (at most ``max_clicks``, which counts as a
  failure): each next click at the centre of the largest error region, positive on a miss, negative on a
  spill, and each answer given the previous one's logits as SAM's mask prompt (SAM's interactive loop);
  beside the same protocol answered with disks;
- **proposals**: the automatic proposals' upper bound (each object's best IoU among its image's
  proposals, averaged) and how many proposals an image gets, beside superpixels.

Each click and box figure is also given for the objects that **touch** another one (within ``TOUCH_PX``
pixels of another object's mask: a star on a square, a circle half behind another), and NoC@85 for the
objects standing alone too: there the border to find is between two objects, not against the background,
and that is where a small segmenter fails (toy-sam: NoC@85 6.7 touching, 1.5 alone).
"""

from __future__ import annotations

import sys
from typing import Any

import cv2
import numpy as np

from ..datasets.types import RegionDataset
from .metrics import iou

DISK_RADIUS = 3  # geometry.regions.points_to_mask's default: what a click is without a segmenter
THRESHOLDS = (85, 90)
TOUCH_PX = 2  # an object within this many pixels of another object's mask touches it

# metric -> what stands beside it (the ``chance`` section holds the baseline's value)
BASELINES = {
    "one_click_mIoU": "disk at the click (radius 3 px, the node without a segmenter)",
    "one_click_mIoU_small": "disk at the click, small objects",
    "box_mIoU": "the box itself as the mask",
    "NoC@85": "disks at the same protocol's clicks (positive added, negative removed)",
    "NoC@90": "disks at the same protocol's clicks",
    "one_click_mIoU_touching": "disk at the click, objects touching another",
    "box_mIoU_touching": "the box as the mask, objects touching another",
    "NoC@85_touching": "disks at the same protocol's clicks, objects touching another",
    "NoC@85_alone": "disks at the same protocol's clicks, objects touching no other",
    "proposal_upper_bound_mIoU": "superpixels (Felzenszwalb, the route without a segmenter)",
    "proposals_per_image": "superpixels",
}


def touching(masks: list[np.ndarray], px: int = TOUCH_PX) -> list[bool]:
    """Per mask of one image: whether it lies within ``px`` pixels of another of the masks."""
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    grown = [cv2.dilate(np.asarray(m, dtype=np.uint8), kernel).astype(bool) for m in masks]
    return [any((g & m).any() for j, m in enumerate(masks) if j != i) for i, g in enumerate(grown)]


def interior_point(mask: np.ndarray) -> np.ndarray:
    """The mask's most interior pixel centre (x, y): the maximum of its distance transform, the image
    border counted as outside."""
    padded = np.pad(mask.astype(np.uint8), 1)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return np.array([x + 0.5, y + 0.5])


def correction_click(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, int] | None:
    """The next click of the interactive protocol: the centre of the largest error region (by its
    distance transform), label 1 on a miss (false negative), 0 on a spill (false positive); None when
    the prediction is perfect."""
    best: tuple[float, np.ndarray, int] | None = None
    for error, label in ((gt & ~pred, 1), (pred & ~gt, 0)):
        if not error.any():
            continue
        padded = np.pad(error.astype(np.uint8), 1)
        dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
        y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
        if best is None or dist[y, x] > best[0]:
            best = (float(dist[y, x]), np.array([x + 0.5, y + 0.5]), label)
    return None if best is None else (best[1], best[2])


def box_of(mask: np.ndarray) -> np.ndarray:
    """The mask's box (x0, y0, x1, y1), pixel edges."""
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


def disk_mask(points: np.ndarray, labels: np.ndarray, shape: tuple[int, int], radius: int = DISK_RADIUS) -> np.ndarray:
    """The baseline answer to clicks: disks at the positive clicks, less disks at the negative ones."""
    from ..geometry.regions import points_to_mask

    labels = np.asarray(labels)
    pos = points_to_mask(points[labels == 1], shape, radius) if (labels == 1).any() else np.zeros(shape, bool)
    if (labels == 0).any():
        pos &= ~points_to_mask(points[labels == 0], shape, radius)
    return pos


def clicks_to_reach(answer, gt: np.ndarray, max_clicks: int = 20) -> tuple[dict[int, int], list[float]]:
    """The interactive protocol for one object: ``answer(points, labels) -> mask``. Returns the clicks
    needed for each of :data:`THRESHOLDS` (``max_clicks`` when never reached) and the IoU after each click."""
    points = [interior_point(gt)]
    labels = [1]
    ious: list[float] = []
    reached: dict[int, int | None] = {t: None for t in THRESHOLDS}
    for k in range(1, max_clicks + 1):
        pred = answer(np.array(points), np.array(labels))
        value = iou(pred, gt)
        ious.append(value)
        for t in THRESHOLDS:
            if reached[t] is None and value >= t / 100:
                reached[t] = k
        if value >= max(THRESHOLDS) / 100:
            break
        click = correction_click(pred, gt)
        if click is None:
            break
        points.append(click[0])
        labels.append(click[1])
    return {t: max_clicks if k is None else k for t, k in reached.items()}, ious


def interactive_answer(segmenter, key: str, image: np.ndarray):
    """``answer(points, labels) -> mask`` for one object's clicks, as SAM's interactive loop runs: each answer
    is given the previous answer's low-resolution logits as the mask prompt (a segmenter without
    ``segment_interactive`` answers from the clicks alone)."""
    if not hasattr(segmenter, "segment_interactive"):
        return lambda p, lab: segmenter.segment(key, image, points=p, labels=lab)
    prior: np.ndarray | None = None

    def answer(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
        nonlocal prior
        mask, prior = segmenter.segment_interactive(key, image, points=points, labels=labels, prior=prior)
        return mask

    return answer


def _pct(values: list[float]) -> float | None:
    return round(100 * float(np.mean(values)), 2) if values else None


def evaluate_segmenter(segmenter, dataset: RegionDataset, *, limit: int | None = None, max_clicks: int = 20,
                       proposals: bool = True, noc: bool = True, progress: bool = False, seed: int = 0,
                       baseline_proposer=None) -> dict[str, Any]:
    """The figures of the module docstring over the first ``limit`` images of ``dataset`` (all when None),
    with their baselines: ``{"task", "n", "images", <metric>: value, "chance": {<metric>: baseline value},
    "baselines": {<metric>: what the baseline is}, ...}``; mIoU in percent, NoC in clicks.

    ``segmenter`` follows ``models.sam.Segmenter`` (``segment(key, image, box=, points=, labels=)``,
    ``propose(key, image)``); ``baseline_proposer`` defaults to superpixels. ``seed`` is unused by the
    protocol (it is deterministic) and kept for the harness's signature.
    """
    from tqdm import tqdm

    if baseline_proposer is None:
        from ..common.feature_cache import FeatureCache
        from ..models.sam import SuperpixelProposer

        baseline_proposer = SuperpixelProposer(FeatureCache(1))
    image_ids = [i for i in dataset.images if dataset.samples_of(i)]
    if limit:
        image_ids = image_ids[:limit]
    one, one_small, disk, disk_small, box, box_base = [], [], [], [], [], []
    clicks: dict[int, list[int]] = {t: [] for t in THRESHOLDS}
    noc_disk: dict[int, list[int]] = {t: [] for t in THRESHOLDS}
    best, best_sp, counts, counts_sp = [], [], [], []
    near: list[bool] = []  # per object: touches another (see touching)
    for image_id in tqdm(image_ids, desc="eval segment", unit="image", file=sys.stderr, disable=not progress):
        image = dataset.read_image(image_id)
        key = f"eval-segment:{dataset.root}:{dataset.split}:{image_id}"
        shape = image.shape[:2]
        samples = [(s, s.mask()) for s in dataset.samples_of(image_id)]
        samples = [(s, m) for s, m in samples if m.any()]
        near += touching([m for _, m in samples])
        for sample, gt in samples:
            click = interior_point(gt)[None]
            small = sample.attributes.get("size") == "small"
            value = iou(segmenter.segment(key, image, points=click, labels=np.ones(1, np.int64)), gt)
            base = iou(disk_mask(click, np.ones(1), shape), gt)
            one.append(value)
            disk.append(base)
            if small:
                one_small.append(value)
                disk_small.append(base)
            b = box_of(gt)
            box.append(iou(segmenter.segment(key, image, box=b), gt))
            filled = np.zeros(shape, dtype=bool)
            filled[int(b[1]):int(b[3]), int(b[0]):int(b[2])] = True
            box_base.append(iou(filled, gt))
            if noc:
                answer = interactive_answer(segmenter, key, image)

                def answer_disk(p: np.ndarray, lab: np.ndarray, shape: tuple = shape) -> np.ndarray:
                    return disk_mask(p, lab, shape)

                needed, _ = clicks_to_reach(answer, gt, max_clicks)
                needed_disk, _ = clicks_to_reach(answer_disk, gt, max_clicks)
                for t in THRESHOLDS:
                    clicks[t].append(needed[t])
                    noc_disk[t].append(needed_disk[t])
        if proposals and samples:
            props = segmenter.propose(key, image).masks
            sp = baseline_proposer.propose(key, image).masks
            counts.append(len(props))
            counts_sp.append(len(sp))
            for _, gt in samples:
                best.append(max((iou(m, gt) for m in props), default=0.0))
                best_sp.append(max((iou(m, gt) for m in sp), default=0.0))
    out: dict[str, Any] = {
        "task": "segment", "model": getattr(segmenter, "name", ""), "split": dataset.split, "n": len(one),
        "n_small": len(one_small), "images": len(image_ids),
        "one_click_mIoU": _pct(one), "one_click_mIoU_small": _pct(one_small), "box_mIoU": _pct(box),
    }
    chance: dict[str, Any] = {"one_click_mIoU": _pct(disk), "one_click_mIoU_small": _pct(disk_small),
                              "box_mIoU": _pct(box_base)}
    flags = np.array(near, dtype=bool)

    def part(values: list, which: np.ndarray, scale: float = 100.0) -> float | None:
        chosen = np.asarray(values, dtype=float)[which]
        return round(scale * float(chosen.mean()), 2) if chosen.size else None

    out["n_touching"] = int(flags.sum())
    for key, values, base in (("one_click_mIoU", one, disk), ("box_mIoU", box, box_base)):
        out[f"{key}_touching"], chance[f"{key}_touching"] = part(values, flags), part(base, flags)
    if noc:
        for t in THRESHOLDS:
            out[f"NoC@{t}"] = round(float(np.mean(clicks[t])), 2) if clicks[t] else None
            chance[f"NoC@{t}"] = round(float(np.mean(noc_disk[t])), 2) if noc_disk[t] else None
        for name, which in (("touching", flags), ("alone", ~flags)):
            out[f"NoC@85_{name}"], chance[f"NoC@85_{name}"] = part(clicks[85], which, 1), part(noc_disk[85], which, 1)
        out["max_clicks"] = max_clicks
        out["NoC_failures@90"] = round(100 * float(np.mean([n >= max_clicks for n in clicks[90]])), 2) \
            if clicks[90] \
            else None
    if proposals:
        out["proposal_upper_bound_mIoU"] = _pct(best)
        out["proposals_per_image"] = round(float(np.mean(counts)), 2) if counts else None
        chance["proposal_upper_bound_mIoU"] = _pct(best_sp)
        chance["proposals_per_image"] = round(float(np.mean(counts_sp)), 2) if counts_sp else None
    out["chance"] = chance
    out["baselines"] = {k: v for k, v in BASELINES.items() if k in chance}
    if getattr(segmenter, "weights_random", False):
        out["notes"] = ["RANDOM WEIGHTS: these figures measure the code path, not a trained model"]
    return out


def table_rows(summary: dict) -> list[str]:
    """Markdown rows ``| metric | value | baseline | baseline value |`` of an :func:`evaluate_segmenter` summary."""
    rows = []
    for key, what in summary.get("baselines", BASELINES).items():
        value = summary.get(key)
        base = summary.get("chance", {}).get(key)
        rows.append(f"| {key} | {'-' if value is None else value} | {what} | {'-' if base is None else base} |")
    return rows
