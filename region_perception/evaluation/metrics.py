"""The seeds' metrics, computed from per-sample rows so that a resumed or sharded run sums the same.

Why rows: every figure here (mIoU, cumulative IoU, accuracy, COCO mAP, CIDEr) is a function of
per-sample records, so one summariser serves the engine, predictions files and merged shards.
Scales follow the papers: IoU, accuracy, mAP, BLEU-4, CIDEr and METEOR in percent (x100).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections.abc import Iterable, Sequence

import numpy as np

IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def intersection_union(pred: np.ndarray | None, gt: np.ndarray) -> tuple[int, int]:
    """Pixel intersection and union of two bool masks (no prediction: intersection 0)."""
    gt = np.asarray(gt, dtype=bool)
    if pred is None:
        return 0, int(gt.sum())
    pred = np.asarray(pred, dtype=bool)
    if pred.shape != gt.shape:
        raise ValueError(f"mask shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    return int(np.logical_and(pred, gt).sum()), int(np.logical_or(pred, gt).sum())


def iou(pred: np.ndarray | None, gt: np.ndarray) -> float:
    i, u = intersection_union(pred, gt)
    return i / u if u else 0.0


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two COCO xywh boxes."""
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


def refer_summary(rows: list[dict]) -> dict:
    """RegionVLM's RIS figures: mIoU, overall (cumulative) IoU, precision@{0.5..0.9}; chance beside."""
    if not rows:
        return {"n": 0}
    ious = np.array([r["iou"] for r in rows], dtype=np.float64)
    inter = sum(r["intersection"] for r in rows)
    union = sum(r["union"] for r in rows)
    out = {
        "n": len(rows),
        "mIoU": round(100 * float(ious.mean()), 2),
        "oIoU": round(100 * inter / union, 2) if union else 0.0,
        **{f"precision@{t}": round(100 * float((ious >= t).mean()), 2) for t in IOU_THRESHOLDS},
    }
    chance = [r["chance_iou"] for r in rows if r.get("chance_iou") is not None]
    if chance:
        out["chance"] = {"mIoU": round(100 * float(np.mean(chance)), 2),
                         "rule": "a uniformly random pick among the same candidate masks"}
    best = [r["best_iou"] for r in rows if r.get("best_iou") is not None]
    if best:
        out["proposal_upper_bound_mIoU"] = round(100 * float(np.mean(best)), 2)
    return out


def comprehension_summary(rows: list[dict]) -> dict:
    """RegionGPT's comprehension accuracy (selected candidate IoU >= 0.5), chance = good/candidates."""
    if not rows:
        return {"n": 0}
    out: dict = {
        "n": len(rows),
        "accuracy": round(100 * float(np.mean([r["correct"] for r in rows])), 2),
        "gt_added": int(sum(r.get("gt_added", False) for r in rows)),
    }
    known = [r["n_good"] / r["n_candidates"] for r in rows if r.get("n_candidates")]
    if known:
        out["chance"] = {"accuracy": round(100 * float(np.mean(known)), 2),
                         "rule": "a uniformly random pick among the candidates"}
    return out


_ARTICLES = re.compile(r"^(a|an|the)\s+")


def normalize_label(text: str) -> str:
    """Lower case, no punctuation, no leading article: how an answer is compared with a label."""
    text = re.sub(r"[^\w\s]", " ", (text or "").lower())
    text = " ".join(text.split())
    return _ARTICLES.sub("", text)


