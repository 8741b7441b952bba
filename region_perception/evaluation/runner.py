"""``evaluate``: run one of the seeds' protocols over a dataset split, one jsonl row per sample.

Why rows first: a run can stop and resume (rows already in ``out`` are skipped), shard over ranks,
or score predictions made elsewhere, and the summary is always the same function of the rows.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets.types import RegionDataset, RegionSample
from . import metrics
from .predictions import prediction_rows
from .rows import Item, base_row, error_row
from .sharding import merge_shards, rank_path, rank_world, read_rows, shard

TASKS = ("caption", "classify", "refer", "comprehension")


def items_for(task: str, dataset: RegionDataset) -> list[Item]:
    """The work items of a task, in dataset order (grouped by image)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    if task == "classify":
        return [Item(f"{s.ann_id}", s) for s in dataset.samples]
    if task == "caption":
        return [Item(f"{s.ann_id}", s) for s in dataset.samples if s.captions]
    return [Item(f"{s.ann_id}:{k}", s, ref_id, sent)
            for s in dataset.samples for k, (ref_id, sent) in enumerate(s.refs)]


def _region(sample: RegionSample, kind: str):
    from ..geometry.regions import BoxRegion, MaskRegion

    if kind == "mask":
        return MaskRegion(sample.mask())
    if kind != "box":
        raise ValueError(f"region {kind!r}: expected box or mask")
    x, y, w, h = sample.bbox
    return BoxRegion(np.array([x, y, x + w, y + h], dtype=np.float64))


# ---------------------------------------------------------------- one row per item, from an engine


def _classify_row(engine, image, item: Item, dataset: RegionDataset, key: str, opts: dict) -> dict:
    res = engine.classify(image, [_region(item.sample, opts.get("region", "box"))], dataset.categories,
                          frame_key=key, rank=bool(opts.get("rank", False)),
                          vocabulary_name=opts.get("vocabulary_name", ""))
    ans = res.outputs[0]
    return {**base_row(item), "pred": ans.label, "text": ans.text,
            "exact": metrics.normalize_label(ans.text) == metrics.normalize_label(item.sample.category),
            "scores": dict(zip(ans.labels, ans.label_scores, strict=True))}


def _caption_row(engine, image, item: Item, dataset: RegionDataset, key: str, opts: dict) -> dict:
    res = engine.caption(image, [_region(item.sample, opts.get("region", "box"))], frame_key=key,
                         max_new_tokens=int(opts.get("max_new_tokens", 0)))
    return {**base_row(item), "pred": res.outputs[0].text, "refs": item.sample.captions,
            "attributes": item.sample.attributes}


def _refer_row(engine, image, item: Item, dataset: RegionDataset, key: str, opts: dict) -> dict:
    gt = item.sample.mask()
    res = engine.refer(image, item.sentence, frame_key=key, route=opts.get("route", ""))
    pred = res.outputs[0].mask
    inter, union = metrics.intersection_union(pred, gt)
    row = {**base_row(item), "intersection": inter, "union": union, "iou": inter / union if union else 0.0,
           "n_candidates": len(res.candidate_masks)}
    if res.candidate_masks:
        cand = [metrics.iou(m, gt) for m in res.candidate_masks]
        row.update(chance_iou=float(np.mean(cand)), best_iou=float(max(cand)))
    return row


def _comprehension_row(engine, image, item: Item, dataset: RegionDataset, key: str, opts: dict) -> dict:
    from ..geometry.regions import MaskRegion

    gt = item.sample.mask()
    source = opts.get("candidates", "gt")
    if source == "gt":
        cands = [s.mask() for s in dataset.samples_of(item.sample.image_id)]
    elif source == "proposals":
        from ..common.timing import Timings
        from ..engine import check_image

        cands = list(engine.proposals(check_image(image, engine.config.max_image_pixels), key, Timings()))
    else:
        raise ValueError(f"candidates {source!r}: expected gt or proposals")
    ious = [metrics.iou(m, gt) for m in cands]
    gt_added = not any(v >= 0.5 for v in ious)
    if gt_added:  # RegionGPT: the ground truth joins the candidates when none overlaps it enough
        cands.append(gt)
        ious.append(1.0)
    res = engine.comprehend(image, item.sentence, [MaskRegion(m) for m in cands], frame_key=key)
    sel = res.selected_index
    return {**base_row(item), "selected": sel, "selected_iou": ious[sel], "correct": bool(ious[sel] >= 0.5),
            "n_candidates": len(cands), "n_good": int(sum(v >= 0.5 for v in ious)), "gt_added": gt_added}


