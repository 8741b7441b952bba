"""The trained segmenter (toy-sam), its training machinery, and the ``eval segment`` metrics.

The prompt test runs the packaged toy-sam (skipped when it is not packaged); the training tests use a tiny
architecture and a few steps: they check the machinery, not quality (``make train-toy`` measures that).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from region_perception.common.feature_cache import FeatureCache
from region_perception.datasets import load_dataset
from region_perception.datasets import synthetic as syn
from region_perception.evaluation.metrics import iou
from region_perception.evaluation.segment import (
    clicks_to_reach,
    correction_click,
    evaluate_segmenter,
    interactive_answer,
    interior_point,
)
from region_perception.models.loading import load_segmenter
from region_perception.models.sam import Proposals, build_sam_from_config, load_segment_anything
from region_perception.training.segmenter import SegmenterTrainConfig, train_segmenter

TINY_ARCH = {"img_size": 64, "patch_size": 8, "conv_stem": [8, 8, 8], "encoder_embed_dim": 16, "encoder_depth": 1,
             "encoder_num_heads": 2, "global_attn_indexes": [0], "window_size": 4, "prompt_embed_dim": 16,
             "decoder_mlp_dim": 32, "decoder_heads": 2, "iou_head_hidden_dim": 16}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("segsyn") / "world", images=6, size=64, seed=3, val_fraction=0.34)


# ---------------------------------------------------------------- the packaged toy segmenter


def test_a_click_inside_an_object_gives_that_object():
    image, objects = syn.scene([("red", "circle", (40, 62), 16), ("blue", "square", (78, 66), 14)],
                               background="texture", seed=1)
    a, b = objects[0].mask, objects[1].mask
    assert not (a & b).any()
    seg = load_segmenter("toy-sam", "sam", FeatureCache(2), torch.device("cpu"))
    assert not seg.weights_random
    on_a = seg.segment("scene", image, points=interior_point(a)[None])
    on_b = seg.segment("scene", image, points=interior_point(b)[None])
    assert iou(on_a, a) >= 0.8 and iou(on_a, b) <= 0.05
    assert iou(on_b, b) >= 0.8 and iou(on_b, a) <= 0.05  # the prompt decides, not the image


def test_proposals_on_a_frame_larger_than_the_input_share_its_embedding_and_cover_the_frame():
    """A 640x480 camera frame: the generator works at the model's input size on the frame's one embedding,
    and the masks it keeps come back at the frame's size, on the objects (scaled with the frame)."""
    import cv2

    image, objects = syn.scene([("red", "circle", (40, 62), 16), ("blue", "square", (78, 66), 14)],
                               background="texture", seed=1)
    frame = cv2.resize(image, (640, 480), interpolation=cv2.INTER_LINEAR)
    truth = [cv2.resize(o.mask.astype(np.uint8), (640, 480), interpolation=cv2.INTER_NEAREST).astype(bool)
             for o in objects]
    cache = FeatureCache(2)
    seg = load_segmenter("toy-sam", "sam", cache, torch.device("cpu"))
    seg.segment("frame", frame, points=np.array([[200.0, 240.0]]))
    computed = cache.misses
    found = seg.propose("frame", frame)
    assert cache.misses == computed  # the click's embedding served the proposals
    assert found.masks and all(m.shape == (480, 640) and m.dtype == bool for m in found.masks)
    for gt in truth:
        assert max(iou(m, gt) for m in found.masks) >= 0.8
    on_a = seg.segment("frame", frame, points=np.array([[200.0, 240.0]]))
    assert on_a.shape == (480, 640) and iou(on_a, truth[0]) >= 0.8  # clicks still answer at the frame's size


