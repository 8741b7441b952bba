"""Train segment-anything's own ``Sam`` from scratch on any COCO-format dataset with masks (no rclpy).

Why: the node's mask is what a robot grasps or measures; without a trained segmenter a click becomes a
small disk and REFER picks among superpixels. This trains SAM's architecture (``ImageEncoderViT`` with an
early-convolution stem, ``PromptEncoder``, ``MaskDecoder``) with SAM's recipe, small:

- prompts: a single click (uniform inside the object), a click followed by correction clicks (each at the
  error region of the model's own answer: positive on a miss, negative on a spill), and boxes;
- loss: focal (x20) + dice per output mask; a single click is ambiguous (part or whole), so only the
  best of the three multimask outputs is charged; the IoU head learns each output's actual IoU (MSE),
  which is what gives the automatic mask generator's ``pred_iou_thresh`` a meaning.

The loop is the trainer's (:mod:`.trainer`: Accelerate, progress bar, checkpoints, ``resume``, torchrun).
The saved directory loads with ``models.sam.load_segment_anything`` (config.json + model.safetensors).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..datasets import RegionDataset
from ..evaluation.segment import correction_click

# The toy segmenter's architecture: 128-px input (the synthetic scenes' own size), a stride-8 conv stem
# (a 16 x 16 grid: the mask decoder's 4x upscaling then answers at half the scene's resolution).
TOY_SAM_ARCH: dict[str, Any] = {
    "img_size": 128,
    "patch_size": 8,
    "conv_stem": [32, 64, 64],
    "encoder_embed_dim": 64,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "global_attn_indexes": [1],
    "window_size": 8,
    "prompt_embed_dim": 64,
    "decoder_mlp_dim": 128,
    "decoder_heads": 2,
    "iou_head_hidden_dim": 64,
}
# SamAutomaticMaskGenerator's settings for a trained toy segmenter (thresholds on the trained IoU head)
# (tuned on 40 val scenes: 0.5 / 0.6 / nms 0.7 kept 8 proposals an image, upper bound 78; these 11, 80-81)
TOY_SAM_GENERATOR: dict[str, Any] = {
    "points_per_side": 12,
    "points_per_batch": 256,
    "pred_iou_thresh": 0.4,
    "stability_score_thresh": 0.3,
    "box_nms_thresh": 0.5,
}


@dataclass
class SegmenterTrainConfig:
    """What ``train_segmenter`` needs; the fields the trainer's loop reads carry its names."""

    data: str
    out: Path
    steps: int = 5400
    batch_size: int = 8  # images per process per step
    prompts_per_image: int = 4  # objects prompted per image
    # the defaults are toy-sam's recipe (training/toys.py SEGMENTER_RECIPES), so the command trains it as shipped
    box_fraction: float = 0.35  # prompts that are boxes
    correction_fraction: float = 0.35  # prompts that are a click plus correction clicks (SAM's interactive loop)
    max_corrections: int = 3  # correction clicks per such prompt: 1 to this many (drawn per step)
    box_jitter: float = 0.03  # each box side moved by up to this fraction of the box's size
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    focal_weight: float = 20.0
    dice_weight: float = 1.0
    iou_weight: float = 1.0
    seed: int = 0
    resume: bool = False
    overwrite: bool = False
    split: str = "train"
    val_split: str = "val"
    eval_limit: int | None = None  # val images evaluated at the end; 0 = none
    save_every: int = 0  # steps between checkpoints; 0 = about five per run
    device: str = "auto"
    progress: bool = True
    arch: dict = field(default_factory=lambda: dict(TOY_SAM_ARCH))
    generator: dict = field(default_factory=lambda: dict(TOY_SAM_GENERATOR))
    # read by the trainer's loop and summary
    model: str = "toy-sam"
    stage: str = "segmenter"
    grad_accum: int = 1


# ---------------------------------------------------------------- data


