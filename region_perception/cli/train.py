"""``region-perception train``: fine-tune a backend's region pathway on COCO-format data (docs/training.md).

The same command runs on one process or under ``accelerate launch`` / ``torchrun``; bad input (an
unknown task, a dataset without annotations or with missing images, an OUT that exists) is one line on
stderr and exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import CliError, print_summary

# flags whose defaults are each stage's own config's (TrainConfig; SegmenterTrainConfig: toy-sam's recipe)
SCHEDULE = ("batch_size", "lr", "weight_decay", "warmup_ratio")
SEGMENTER_ONLY = ("prompts_per_image", "box_fraction", "correction_fraction", "max_corrections", "box_jitter")
REGION_ONLY = ("refer_margin", "refer_margin_weight")


def add_parser(sub) -> None:
    """Register ``train`` on the main parser's subcommands."""
    p = sub.add_parser("train", help="fine-tune a model's region pathway on COCO-format data (docs/training.md)")
    p.add_argument("--model", required=True,
                   help="base: a directory, Hugging Face id, registry name, or toy-regionvlm / toy-florence2 / "
                        "toy-regiongpt (the toy architecture, from scratch)")
    p.add_argument("--data", required=True, help="dataset directory (synthetic, COCO, RefCOCO or Visual Genome)")
    p.add_argument("--tasks", default="caption,classify,refer", help="comma list of caption, classify, refer")
    p.add_argument("--out", required=True, help="directory to write the trained model into")
    p.add_argument("--train", help="parameter groups to train, comma list (default: the backend's recipe; "
                                   "every group for a random base)")
    n = p.add_mutually_exclusive_group()
    n.add_argument("--steps", type=int, help="optimizer steps")
    n.add_argument("--epochs", type=float, help="passes over the training rows (instead of --steps)")
    p.add_argument("--batch-size", dest="batch_size", type=int,
                   help="rows (segmenter: images) per process per micro-batch (default 16; segmenter 8)")
    p.add_argument("--grad-accum", dest="grad_accum", type=int, default=1, help="micro-batches per optimizer step")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4; segmenter, from scratch: 2e-3)")
    p.add_argument("--weight-decay", dest="weight_decay", type=float, help="AdamW weight decay (default 0; "
                                                                          "segmenter 0.05)")
    p.add_argument("--warmup-ratio", dest="warmup_ratio", type=float, help="warm-up share of the steps (default "
                                                                          "0.03; segmenter 0.05)")
    ref = p.add_argument_group("region stage, referring sentences")
    ref.add_argument("--refer-margin", dest="refer_margin", type=float,
                     help="also give each referring sentence with another object's region of its image and train "
                          "its loss there to exceed the true region's by this many nats a token (max-margin MMI; "
                          "default 0: the language-model loss only)")
    ref.add_argument("--refer-margin-weight", dest="refer_margin_weight", type=float,
                     help="that hinge's weight beside the language-model loss (default 1)")
    seg = p.add_argument_group("segmenter stage (the defaults are toy-sam's recipe)")
    seg.add_argument("--prompts-per-image", dest="prompts_per_image", type=int, help="objects prompted per image")
    seg.add_argument("--box-fraction", dest="box_fraction", type=float, help="share of prompts that are boxes")
    seg.add_argument("--correction-fraction", dest="correction_fraction", type=float,
                     help="share of prompts that are a click plus correction clicks (SAM's interactive loop)")
    seg.add_argument("--max-corrections", dest="max_corrections", type=int,
                     help="correction clicks of such a prompt: 1 to this many")
    seg.add_argument("--box-jitter", dest="box_jitter", type=float,
                     help="each box side moved by up to this share of the box's size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split", default="train", help="training split (default train)")
    p.add_argument("--val-split", dest="val_split", default="val", help="evaluation split (default val)")
    p.add_argument("--eval-limit", dest="eval_limit", type=int, help="evaluate the first N items per task (0: skip)")
    p.add_argument("--save-every", dest="save_every", type=int, default=0,
                   help="optimizer steps between checkpoints (default: about five per run)")
    p.add_argument("--resume", action="store_true", help="continue from OUT's latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.add_argument("--device", default="auto", help="auto (CUDA when present) or cpu")
    p.add_argument("--sizes", help='toy bases: size overrides as JSON, e.g. \'{"lm_layers": 3}\'')
    p.add_argument("--stage", choices=("vision", "region", "segmenter"), default="region",
                   help="region (stage 1, default): the region pathway with the backend's recipe; vision (stage "
                        "0): pre-train the vision tower on dense per-cell and mask-pooled labels (COCO masks and "
                        "their attributes); a stage-1 run on its output then freezes the tower; segmenter: train "
                        "segment-anything's Sam (the toy size, from scratch) on the data's masks with point, "
                        "multi-point and box prompts (--model names the result, e.g. toy-sam; docs/segmenter.md)")
    p.add_argument("--settings", help="engine settings stored with the model as its own and used by its final "
                                      "evaluation, JSON, e.g. '{\"proposal_filter.min_area_fraction\": 0.01}' "
                                      "(the data's categories are always stored as its default vocabulary)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..training.trainer import TrainConfig, train

    try:
        sizes = json.loads(args.sizes) if args.sizes else {}
    except json.JSONDecodeError as exc:
        raise CliError(f"--sizes: not JSON ({exc})") from None
    try:
        settings = json.loads(args.settings) if args.settings else {}
    except json.JSONDecodeError as exc:
        raise CliError(f"--settings: not JSON ({exc})") from None
    if not isinstance(settings, dict):
        raise CliError("--settings: a JSON object of engine settings")
    from ..engine.settings import SettingsError, model_own_settings

    try:
        model_own_settings({"settings": settings})  # only what a model may carry, with the right types
    except SettingsError as exc:
        raise CliError(f"--settings: {exc}") from None
    if args.eval_limit is not None and args.eval_limit < 0:
        raise CliError("--eval-limit must be 0 or more")
    refused = {"segmenter": REGION_ONLY, "vision": (*SEGMENTER_ONLY, *REGION_ONLY), "region": SEGMENTER_ONLY}
    given = [f"--{k.replace('_', '-')}" for k in refused[args.stage] if getattr(args, k) is not None]
    if given:
        owner = "--stage segmenter" if given[0][2:].replace("-", "_") in SEGMENTER_ONLY else "--stage region"
        raise CliError(f"{', '.join(given)}: only {owner} takes these")
    if args.stage == "segmenter":
        return _run_segmenter(args)
    cfg = TrainConfig(
        model=args.model, data=args.data, tasks=args.tasks.split(","), out=Path(args.out),
        train=[g.strip() for g in args.train.split(",") if g.strip()] if args.train else None,
        steps=args.steps, epochs=args.epochs, grad_accum=args.grad_accum, seed=args.seed, resume=args.resume,
        overwrite=args.overwrite, split=args.split, val_split=args.val_split, eval_limit=args.eval_limit,
        save_every=args.save_every, device=args.device, sizes=sizes, progress=args.progress, stage=args.stage,
        settings=settings, **_given(args, (*SCHEDULE, *REGION_ONLY)),
    )
    return _train_and_print(train, cfg, args.json)


def _given(args: argparse.Namespace, keys: tuple[str, ...]) -> dict:
    """The flags of ``keys`` given on the command line; the others keep the stage config's defaults."""
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _train_and_print(train, cfg, as_json: bool) -> int:
    """Run a stage; its summary on the main process only (torchrun's other ranks print nothing)."""
    from ..evaluation import rank_world
    from ..training.trainer import TrainError

    try:
        summary = train(cfg)
    except TrainError as exc:
        raise CliError(str(exc)) from None
    if rank_world()[0] != 0:
        return 0
    print_summary(summary, as_json)
    return 0


def _run_segmenter(args: argparse.Namespace) -> int:
    """``train --stage segmenter``: the same loop (progress, checkpoints, --resume, torchrun) for a Sam."""
    from ..training.segmenter import SegmenterTrainConfig, train_segmenter

    if args.tasks != "caption,classify,refer" or args.train or args.settings or args.sizes:
        raise CliError("--stage segmenter takes no --tasks, --train, --settings or --sizes")
    extra = {"steps": args.steps} if args.steps else {}
    if args.epochs:
        raise CliError("--stage segmenter counts --steps, not --epochs")
    extra.update(_given(args, (*SCHEDULE, *SEGMENTER_ONLY)))
    cfg = SegmenterTrainConfig(
        data=args.data, out=Path(args.out), model=args.model, seed=args.seed, grad_accum=args.grad_accum,
        resume=args.resume,
        overwrite=args.overwrite, split=args.split, val_split=args.val_split, eval_limit=args.eval_limit,
        save_every=args.save_every, device=args.device, progress=args.progress, **extra,
    )
    return _train_and_print(train_segmenter, cfg, args.json)
