"""The evaluation harness: metric code against hand-computed cases, an oracle scoring perfectly,
random weights near chance, predictions files, resuming and sharding."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from region_perception.datasets import load_dataset, mask_to_rle
from region_perception.datasets import synthetic as syn
from region_perception.evaluation import evaluate, merge_shards, metrics, rank_path, shard, summarize_file
from region_perception.evaluation.metrics import box_iou


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("evalsyn") / "world", images=10, seed=11, val_fraction=0.5)


@pytest.fixture(scope="module")
def val(world):
    return load_dataset(world, "val")


# ---------------------------------------------------------------- an oracle that knows the ground truth


class OracleBackend:
    """A RegionBackend-like model that looks the answer up in the dataset (tests only)."""

    name = "oracle"
    weights_random = False
    region_aware = True
    uses_point_draws = False
    answers_questions = False
    device = torch.device("cpu")

    def __init__(self, dataset) -> None:
        self.ds = dataset
        self.by_bytes = {dataset.read_image(i).tobytes(): i for i in dataset.images}
        self.calls = 0

    def encode_image(self, image):
        self.calls += 1
        return self.ds.samples_of(self.by_bytes[image.tobytes()])

    def _match(self, samples, cue):
        s0 = samples[0]
        x0, y0, x1, y1 = cue.box_norm
        box = (x0 * s0.width, y0 * s0.height, (x1 - x0) * s0.width, (y1 - y0) * s0.height)
        return max(samples, key=lambda s: box_iou(box, s.bbox))

    def caption_each(self, feats, cues, **_):
        return [self._match(feats, c).captions[0] for c in cues]

    def category(self, feats, cue, labels_hint, *, timings=None):
        return self._match(feats, cue).category

    def score_regions(self, feats, cues, texts, *, batch_size=32, timings=None):
        texts = [texts] * len(cues) if isinstance(texts, str) else texts
        pairs = zip(cues, texts, strict=True)
        return np.array([0.0 if self._match(feats, c).category == t else 5.0 for c, t in pairs])

    def refer_native(self, feats, text, image_size, *, timings=None):
        return None

    def encode_cues(self, feats, cues, *, batch_size=32, timings=None):
        return [self._match(feats, c) for c in cues]

    def rows_loss(self, encoded, texts, *, timings=None):
        return np.array([0.0 if t in {s for _, s in e.refs} else 5.0 for e, t in zip(encoded, texts, strict=True)])


class OracleProposer:
    """Mask proposals that are exactly the image's ground-truth regions."""

    def __init__(self, dataset) -> None:
        self.ds = dataset
        self.by_bytes = {dataset.read_image(i).tobytes(): i for i in dataset.images}

    def propose(self, key, image):
        from region_perception.models.sam import Proposals

        masks = [s.mask() for s in self.ds.samples_of(self.by_bytes[image.tobytes()])]
        return Proposals(masks, [1.0] * len(masks))


def oracle_engine(dataset):
    from region_perception.engine import EngineConfig, RegionEngine
    from region_perception.geometry.proposals import ProposalFilter

    config = EngineConfig(model="oracle", segmenter="none", device="cpu",
                          proposal_filter=ProposalFilter(min_area_fraction=0.0, max_border_fraction=1.0,
                                                         max_proposals=100))
    return RegionEngine(config, OracleBackend(dataset), None, OracleProposer(dataset))


def test_oracle_scores_perfectly(val):
    engine = oracle_engine(val)
    refer = evaluate("refer", engine, val, progress=False)
    assert refer["n"] == sum(len(s.refs) for s in val.samples) > 0
    assert refer["mIoU"] == refer["oIoU"] == refer["precision@0.9"] == 100.0
    assert 0 < refer["chance"]["mIoU"] < 60  # a random pick among the image's objects
    comp = evaluate("comprehension", engine, val, progress=False)
    assert comp["accuracy"] == 100.0 and 0 < comp["chance"]["accuracy"] < 60
    cls = evaluate("classify", engine, val, progress=False, rank=True)
    assert cls["accuracy"] == cls["accuracy_paper_rule"] == cls["mAP"] == 100.0
    assert cls["chance"]["accuracy"] == 25.0 and cls["chance"]["mAP"] < 100.0
    cap = evaluate("caption", engine, val, progress=False, meteor=False)
    assert cap["name_accuracy"] == 100.0 and cap["BLEU-4"] == pytest.approx(100.0, abs=0.01)
    assert cap["CIDEr"] > cap["chance"]["CIDEr"]
    assert cap["chance"]["name_accuracy"] == pytest.approx(100 / 24, abs=0.01)
    assert cap["METEOR"].startswith("skipped")
    for s in (refer, comp, cls, cap):
        assert s["model"] == "oracle" and s["weights_random"] is False and s["errors"] == 0