def test_the_interactive_loop_feeds_the_previous_answer_back():
    """SAM's interactive loop on the packaged toy-sam: a correction answered with the previous logits as the
    mask prompt differs from the same clicks answered cold (the prompt is read), and ``eval segment``'s
    protocol hands each answer's logits to the next one."""
    image, objects = syn.scene([("red", "circle", (40, 62), 16), ("blue", "square", (78, 66), 14)],
                               background="texture", seed=1)
    seg = load_segmenter("toy-sam", "sam", FeatureCache(2), torch.device("cpu"))
    first = interior_point(objects[0].mask)[None]
    mask, logits = seg.segment_interactive("scene", image, points=first, labels=np.ones(1), prior=None)
    assert mask.shape == image.shape[:2] and logits.shape == (64, 64)  # the 16 x 16 grid's low-resolution logits
    both = np.concatenate([first, interior_point(objects[1].mask)[None]])
    _, warm = seg.segment_interactive("scene", image, points=both, labels=np.array([1, 0]), prior=logits)
    _, cold = seg.segment_interactive("scene", image, points=both, labels=np.array([1, 0]), prior=None)
    assert np.abs(warm - cold).max() > 0.1

    seen: list = []

    class Recording:
        def segment_interactive(self, key, image, *, points, labels, prior):
            seen.append(prior)
            return np.zeros(image.shape[:2], bool), np.full((4, 4), float(len(points)))

    answer = interactive_answer(Recording(), "k", image)
    for n in (1, 2, 3):
        answer(np.zeros((n, 2)), np.ones(n))
    assert seen[0] is None and seen[1][0, 0] == 1.0 and seen[2][0, 0] == 2.0


# ---------------------------------------------------------------- training