_OPTIONS = {"classify": ("region", "rank", "vocabulary_name", "predictions"),
            "caption": ("region", "meteor", "predictions", "max_new_tokens"),
            "refer": ("route", "predictions"), "comprehension": ("candidates", "predictions")}

_ROWS: dict[str, Callable] = {"classify": _classify_row, "caption": _caption_row, "refer": _refer_row,
                              "comprehension": _comprehension_row}


# ---------------------------------------------------------------- summaries


def summarize(task: str, rows: list[dict], dataset: RegionDataset, *, seed: int = 0, meteor: bool = True) -> dict:
    """The task's metrics (percent) with chance beside them, from rows alone."""
    if task == "refer":
        return metrics.refer_summary(rows)
    if task == "comprehension":
        return metrics.comprehension_summary(rows)
    if task == "classify":
        return metrics.classification_summary(rows, dataset.categories, seed=seed)
    return caption_summary(rows, seed=seed, meteor=meteor)


def caption_summary(rows: list[dict], *, seed: int = 0, meteor: bool = True) -> dict:
    """CIDEr / BLEU-4 / METEOR; chance = each region given another region's reference caption."""
    if not rows:
        return {"n": 0}
    gts = {r["key"]: list(r["refs"]) for r in rows}
    res = {r["key"]: [r["pred"] or ""] for r in rows}
    out = {"n": len(rows), **metrics.caption_scores(gts, res, meteor=meteor)}
    keys = list(gts)
    chance: dict[str, Any] = {"rule": "each region captioned with a reference of another region"}
    if len(keys) > 1:
        order = keys[:]
        random.Random(seed).shuffle(order)
        other = {order[k]: [gts[order[(k + 1) % len(order)]][0]] for k in range(len(order))}
        chance.update({k: v for k, v in metrics.caption_scores(gts, other, meteor=False).items()
                       if k in ("CIDEr", "BLEU-4")})
    named = [r for r in rows if r.get("attributes", {}).get("color") and r["attributes"].get("shape")]
    if named:
        words = [set(metrics.normalize_label(r["pred"] or "").split()) for r in named]
        out["name_accuracy"] = round(100 * float(np.mean(
            [r["attributes"]["color"] in w and r["attributes"]["shape"] in w for r, w in zip(named, words,
                                                                                              strict=True)])), 2)
        from ..datasets.synthetic import COLORS, SHAPES

        chance["name_accuracy"] = round(100 / (len(COLORS) * len(SHAPES)), 2)
    out["chance"] = chance
    return out