def test_random_tiny_model_is_labelled_and_has_chance_beside(val, tiny_engine):
    summary = evaluate("classify", tiny_engine, val, limit=6, progress=False, rank=True)
    assert summary["weights_random"] is True and "RANDOM WEIGHTS" in summary["notes"][0]
    assert summary["n"] == 6 and summary["chance"]["accuracy"] == 25.0
    assert 0.0 <= summary["accuracy"] <= 100.0


# ---------------------------------------------------------------- metric code against hand-computed cases


def test_iou_sums_by_hand():
    gt = np.zeros((4, 4), bool)
    gt[:2, :2] = True  # 4 px
    a = np.zeros((4, 4), bool)
    a[:2, :4] = True  # 8 px, 4 shared -> 4/8
    b = np.zeros((4, 4), bool)
    b[3, 3] = True  # disjoint -> 0/5
    assert metrics.intersection_union(a, gt) == (4, 8)
    assert metrics.intersection_union(b, gt) == (0, 5)
    assert metrics.intersection_union(None, gt) == (0, 4)
    rows = [{"iou": 0.5, "intersection": 4, "union": 8}, {"iou": 0.0, "intersection": 0, "union": 5},
            {"iou": 1.0, "intersection": 4, "union": 4}]
    s = metrics.refer_summary(rows)
    assert s["mIoU"] == pytest.approx(50.0)
    assert s["oIoU"] == pytest.approx(100 * 8 / 17, abs=0.01)
    assert s["precision@0.5"] == pytest.approx(66.67, abs=0.01) and s["precision@0.9"] == pytest.approx(33.33, abs=0.01)


def test_ap_on_a_three_class_toy():
    boxes = {1: [0, 0, 10, 10], 2: [20, 0, 10, 10], 3: [40, 0, 10, 10], 4: [60, 0, 10, 10]}
    gt = [{"image_id": 1, "ann_id": 1, "bbox": boxes[1], "category": "a"},
          {"image_id": 1, "ann_id": 2, "bbox": boxes[2], "category": "a"},
          {"image_id": 1, "ann_id": 3, "bbox": boxes[3], "category": "b"},
          {"image_id": 1, "ann_id": 4, "bbox": boxes[4], "category": "c"}]

    def det(box, cat, score):
        return {"image_id": 1, "category_id": cat, "bbox": boxes[box], "score": score}

    dets = [det(1, 1, 0.9), det(3, 1, 0.8), det(2, 1, 0.7),  # a: hit, miss, hit
            det(3, 2, 0.6),  # b: hit
            det(1, 3, 0.5), det(4, 3, 0.1)]  # c: miss, then hit
    # COCO's 101-point interpolated AP: a = (51 * 1 + 50 * 2/3) / 101, b = 1, c = 1/2
    ap_a = (51 + 50 * 2 / 3) / 101
    expected = 100 * (ap_a + 1 + 0.5) / 3
    got = metrics.coco_map(gt, dets, ["a", "b", "c"])
    assert got["mAP"] == pytest.approx(expected, abs=0.01)
    assert got["AP50"] == pytest.approx(expected, abs=0.01)


def test_cider_and_bleu_equal_pycocoevalcap(monkeypatch):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    monkeypatch.setattr(metrics.shutil, "which", lambda _: None)  # no Java: simple tokenizer, METEOR skipped
    gts = {"1": ["A small red triangle.", "a red triangle"], "2": ["a large blue circle"],
           "3": ["the green star", "a green star"]}
    res = {"1": ["a small red triangle"], "2": ["a blue square"], "3": ["a big green star"]}
    got = metrics.caption_scores(gts, res)
    tok_g = {k: [" ".join(c.lower().replace(".", " ").split()) for c in v] for k, v in gts.items()}
    cider, _ = Cider().compute_score(tok_g, res)
    bleu, _ = Bleu(4).compute_score(tok_g, res, verbose=0)
    assert got["CIDEr"] == pytest.approx(100 * cider, abs=0.01)
    assert got["BLEU-4"] == pytest.approx(100 * bleu[3], abs=0.01)
    assert got["tokenizer"] == "simple" and got["METEOR"] == "skipped (no java on PATH)"


