"""Scoring predictions made elsewhere, in the COCO results formats, with the same metric code.

Why: another system's numbers are only comparable when computed by the same code on the same
samples. Formats: classify - COCO detection results ``{image_id, category_id, bbox, score}`` (one per
ground-truth box and category, matched to the box by IoU >= 0.9); refer - ``{ref_id, segmentation}``
(RLE; optional ``sentence`` to tell a ref's sentences apart); comprehension - ``{ref_id, bbox or
segmentation}``; caption - ``{ann_id or ref_id, caption}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..datasets.types import RegionDataset, segmentation_to_mask
from . import metrics
from .rows import base_row, error_row


def load_predictions(path: Path | str) -> list[dict]:
    """A JSON list or JSON lines of result dicts."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file {path} does not exist")
    text = path.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: neither a JSON list nor JSON lines ({exc})") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ValueError(f"{path}: expected a list of result objects")
    return data


def _need(pred: dict, keys: tuple[str, ...], path) -> None:
    missing = [k for k in keys if k not in pred]
    if missing:
        raise ValueError(f"{path}: a prediction lacks {', '.join(missing)}: {json.dumps(pred)[:120]}")


def prediction_rows(task: str, path: Path | str, dataset: RegionDataset) -> Callable:
    """A function from an evaluation item to its row, read from the predictions file."""
    preds = load_predictions(path)
    names = dataset.category_ids or {k + 1: c for k, c in enumerate(dataset.categories)}

    if task == "classify":
        by_image: dict[int, list[dict]] = {}
        for p in preds:
            _need(p, ("image_id", "category_id", "bbox", "score"), path)
            by_image.setdefault(int(p["image_id"]), []).append(p)

        def classify_row(item):
            scores: dict[str, float] = {}
            for p in by_image.get(item.sample.image_id, []):
                name = names.get(int(p["category_id"]))
                if name is not None and metrics.box_iou(p["bbox"], item.sample.bbox) >= 0.9:
                    scores[name] = max(scores.get(name, float("-inf")), float(p["score"]))
            if not scores:
                return error_row(task, item, LookupError("no prediction for this box"))
            pred = max(scores, key=scores.get)
            return {**base_row(item), "pred": pred, "text": None, "exact": None, "scores": scores}

        return classify_row

    if task in ("refer", "comprehension"):
        by_ref: dict[int, list[dict]] = {}
        for p in preds:
            _need(p, ("ref_id",), path)
            by_ref.setdefault(int(p["ref_id"]), []).append(p)

        def mask_of(p, sample) -> np.ndarray:
            if "segmentation" in p:
                return segmentation_to_mask(p["segmentation"], sample.height, sample.width)
            _need(p, ("bbox",), path)
            x, y, w, h = p["bbox"]
            return segmentation_to_mask([[x, y, x + w, y, x + w, y + h, x, y + h]], sample.height, sample.width)

        def ref_row(item):
            cands = by_ref.get(item.ref_id, [])
            exact = [p for p in cands if p.get("sentence") == item.sentence]
            picks = exact or [p for p in cands if "sentence" not in p]
            if not picks:
                return error_row(task, item, LookupError("no prediction for this sentence"))
            gt = item.sample.mask()
            pred = mask_of(picks[0], item.sample)
            if task == "refer":
                inter, union = metrics.intersection_union(pred, gt)
                return {**base_row(item), "intersection": inter, "union": union, "iou": inter / union if union else 0.0}
            value = metrics.iou(pred, gt)
            return {**base_row(item), "selected_iou": value, "correct": bool(value >= 0.5)}

        return ref_row

    ann_of_ref = {ref_id: s.ann_id for s in dataset.samples for ref_id, _ in s.refs}
    by_ann: dict[int, str] = {}
    for p in preds:
        _need(p, ("caption",), path)
        if "ann_id" in p:
            by_ann.setdefault(int(p["ann_id"]), str(p["caption"]))
        elif "ref_id" in p and int(p["ref_id"]) in ann_of_ref:
            by_ann.setdefault(ann_of_ref[int(p["ref_id"])], str(p["caption"]))
        elif "ref_id" not in p:
            raise ValueError(f"{path}: a caption prediction needs ann_id or ref_id")

    def caption_row(item):
        if item.sample.ann_id not in by_ann:
            return error_row(task, item, LookupError("no caption for this region"))
        return {**base_row(item), "pred": by_ann[item.sample.ann_id], "refs": item.sample.captions,
                "attributes": item.sample.attributes}

    return caption_row