class MaskSampler:
    """Images resized (longest side) and padded to the model's input, with their object masks; cached.

    Objects whose mask is empty after resizing are left out; images without any object are never drawn.
    """

    def __init__(self, dataset: RegionDataset, img_size: int) -> None:
        self.dataset = dataset
        self.img_size = img_size
        self.image_ids = [i for i in dataset.images if dataset.samples_of(i)]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def item(self, image_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(image HxWx3 uint8 padded to img_size, masks N x img_size x img_size bool)."""
        hit = self._cache.get(image_id)
        if hit is not None:
            return hit
        image = self.dataset.read_image(image_id)
        h, w = image.shape[:2]
        scale = self.img_size / max(h, w)
        nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
        s = self.img_size
        padded = np.zeros((s, s, 3), dtype=np.uint8)
        padded[:nh, :nw] = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh),
                                                                       interpolation=cv2.INTER_LINEAR)
        masks = []
        for sample in self.dataset.samples_of(image_id):
            m = sample.mask()
            if (nh, nw) != (h, w):
                m = cv2.resize(m.astype(np.uint8), (nw, nh), interpolation=cv2.INTER_NEAREST).astype(bool)
            if m.any():
                full = np.zeros((s, s), dtype=bool)
                full[:nh, :nw] = m
                masks.append(full)
        out = (padded, np.stack(masks) if masks else np.zeros((0, s, s), dtype=bool))
        self._cache[image_id] = out
        return out

    def draw(self, n: int, k: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
        """``n`` images, each with ``k`` of its object masks (drawn with replacement when it has fewer)."""
        out = []
        while len(out) < n:
            image, masks = self.item(self.image_ids[int(rng.integers(len(self.image_ids)))])
            if len(masks) == 0:
                continue
            pick = rng.choice(len(masks), size=k, replace=len(masks) < k)
            out.append((image, masks[pick]))
        return out


def random_point(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A pixel centre drawn uniformly inside ``mask`` (x, y)."""
    ys, xs = np.nonzero(mask)
    i = int(rng.integers(len(xs)))
    return np.array([xs[i] + 0.5, ys[i] + 0.5])


def box_of(mask: np.ndarray, rng: np.random.Generator | None = None, jitter: float = 0.0) -> np.ndarray:
    """The mask's box (x0, y0, x1, y1), each side moved by up to ``jitter`` of its length when rng is given."""
    ys, xs = np.nonzero(mask)
    box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    if rng is not None and jitter > 0:
        w, h = box[2] - box[0], box[3] - box[1]
        box += rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
    return box


def make_batch(sampler: MaskSampler, cfg: SegmenterTrainConfig, rng: np.random.Generator) -> dict:
    """One step's images and prompts, grouped by kind (box, click, click + corrections): one decoder call
    per group. ``groups[kind]``: the image of each prompt, its target mask and its box or first click."""
    items = sampler.draw(cfg.batch_size, cfg.prompts_per_image, rng)
    images = torch.from_numpy(np.stack([im for im, _ in items])).permute(0, 3, 1, 2).float()
    found: dict[str, dict[str, list]] = {}
    for b, (_, masks) in enumerate(items):
        for mask in masks:
            u = rng.random()
            kind = "box" if u < cfg.box_fraction else "correct" if u < cfg.box_fraction + cfg.correction_fraction \
                else "click"
            group = found.setdefault(kind, {"image": [], "masks": [], "prompt": []})
            group["image"].append(b)
            group["masks"].append(mask)
            prompt = box_of(mask, rng, cfg.box_jitter) if kind == "box" else random_point(mask, rng)[None]
            group["prompt"].append(prompt)
    groups = {kind: {"image": torch.tensor(g["image"]), "masks": torch.from_numpy(np.stack(g["masks"])),
                     "prompt": torch.from_numpy(np.stack(g["prompt"])).float()} for kind, g in found.items()}
    if "correct" in groups:
        groups["correct"]["rounds"] = int(rng.integers(1, cfg.max_corrections + 1))
    return {"images": images, "groups": groups}


# ---------------------------------------------------------------- the loss


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """Per mask (K, M): the mean sigmoid focal loss over pixels."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma
    loss = (alpha * target + (1 - alpha) * (1 - target)) * loss
    return loss.flatten(2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per mask (K, M): 1 - soft Dice."""
    p = torch.sigmoid(logits).flatten(2)
    t = target.flatten(2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def mask_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per mask (K, M): IoU of the thresholded logits with the target."""
    pred = (logits > 0).flatten(2)
    t = target.flatten(2) > 0.5
    inter = (pred & t).sum(-1).float()
    union = (pred | t).sum(-1).float()
    return inter / union.clamp(min=1)


class SamTrainer(torch.nn.Module):
    """The Sam plus the loss of one batch, so DDP wraps one forward that returns the loss."""

    def __init__(self, sam, cfg: SegmenterTrainConfig) -> None:
        super().__init__()
        self.sam = sam
        self.cfg = cfg

    def _decode(self, embeddings: torch.Tensor, points=None, boxes=None, prior: torch.Tensor | None = None,
                multimask: bool = False):
        """Masks (upsampled to the input size), IoU predictions and low-resolution logits of N prompts, the
        n-th on ``embeddings[n]``: the image embedding enters as part of the dense prompt embedding (the
        decoder adds the two), so prompts of different images share one decoder call. ``prior``: (N, h, w)
        low-resolution logits of a previous answer, SAM's mask prompt."""
        sam = self.sam
        sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None if prior is None else prior[:, None])
        low, iou = sam.mask_decoder(image_embeddings=torch.zeros_like(embeddings[:1]),
                                    image_pe=sam.prompt_encoder.get_dense_pe(), sparse_prompt_embeddings=sparse,
                                    dense_prompt_embeddings=dense + embeddings, multimask_output=multimask)
        size = sam.image_encoder.img_size
        return F.interpolate(low, (size, size), mode="bilinear", align_corners=False), iou, low

    def _corrections(self, embeddings: torch.Tensor, coords: torch.Tensor, target: torch.Tensor, rounds: int):
        """SAM's interactive loop without gradients: ``rounds`` correction clicks, each at the error of the
        model's own answer (best by its IoU head), each answer given the previous one's low-resolution logits.
        Returns all clicks, their labels and the last answer's logits (the prompt of the charged answer)."""
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=coords.device)
        gts = target.cpu().numpy() > 0.5
        prior = None
        rows = torch.arange(len(coords), device=coords.device)
        for _ in range(rounds):
            with torch.no_grad():
                logits, iou, low = self._decode(embeddings.detach(), points=(coords, labels), prior=prior,
                                                multimask=prior is None and coords.shape[1] == 1)
                pick = iou.argmax(1)
                best = (logits[rows, pick] > 0).cpu().numpy()
                prior = low[rows, pick]
            new_c, new_l = [], []
            for pred, gt, c in zip(best, gts, coords.cpu().numpy(), strict=True):
                click = correction_click(pred, gt)
                new_c.append(c[-1] if click is None else click[0])
                new_l.append(-1 if click is None else click[1])  # -1: a padding point (nothing to correct)
            added = torch.tensor(np.array(new_c), dtype=coords.dtype, device=coords.device)
            coords = torch.cat([coords, added[:, None]], 1)
            labels = torch.cat([labels, torch.tensor(new_l, dtype=labels.dtype, device=labels.device)[:, None]], 1)
        return coords, labels, prior

    def forward(self, batch: dict) -> torch.Tensor:
        sam, cfg = self.sam, self.cfg
        device = sam.pixel_mean.device
        images = batch["images"].to(device)
        embeddings = sam.image_encoder((images - sam.pixel_mean) / sam.pixel_std)
        total, count = embeddings.new_zeros(()), 0
        for kind, group in batch["groups"].items():
            emb = embeddings[group["image"].to(device)]
            target = group["masks"].to(device).float()
            prompt = group["prompt"].to(device)
            if kind == "box":
                logits, iou, _ = self._decode(emb, boxes=prompt)
            elif kind == "click":
                labels = torch.ones(prompt.shape[:2], dtype=torch.int, device=device)
                logits, iou, _ = self._decode(emb, points=(prompt, labels), multimask=True)
            else:
                coords, labels, prior = self._corrections(emb, prompt, target, int(group["rounds"]))
                logits, iou, _ = self._decode(emb, points=(coords, labels), prior=prior)
            target = target[:, None].expand_as(logits)
            per_mask = cfg.focal_weight * focal_loss(logits, target) + cfg.dice_weight * dice_loss(logits, target)
            # one output: itself; a single click's three: only the best is charged (part or whole)
            mask_loss = per_mask.min(dim=1).values
            iou_loss = ((iou - mask_iou(logits.detach(), target)) ** 2).mean(1)
            total = total + (mask_loss + cfg.iou_weight * iou_loss).sum()
            count += len(logits)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # DDP wants a gradient for every parameter: a prompt kind absent from this step's draw (the
            # mask-input branch is prompted only by the correction group) gets zeros
            total = total + 0.0 * sum(p.view(-1)[0] for p in sam.parameters() if p.requires_grad)
        return total / max(count, 1)


