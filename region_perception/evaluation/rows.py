"""One evaluation item and the fields of its row, shared by the engine runner and scored predictions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..datasets.types import RegionSample


@dataclass
class Item:
    """One unit of evaluation: a region (classify, caption) or one sentence about a region (refer)."""

    key: str
    sample: RegionSample
    ref_id: int = -1
    sentence: str = ""


def base_row(item: Item) -> dict:
    """The fields every row of an item has: which sample, and which sentence about it."""
    s = item.sample
    row: dict[str, Any] = {"key": item.key, "image_id": s.image_id, "ann_id": s.ann_id, "category": s.category,
                           "bbox": list(s.bbox)}
    if item.sentence:
        row.update(ref_id=item.ref_id, sentence=item.sentence)
    return row


def error_row(task: str, item: Item, exc: Exception) -> dict:
    """A sample the engine could not answer counts as wrong, with the reason kept."""
    row = {**base_row(item), "error": f"{type(exc).__name__}: {exc}"}
    if task == "refer":
        union = int(item.sample.mask().sum())
        row.update(intersection=0, union=union, iou=0.0, chance_iou=0.0, best_iou=0.0)  # nothing to pick from
    elif task == "comprehension":
        row.update(selected=-1, selected_iou=0.0, correct=False, n_candidates=1, n_good=1, gt_added=False)
    elif task == "classify":
        row.update(pred="", text="", exact=False, scores={})
    else:
        row.update(pred="", refs=item.sample.captions, attributes=item.sample.attributes)
    return row