# ---------------------------------------------------------------- the loop


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def evaluate(task: str, engine, dataset: RegionDataset, *, limit: int | None = None, out: Path | None = None,
             progress: bool = True, **options) -> dict:
    """Evaluate ``engine`` (or ``predictions=FILE``) on ``dataset`` by the task's protocol; the summary dict.

    Options: ``region`` (box|mask), ``rank`` (classify: rank labels by loss), ``vocabulary_name``, ``route``
    (refer: proposals|native), ``candidates`` (comprehension: gt|proposals), ``predictions`` (a results
    file scored instead of the engine), ``meteor`` (False skips it), ``rank_world`` ((rank, world)
    instead of torch.distributed / RANK, WORLD_SIZE), ``seed``.
    """
    items = items_for(task, dataset)
    if limit is not None:
        items = items[: max(0, int(limit))]
    wanted = {it.key for it in items}
    rank, world = options.get("rank_world") or rank_world()
    mine = shard(items, rank, world)
    path = rank_path(Path(out), rank, world) if out is not None else None
    done = {r["key"]: r for r in read_rows(path)} if path is not None else {}
    other = {r.get("task") for r in done.values()} - {task}
    if other:
        raise ValueError(f"{path} holds rows of task {sorted(map(str, other))[0]}, not {task}: choose another --out")
    if path is not None and path.is_file():  # drop a line cut short by a crash before appending
        path.write_text("".join(json.dumps(r) + "\n" for r in done.values()))
    todo = [it for it in mine if it.key not in done]
    predictions = options.get("predictions")
    if predictions is not None:
        make_rows = prediction_rows(task, predictions, dataset)
        model, weights_random = f"predictions:{predictions}", None
    else:
        if engine is None:
            raise ValueError("evaluate needs an engine or predictions=FILE")
        model, weights_random = engine.model.name, bool(engine.weights_random)
    new_rows: list[dict] = []
    fh = None
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = path.open("a")
    try:
        image_id, image = None, None
        for it in _progress(todo, len(todo), progress, f"eval {task}"):
            if predictions is not None:
                row = make_rows(it)
            else:
                if it.sample.image_id != image_id:
                    image_id, image = it.sample.image_id, dataset.read_image(it.sample.image_id)
                key = f"{dataset.root}:{dataset.split}:{image_id}"
                try:
                    row = _ROWS[task](engine, image, it, dataset, key, options)
                except (ValueError, RuntimeError) as exc:  # TaskError/RegionError are ValueErrors
                    if isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower():
                        raise
                    row = error_row(task, it, exc)
            row["task"] = task
            new_rows.append(row)
            if fh is not None:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
    finally:
        if fh is not None:
            fh.close()
    rows = [r for r in [*done.values(), *new_rows] if r["key"] in wanted]
    merged = False
    if world > 1 and out is not None:
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
                rows = [r for r in merge_shards(Path(out), world) if r["key"] in wanted]
                merged = True
        except ImportError:
            pass
    # the items' order, whoever computed each row: chance baselines and tie-breaks then match one process
    order = {it.key: k for k, it in enumerate(items)}
    rows.sort(key=lambda r: order[r["key"]])
    summary: dict[str, Any] = {
        "task": task, "model": model, "weights_random": weights_random,
        "dataset": {"root": str(dataset.root), "split": dataset.split, "format": dataset.name},
        **summarize(task, rows, dataset, seed=int(options.get("seed", 0)), meteor=bool(options.get("meteor", True))),
        "errors": sum(1 for r in rows if "error" in r),
        "resumed": len([k for k in done if k in wanted]),
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in options.items()
                    if k in _OPTIONS[task] and v is not None and v != ""},
    }
    if world > 1 and not merged:
        summary["shard"] = {"rank": rank, "world": world,
                            "note": "this rank's rows only; `eval ... --merge-shards WORLD` sums all ranks"}
    if weights_random:
        summary["notes"] = ["RANDOM WEIGHTS: these figures measure the code path, not a trained model"]
    if engine is not None and predictions is None:
        summary["device"] = str(getattr(engine.model, "device", ""))
        summary["settings"] = dict(getattr(engine, "settings", {}))  # those not at their default, and from where
    return summary


def summarize_file(task: str, out: Path, dataset: RegionDataset, world: int = 1, **options) -> dict:
    """Merge ``out``'s per-rank files (``world`` > 1) and summarise every row it holds."""
    rows = merge_shards(Path(out), world) if world > 1 else read_rows(Path(out))
    return {"task": task, "dataset": {"root": str(dataset.root), "split": dataset.split, "format": dataset.name},
            **summarize(task, rows, dataset, seed=int(options.get("seed", 0)),
                        meteor=bool(options.get("meteor", True))),
            "errors": sum(1 for r in rows if "error" in r)}