# ---------------------------------------------------------------- the run


def _write_dir(out: Path, sam, cfg: SegmenterTrainConfig) -> None:
    """config.json (architecture + generator settings) and model.safetensors: what load_segment_anything reads."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in sam.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps({**cfg.arch, "generator": cfg.generator}, indent=1))


def mark_trained(out: Path, cfg: SegmenterTrainConfig, dataset: RegionDataset, steps: int,
                 metrics: dict | None) -> None:
    """region_perception.json: trained (no random-weights marker), on what, how long, and how well."""
    from ..models.tiny import RANDOM_WEIGHTS_MARKER
    from ..models.toy import TOY_NOTE

    (out / RANDOM_WEIGHTS_MARKER).unlink(missing_ok=True)
    synthetic = dataset.name == "synthetic"
    meta = {"trained": True, "weights_random": False, "kind": "segmenter",
            "note": TOY_NOTE.replace("toy model", "toy segmenter") if synthetic else f"segmenter trained on {cfg.data}",
            "base": cfg.model, "data": str(cfg.data), "steps": steps, "seed": cfg.seed,
            "architecture": cfg.arch, "generator": cfg.generator}
    if metrics:
        meta["metrics"] = metrics
    (out / "region_perception.json").write_text(json.dumps(meta, indent=1))


def train_segmenter(cfg: SegmenterTrainConfig) -> dict:
    """Train a Sam of ``cfg.arch`` from scratch on ``cfg.data``; writes OUT (config.json, model.safetensors,
    region_perception.json, training.json, README.md); returns the summary (with ``metrics`` from
    :func:`~..evaluation.segment.evaluate_segmenter` on the val split unless ``eval_limit`` is 0)."""
    from ..models.sam import build_sam_from_config
    from .trainer import TrainError, _accelerator, _optimise, _summary, check_dataset

    check_cfg = _CheckView(cfg)
    dataset = check_dataset(check_cfg)  # the output directory, schedule and split checked; nothing written
    if cfg.batch_size < 1 or cfg.prompts_per_image < 1:
        raise TrainError("batch_size and prompts_per_image must be at least 1")
    if not 0 <= cfg.box_fraction + cfg.correction_fraction <= 1:
        raise TrainError("box_fraction + correction_fraction must be in [0, 1]")
    try:
        torch.manual_seed(cfg.seed)
        sam = build_sam_from_config(cfg.arch)
    except (KeyError, ValueError) as exc:
        raise TrainError(f"arch: {exc}") from None
    sampler = MaskSampler(dataset, int(cfg.arch["img_size"]))
    if not sampler.image_ids:
        raise TrainError(f"--data {cfg.data} ({cfg.split}): no image has an object mask")
    out = Path(cfg.out)
    accelerator, mixed = _accelerator(cfg)
    sam.train()
    params = [p for p in sam.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    label = (f"train --stage segmenter: Sam ({n_params / 1e6:.2f}M parameters, {cfg.arch['img_size']} px) on "
             f"{cfg.data}: {cfg.steps} steps x {cfg.batch_size} images x {cfg.prompts_per_image} prompts x "
             f"{accelerator.num_processes} process(es); device {accelerator.device}, {torch.get_num_threads()} "
             "thread(s)")
    t0 = time.perf_counter()
    loop = _optimise(cfg, accelerator, SamTrainer(sam, cfg), params, cfg.steps,
                     lambda m, rng: make_batch(sampler, cfg, rng), label)
    trained = accelerator.unwrap_model(loop.wrapper).sam.eval()
    summary = _summary(cfg, "sam", ["segment"], ["all"], n_params, cfg.steps, loop, accelerator, mixed)
    summary.update(prompts_per_image=cfg.prompts_per_image, box_fraction=cfg.box_fraction,
                   correction_fraction=cfg.correction_fraction, max_corrections=cfg.max_corrections,
                   box_jitter=cfg.box_jitter, architecture=cfg.arch, generator=cfg.generator)
    if accelerator.is_main_process:
        _write_dir(out, trained, cfg)
        mark_trained(out, cfg, dataset, cfg.steps, None)
    accelerator.wait_for_everyone()
    if cfg.eval_limit != 0 and accelerator.is_main_process:
        summary["metrics"] = evaluate_dir(out, cfg.data, cfg.val_split, limit=cfg.eval_limit,
                                          device=str(accelerator.device), progress=cfg.progress)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if accelerator.is_main_process:
        mark_trained(out, cfg, dataset, cfg.steps, summary.get("metrics"))
        (out / "training.json").write_text(json.dumps({"config": _jsonable(asdict(cfg)), **summary}, indent=1))
        write_card(out, summary)
        import shutil

        from .trainer import CHECKPOINTS

        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


class _CheckView:
    """The fields ``trainer.check_dataset`` reads, from a segmenter config."""

    def __init__(self, cfg: SegmenterTrainConfig) -> None:
        self.out, self.overwrite, self.resume, self.data, self.split = cfg.out, cfg.overwrite, cfg.resume, cfg.data, \
            cfg.split
        self.steps, self.epochs, self.batch_size, self.grad_accum = cfg.steps, None, cfg.batch_size, 1
        self.warmup_ratio = cfg.warmup_ratio


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def evaluate_dir(out: Path, data: str, split: str, *, limit: int | None = None, device: str = "cpu",
                 progress: bool = False, seed: int = 0) -> dict:
    """:func:`~..evaluation.segment.evaluate_segmenter` of the Sam saved in ``out`` on ``data``'s ``split``."""
    from ..common.feature_cache import FeatureCache
    from ..datasets import load_dataset
    from ..evaluation.segment import evaluate_segmenter
    from ..models.sam import SegmentAnythingSegmenter, load_segment_anything

    sam, generator, weights_random = load_segment_anything(str(out), torch.device(device))
    segmenter = SegmentAnythingSegmenter(sam, FeatureCache(4), name=str(out), weights_random=weights_random,
                                         generator_kwargs=generator)
    return evaluate_segmenter(segmenter, load_dataset(data, split), limit=limit, progress=progress, seed=seed)