def _cfg(world: Path, out: Path, **kw) -> SegmenterTrainConfig:
    base = dict(data=str(world), out=out, steps=4, batch_size=2, prompts_per_image=2, lr=2e-3, warmup_ratio=0.0,
                eval_limit=0, device="cpu", progress=False, arch=dict(TINY_ARCH),
                generator={"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0})
    return SegmenterTrainConfig(**{**base, **kw})


def test_training_writes_a_loadable_trained_directory(tmp_path, world):
    out = tmp_path / "seg"
    summary = train_segmenter(_cfg(world, out, steps=3, eval_limit=1))
    for name in ("config.json", "model.safetensors", "region_perception.json", "training.json", "README.md"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "region_perception.json").read_text())
    assert meta["trained"] and not meta["weights_random"] and "synthetic" in meta["note"]
    assert summary["metrics"]["n"] > 0 and "chance" in summary["metrics"]
    assert not (out / "checkpoints").exists()
    _, generator, weights_random = load_segment_anything(str(out), torch.device("cpu"))
    assert not weights_random and generator["points_per_side"] == 4
    seg = load_segmenter(str(out), "sam", FeatureCache(1), torch.device("cpu"))
    image = load_dataset(world, "val").read_image(next(iter(load_dataset(world, "val").images)))
    assert seg.segment("k", image, points=np.array([[10.0, 10.0], [30.0, 30.0]]), labels=np.array([1, 0])).shape \
        == image.shape[:2]


def test_correction_prompts_train_the_mask_prompt_branch(world):
    """The click-plus-corrections prompts are answered as SAM's loop does, with the previous answer's logits
    as the mask prompt: the mask-prompt branch gets a gradient (none when the logits were not passed)."""
    from region_perception.training.segmenter import MaskSampler, SamTrainer, make_batch

    cfg = _cfg(world, Path("unused"), box_fraction=0.0, correction_fraction=1.0, max_corrections=2)
    sam = build_sam_from_config(cfg.arch)
    batch = make_batch(MaskSampler(load_dataset(world, "train"), cfg.arch["img_size"]), cfg,
                       np.random.default_rng(0))
    SamTrainer(sam, cfg)(batch).backward()
    grads = [p.grad for p in sam.prompt_encoder.mask_downscaling.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_resume_continues_to_the_same_weights(tmp_path, world, monkeypatch):
    from safetensors.torch import load_file

    import region_perception.training.trainer as trainer

    straight = tmp_path / "straight"
    train_segmenter(_cfg(world, straight, save_every=2))
    cut = tmp_path / "cut"
    real = trainer._checkpoint

    def crash_after_checkpoint(accelerator, out, step):
        real(accelerator, out, step)
        raise KeyboardInterrupt  # killed right after the step-2 checkpoint

    monkeypatch.setattr(trainer, "_checkpoint", crash_after_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train_segmenter(_cfg(world, cut, save_every=2))
    monkeypatch.setattr(trainer, "_checkpoint", real)
    assert (cut / "checkpoints" / "step-2" / "trainer_state.json").is_file()
    summary = train_segmenter(_cfg(world, cut, save_every=2, resume=True))
    assert summary["resumed_at"] == 2
    a, b = load_file(str(straight / "model.safetensors")), load_file(str(cut / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_a_config_without_conv_stem_builds_the_patch_embedding(tmp_path):
    from segment_anything.modeling.image_encoder import PatchEmbed

    from region_perception.models.loading import tiny_path

    assert "conv_stem" not in json.loads((tiny_path("tiny-sam") / "config.json").read_text())
    seg = load_segmenter("tiny-sam", "sam", FeatureCache(1), torch.device("cpu"))
    assert isinstance(seg.predictor.model.image_encoder.patch_embed, PatchEmbed) and seg.weights_random
    stem = build_sam_from_config(TINY_ARCH).image_encoder
    assert stem(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 8, 8)
    with pytest.raises(ValueError, match="downsamples"):
        build_sam_from_config({**TINY_ARCH, "patch_size": 16})


# ---------------------------------------------------------------- the metrics on hand-made cases


class _Oracle:
    """A segmenter that knows the truth: every prompt gives the object it lands in (or the box's object)."""

    name = "oracle"
    weights_random = False

    def __init__(self, dataset, shrink_box: bool = False) -> None:
        self.masks = {f"eval-segment:{dataset.root}:{dataset.split}:{i}": [s.mask() for s in dataset.samples_of(i)]
                      for i in dataset.images}

    def segment(self, key, image, *, box=None, points=None, labels=None):
        masks = self.masks[key]
        if box is not None:
            return max(masks, key=lambda m: iou(m, _box(box, m.shape)))
        x, y = np.asarray(points)[0].astype(int)
        return next((m for m in masks if m[y, x]), np.zeros_like(masks[0]))

    def propose(self, key, image):
        return Proposals(list(self.masks[key]), [1.0] * len(self.masks[key]))


def _box(box, shape):
    m = np.zeros(shape, dtype=bool)
    m[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = True
    return m


def test_a_perfect_segmenter_scores_100_and_one_click(world):
    val = load_dataset(world, "val")
    out = evaluate_segmenter(_Oracle(val), val)
    assert out["n"] == len([s for s in val.samples if s.mask().any()])
    for key in ("one_click_mIoU", "box_mIoU", "proposal_upper_bound_mIoU"):
        assert out[key] == 100.0, key
    assert out["NoC@85"] == out["NoC@90"] == 1.0
    assert out["proposals_per_image"] == pytest.approx(len(val.samples) / len(val.images))
    assert out["chance"]["NoC@90"] > 1.0 and out["chance"]["box_mIoU"] < 100.0
    assert set(out["baselines"]) == set(out["chance"])


def test_the_interactive_protocol_on_a_square():
    gt = np.zeros((40, 40), dtype=bool)
    gt[10:30, 10:30] = True
    assert tuple(interior_point(gt)) in {(19.5, 19.5), (20.5, 20.5), (19.5, 20.5), (20.5, 19.5)}
    half = gt.copy()
    half[:, 20:] = False
    point, label = correction_click(half, gt)
    assert label == 1 and gt[int(point[1]), int(point[0])] and not half[int(point[1]), int(point[0])]
    spill = gt.copy()
    spill[0:8, :] = True
    assert correction_click(spill, gt)[1] == 0
    assert correction_click(gt, gt) is None
    # an answer that is the left half first, the whole square once a second click is given
    needed, ious = clicks_to_reach(lambda p, lab: half if len(p) == 1 else gt, gt, max_clicks=5)
    assert needed == {85: 2, 90: 2} and ious == [0.5, 1.0]
    needed, _ = clicks_to_reach(lambda p, lab: half, gt, max_clicks=3)
    assert needed == {85: 3, 90: 3}  # never reached: the maximum counts


def test_the_command_line_trains_and_measures_a_segmenter(tmp_path, world, capsys):
    """`train --stage segmenter` then `eval segment --model OUT`: a trained (not random) segmenter, its figures
    beside the baselines; what the segmenter stage does not take is refused before anything is written."""
    from region_perception.cli import main

    out = tmp_path / "sam"
    args = ["train", "--stage", "segmenter", "--model", "my-sam", "--data", str(world), "--out", str(out),
            "--steps", "2", "--batch-size", "2", "--eval-limit", "0", "--device", "cpu", "--no-progress", "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["steps"] == 2
    # a Sam from scratch gets the segmenter's own recipe, not the region stage's fine-tuning defaults
    assert summary["lr"] == SegmenterTrainConfig.lr and summary["box_fraction"] == SegmenterTrainConfig.box_fraction
    region = ["train", "--model", "toy-regionvlm", "--data", str(world), "--out", str(tmp_path / "region")]
    assert main([*region, "--box-fraction", "0.5"]) == 2  # a segmenter flag on another stage
    assert not (tmp_path / "region").exists()
    assert main(["eval", "segment", "--dataset", str(world), "--model", str(out), "--limit", "2", "--json",
                 "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["weights_random"] is False and summary["n"] > 0
    assert set(summary["chance"]) >= {"one_click_mIoU", "box_mIoU", "proposal_upper_bound_mIoU"}
    assert main([*args[:-1], "--out", str(tmp_path / "other"), "--settings", "{}"]) == 2
    assert not (tmp_path / "other").exists()
    assert main(["eval", "segment", "--dataset", str(world)]) == 2  # no segmenter named


def test_eval_segment_reports_objects_touching_another_apart():
    """A segmenter that merges touching objects (a star on a square comes back with its square) is perfect on
    the lone circle and poor on the touching pair: the breakdown says so, the overall figures hide it."""
    from types import SimpleNamespace

    from region_perception.evaluation.segment import evaluate_segmenter, touching

    image, objects = syn.scene([("blue", "square", (40, 40), 18), ("purple", "star", (40, 40), 8),
                                ("red", "circle", (100, 100), 10)], seed=0)
    masks = [o.mask for o in objects]
    assert touching(masks) == [True, True, False] and touching(masks[:1]) == [False]
    merged = masks[0] | masks[1]

    class Merging:
        name, weights_random = "merging", False

        def segment(self, key, image, *, box=None, points=None, labels=None):
            if box is not None:
                x, y = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            else:
                x, y = np.asarray(points)[0].astype(int)
            return masks[2] if masks[2][y, x] else merged

    scenes = SimpleNamespace(root="scenes", split="val", images={0: {}}, read_image=lambda i: image,
                             samples_of=lambda i: [SimpleNamespace(mask=lambda m=m: m, attributes={}) for m in masks])
    out = evaluate_segmenter(Merging(), scenes, proposals=False)
    square, star = iou(merged, masks[0]), iou(merged, masks[1])
    assert star < 0.5 < 0.85 < square  # the star is lost in its square; the square barely changes
    assert out["n_touching"] == 2
    assert out["one_click_mIoU_touching"] == pytest.approx(100 * (square + star) / 2, abs=0.01)
    assert out["one_click_mIoU"] == pytest.approx(100 * (square + star + 1) / 3, abs=0.01)
    assert out["NoC@85_alone"] == 1 and out["NoC@85_touching"] == (1 + 20) / 2  # the star never comes apart
    assert out["chance"]["NoC@85_touching"] is not None and "touching" in out["baselines"]["NoC@85_touching"]