def coco_map(gt: list[dict], detections: list[dict], categories: Sequence[str]) -> dict:
    """COCO bbox AP (pycocotools' COCOeval) of detection results against ground-truth boxes.

    ``gt``: {image_id, ann_id, bbox, category}; ``detections``: {image_id, category_id (1-based index
    of ``categories``), bbox, score}. maxDets is raised to the most detections of any image, since
    the classification protocol emits one detection per ground-truth box and category.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not gt:
        return {"mAP": 0.0, "AP50": 0.0}
    cat_id = {c: k + 1 for k, c in enumerate(categories)}
    image_ids = sorted({int(g["image_id"]) for g in gt})
    anns = [{"id": k + 1, "image_id": int(g["image_id"]), "category_id": cat_id[g["category"]],
             "bbox": list(map(float, g["bbox"])), "area": float(g["bbox"][2] * g["bbox"][3]), "iscrowd": 0}
            for k, g in enumerate(gt) if g["category"] in cat_id]
    coco_gt = COCO()
    coco_gt.dataset = {"images": [{"id": i} for i in image_ids], "annotations": anns,
                       "categories": [{"id": v, "name": k} for k, v in cat_id.items()]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        dets = [d for d in detections if int(d["image_id"]) in set(image_ids)]
        if not dets:
            return {"mAP": 0.0, "AP50": 0.0}
        coco_dt = coco_gt.loadRes([dict(d) for d in dets])
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        per_image: dict[int, int] = {}
        for d in dets:
            per_image[int(d["image_id"])] = per_image.get(int(d["image_id"]), 0) + 1
        ev.params.maxDets = [1, 10, max(100, max(per_image.values()))]
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, -1]  # iou, recall, class, area=all, maxDets=largest
    present = precision > -1

    def mean(p: np.ndarray, m: np.ndarray) -> float:
        return round(100 * float(p[m].mean()), 2) if m.any() else 0.0

    return {"mAP": mean(precision, present), "AP50": mean(precision[0], present[0])}


def classification_summary(rows: list[dict], categories: Sequence[str], seed: int = 0) -> dict:
    """Top-1 accuracy snapped onto the vocabulary and by the paper's rule (an answer outside the
    vocabulary is wrong), and COCO mAP from one detection per ground-truth box and category."""
    if not rows:
        return {"n": 0}
    gt = [{"image_id": r["image_id"], "ann_id": r["ann_id"], "bbox": r["bbox"], "category": r["category"]}
          for r in rows]
    dets = detections_of(rows, categories)
    out = {
        "n": len(rows),
        "accuracy": round(100 * float(np.mean([r["pred"] == r["category"] for r in rows])), 2),
    }
    exact = [r["exact"] for r in rows if r.get("exact") is not None]
    out["accuracy_paper_rule"] = round(100 * float(np.mean(exact)), 2) if exact else None
    out.update(coco_map(gt, dets, categories))
    # chance: uniform guessing, and mAP of random scores on the same boxes (fixed seed)
    rng = np.random.default_rng(seed)
    rand = [dict(d, score=float(rng.random())) for d in dets] or [
        {"image_id": g["image_id"], "category_id": k + 1, "bbox": g["bbox"], "score": float(rng.random())}
        for g in gt for k in range(len(categories))]
    chance_map = coco_map(gt, rand, categories)
    out["chance"] = {"accuracy": round(100 / len(categories), 2), "mAP": chance_map["mAP"],
                     "rule": "uniform guess; mAP of random scores for every box and category"}
    return out


def detections_of(rows: Iterable[dict], categories: Sequence[str]) -> list[dict]:
    """COCO detection results of classification rows: every ground-truth box with every category's score."""
    cat_id = {c: k + 1 for k, c in enumerate(categories)}
    dets = []
    for r in rows:
        scores = r.get("scores") or {}
        for label, score in scores.items():
            if label in cat_id:
                dets.append({"image_id": r["image_id"], "category_id": cat_id[label], "bbox": r["bbox"],
                             "score": float(score)})
    return dets


# ---------------------------------------------------------------- captions


def java_available() -> bool:
    return shutil.which("java") is not None


def _simple_tokenize(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def tokenize(gts: dict, res: dict) -> tuple[dict, dict, str]:
    """PTB tokenisation (pycocoevalcap, needs Java) when possible, else lower case without punctuation."""
    if java_available():
        try:
            from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

            tok = PTBTokenizer()
            with contextlib.redirect_stdout(io.StringIO()):
                g = tok.tokenize({k: [{"caption": c} for c in v] for k, v in gts.items()})
                r = tok.tokenize({k: [{"caption": c} for c in v] for k, v in res.items()})
            return g, r, "ptb"
        except Exception:  # a broken Java: the simple tokenizer
            pass
    return ({k: [_simple_tokenize(c) for c in v] for k, v in gts.items()},
            {k: [_simple_tokenize(c) for c in v] for k, v in res.items()}, "simple")


def caption_scores(gts: dict, res: dict, *, meteor: bool = True) -> dict:
    """CIDEr(-D) and BLEU-4 by pycocoevalcap's scorers; METEOR where Java runs, else "skipped"."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    if not gts:
        return {"n": 0}
    g, r, tokenizer = tokenize(gts, res)
    with contextlib.redirect_stdout(io.StringIO()):
        cider, _ = Cider().compute_score(g, r)
        bleu, _ = Bleu(4).compute_score(g, r, verbose=0)
    out: dict = {"CIDEr": round(100 * float(cider), 2), "BLEU-4": round(100 * float(bleu[3]), 2),
                 "tokenizer": tokenizer}
    if not meteor:
        out["METEOR"] = "skipped (not asked for)"
    elif not java_available():
        out["METEOR"] = "skipped (no java on PATH)"
    else:
        try:
            from pycocoevalcap.meteor.meteor import Meteor

            value, _ = Meteor().compute_score(g, r)  # the Java process ends with the scorer
            out["METEOR"] = round(100 * float(value), 2)
        except Exception as exc:  # Java present but METEOR cannot run here
            out["METEOR"] = f"skipped ({type(exc).__name__}: {exc})"[:200]
    return out