def write_card(out: Path, summary: dict) -> None:
    """README.md: what the weights are, what they learnt from, how they were made, how well they segment."""
    meta = json.loads((out / "region_perception.json").read_text())
    lines = [f"# {out.name}", "",
             f"segment-anything's `Sam` trained from scratch by `region-perception train --stage segmenter` on "
             f"`{summary['data']}`.", ""]
    if "synthetic" in str(meta.get("note", "")):
        lines += [f"**{meta['note']}**: it knows only the synthetic world's coloured shapes (4 shapes, 6 colours, "
                  "3 sizes on plain or textured backgrounds), nothing of real images.", ""]
    arch = summary["architecture"]
    lines += [
        "| | |", "|---|---|",
        f"| architecture | {arch['img_size']} px input, conv stem {arch.get('conv_stem') or '-'} (stride "
        f"{arch.get('patch_size', 16)}), ViT {arch['encoder_embed_dim']} x {arch['encoder_depth']} blocks, "
        f"decoder {arch['prompt_embed_dim']}; {summary['trainable_parameters'] / 1e6:.2f}M parameters |",
        f"| prompts | {summary['prompts_per_image']} objects an image; {round(100 * summary['box_fraction'])} % "
        f"boxes, {round(100 * summary['correction_fraction'])} % a click plus 1-{summary['max_corrections']} "
        "correction clicks (at the error of the model's own answer, which comes back as the mask prompt: SAM's "
        "interactive loop), the rest one click |",
        f"| steps | {summary['steps']} x {summary['batch_size']} images x {summary['world_size']} process(es), AdamW "
        f"lr {summary['lr']}, cosine, {summary['warmup_steps']} warm-up, seed {summary['seed']} |",
        f"| loss | {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} |",
        f"| training time | {summary['train_seconds']} s ({summary['seconds_per_step']} s a step) on "
        f"{summary['device']}, {summary['world_size']} process(es) of {summary['threads']} thread(s) |",
        f"| automatic mask generator | {json.dumps(summary['generator'])} |",
        "",
    ]
    metrics = summary.get("metrics")
    if metrics:
        from ..evaluation.segment import table_rows

        lines += [f"## Evaluation (`{metrics.get('split', 'val')}` split, {metrics['n']} objects in "
                  f"{metrics['images']} images, `region-perception eval segment`)", "",
                  "| metric | value | baseline | baseline value |", "|---|---|---|---|",
                  *table_rows(metrics), ""]
    if meta.get("how_made"):
        lines += ["## How it was made", "", meta["how_made"], ""]
    lines += ["Use it as the segmenter: `segmenter: toy-sam` (backend `sam`) or `segmenter:=DIR`.", ""]
    (out / "README.md").write_text("\n".join(lines))