@pytest.mark.skipif(not metrics.java_available(), reason="METEOR needs Java")
def test_meteor_runs_where_java_exists():
    got = metrics.caption_scores({"1": ["a small red triangle"]}, {"1": ["a small red triangle"]})
    assert isinstance(got["METEOR"], float) and got["METEOR"] > 90


# ---------------------------------------------------------------- predictions, resuming, sharding


def _perfect_predictions(ds) -> dict[str, list[dict]]:
    refer = [{"ref_id": ref_id, "sentence": sent, "segmentation": mask_to_rle(s.mask())}
             for s in ds.samples for ref_id, sent in s.refs]
    cats = {name: k for k, name in ds.category_ids.items()}
    classify = [{"image_id": s.image_id, "category_id": cats[c], "bbox": list(s.bbox),
                 "score": 1.0 if c == s.category else 0.1} for s in ds.samples for c in ds.categories]
    caption = [{"ann_id": s.ann_id, "caption": s.captions[0]} for s in ds.samples]
    return {"refer": refer, "classify": classify, "caption": caption}


def test_predictions_files_are_scored_by_the_same_code(tmp_path, val):
    for task, preds in _perfect_predictions(val).items():
        path = tmp_path / f"{task}.json"
        path.write_text(json.dumps(preds))
        s = evaluate(task, None, val, progress=False, predictions=path, meteor=False)
        assert s["model"] == f"predictions:{path}" and s["errors"] == 0
        key = {"refer": "mIoU", "classify": "mAP", "caption": "name_accuracy"}[task]
        assert s[key] == 100.0, (task, s)
    # a prediction missing for half the sentences counts as wrong
    half = _perfect_predictions(val)["refer"][::2]
    (tmp_path / "half.json").write_text(json.dumps(half))
    s = evaluate("refer", None, val, progress=False, predictions=tmp_path / "half.json")
    assert s["errors"] == s["n"] - len(half) and s["mIoU"] == pytest.approx(100 * len(half) / s["n"], abs=0.01)
    (tmp_path / "bad.json").write_text(json.dumps([{"caption": "x"}]))
    with pytest.raises(ValueError, match="ann_id or ref_id"):
        evaluate("caption", None, val, progress=False, predictions=tmp_path / "bad.json")


def test_rerun_resumes_from_the_rows_it_has(tmp_path, val):
    engine = oracle_engine(val)
    out = tmp_path / "rows.jsonl"
    first = evaluate("refer", engine, val, limit=3, out=out, progress=False)
    assert first["n"] == 3 and len(out.read_text().splitlines()) == 3
    with out.open("a") as fh:
        fh.write('{"key": "cut sho')  # a crash mid-line
    calls = engine.model.calls
    second = evaluate("refer", engine, val, limit=5, out=out, progress=False)
    assert second["n"] == 5 and second["resumed"] == 3 and second["mIoU"] == 100.0
    assert len(out.read_text().splitlines()) == 5
    assert engine.model.calls - calls <= 2  # only the two new sentences' images were encoded
    with pytest.raises(ValueError, match="holds rows of task refer"):
        evaluate("classify", engine, val, out=out, progress=False)


def test_sharded_run_merges_to_the_single_process_summary(tmp_path, val):
    assert shard(list(range(10)), 1, 3) == [1, 4, 7]
    with pytest.raises(ValueError):
        shard([1], 3, 3)
    engine = oracle_engine(val)
    out = tmp_path / "res.jsonl"
    for rank in range(2):
        part = evaluate("comprehension", engine, val, out=out, progress=False, rank_world=(rank, 2))
        assert part["shard"] == {"rank": rank, "world": 2, "note": part["shard"]["note"]}
        assert rank_path(out, rank, 2).is_file()
    rows = merge_shards(out, 2)
    whole = evaluate("comprehension", engine, val, out=tmp_path / "one.jsonl", progress=False)
    assert len(rows) == whole["n"]
    merged = summarize_file("comprehension", out, val)
    assert merged["accuracy"] == whole["accuracy"] and merged["n"] == whole["n"]


def test_cli_eval_predictions_and_bad_input(tmp_path, world, val):
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps(_perfect_predictions(val)["classify"]))
    cmd = [sys.executable, "-m", "region_perception.cli", "eval", "classify", "--dataset", str(world),
           "--predictions", str(preds), "--json", "--no-progress"]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    summary = json.loads(ok.stdout)
    assert summary["accuracy"] == 100.0 and summary["chance"]["accuracy"] == 25.0
    bad = subprocess.run([*cmd[:6], str(tmp_path / "missing"), "--predictions", str(preds)],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "does not exist" in bad.stderr
