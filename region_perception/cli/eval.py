"""``region-perception eval TASK``: the seeds' protocols over a dataset split, from the command line."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..evaluation.runner import TASKS
from .common import CliError, add_engine_arguments, engine_from_args, print_summary


def add_parser(sub) -> None:
    """Register ``eval`` on the main parser's subcommands."""
    p = sub.add_parser("eval", help="answer quality: refer, comprehension, classify, caption (docs/evaluation.md)")
    p.add_argument("task", choices=[*TASKS, "segment", "track"],
                   help="a task of the seeds' protocols; segment: a segmenter (--model names it, docs/segmenter.md); "
                        "track (docs/follow.md)")
    p.add_argument("--dataset", required=True, help="dataset directory (synthetic, COCO, RefCOCO or Visual Genome)")
    p.add_argument("--split", default="val", help="split (val, train, testA, val2017 ...; default val)")
    p.add_argument("--images", dest="image_dir", help="image directory when not beside the annotations")
    p.add_argument("--refs-file", dest="refs_file", help="RefCOCO: which refs(*).p (default unc/umd)")
    p.add_argument("--limit", type=int, help="first N samples only")
    p.add_argument("--out", help="per-sample rows (jsonl); a rerun skips the rows it already has")
    p.add_argument("--predictions", help="score this COCO-format results file instead of running a model")
    p.add_argument("--region", choices=["box", "mask"], default="box", help="how a ground-truth region is given")
    p.add_argument("--rank", action="store_true", help="classify: rank every label by the model's loss")
    p.add_argument("--vocab-name", dest="vocabulary_name", default="", help='classify: e.g. "COCO-80" in the prompt')
    p.add_argument("--candidates", choices=["gt", "proposals"], default="gt",
                   help="comprehension: the image's ground-truth regions, or the engine's mask proposals")
    p.add_argument("--no-meteor", dest="meteor", action="store_false", help="caption: skip METEOR (Java)")
    p.add_argument("--merge-shards", dest="merge_shards", type=int, default=0, metavar="WORLD",
                   help="only merge --out's per-rank files of a WORLD-rank run and summarise them")
    p.add_argument("--recheck-every", dest="recheck_every", type=int, default=10,
                   help="track: frames between re-checks while following (default 10)")
    p.add_argument("--methods", default="follow,flow,hold",
                   help="track: methods to run, the first one's per-object rows are printed (default follow,flow,hold)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object on stdout")
    add_engine_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..datasets import load_dataset
    from ..evaluation.runner import evaluate, summarize_file

    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.task == "track":
        return run_track(args)
    if args.task == "segment":
        return run_segment(args)
    dataset = load_dataset(args.dataset, args.split, images=args.image_dir, refs_file=args.refs_file)
    if args.merge_shards:
        if not args.out:
            raise CliError("--merge-shards needs --out")
        summary = summarize_file(args.task, Path(args.out), dataset, args.merge_shards, meteor=args.meteor)
    else:
        if args.device and args.device.startswith("cuda") and ":" not in args.device and "LOCAL_RANK" in os.environ:
            args.device = f"cuda:{int(os.environ['LOCAL_RANK'])}"  # torchrun: one GPU per rank
        engine = None if args.predictions else engine_from_args(args)
        summary = evaluate(
            args.task, engine, dataset, limit=args.limit, out=Path(args.out) if args.out else None,
            progress=args.progress, predictions=args.predictions, region=args.region, rank=args.rank,
            vocabulary_name=args.vocabulary_name, candidates=args.candidates, meteor=args.meteor,
            route="", seed=engine.config.seed if engine else (args.seed or 0),
        )
    print_summary(summary, args.json)
    return 0


def run_segment(args: argparse.Namespace) -> int:
    """``eval segment --model SEGMENTER``: one-click and box mIoU, NoC@85/90, the proposals' upper bound, each
    beside its baseline (the disk at a click, the box as the mask, superpixels)."""
    import torch

    from ..common.feature_cache import FeatureCache
    from ..datasets import load_dataset
    from ..evaluation.segment import evaluate_segmenter
    from ..models.loading import load_segmenter, resolve_device

    name = args.model or args.segmenter
    if not name or name == "none":
        raise CliError("eval segment: name the segmenter with --model (toy-sam, a SAM directory, vit_b:/path.pth, "
                       "or an HF id such as facebook/sam-vit-base)")
    dataset = load_dataset(args.dataset, args.split, images=args.image_dir, refs_file=args.refs_file)
    device = resolve_device(args.device or "auto")
    with torch.inference_mode():
        segmenter = load_segmenter(name, args.segmenter_backend or "auto", FeatureCache(4), device,
                                   revision=args.segmenter_revision or args.model_revision or "")
        summary = evaluate_segmenter(segmenter, dataset, limit=args.limit, progress=args.progress,
                                     seed=args.seed or 0)
    summary = {"task": "segment", "segmenter": name, "weights_random": bool(segmenter.weights_random),
               "dataset": {"root": str(dataset.root), "split": dataset.split}, **summary}
    print_summary(summary, args.json)
    return 0


def run_track(args: argparse.Namespace) -> int:
    """``eval track``: follow each sequence's targets from their first mask, beside the baselines.

    The re-check is the colour one; with ``--model`` the region-VLM confirms (its calls counted)."""
    from ..datasets.synthetic_motion import is_motion_dataset, load_sequences
    from ..evaluation.track import METHODS, evaluate_tracking
    from ..tracking import TrackConfig

    if not is_motion_dataset(args.dataset):
        raise CliError(f"{args.dataset}: not a motion dataset (write one: region-perception dataset synthetic "
                       "--sequences N --out DIR)")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise CliError(f"--methods {args.methods!r}: expected a list of {', '.join(METHODS)}")
    if args.recheck_every < 0:
        raise CliError("--recheck-every must be >= 0")
    segmenter = engine = None
    if args.model:
        engine = engine_from_args(args)
        if engine.weights_random:
            raise CliError(f"--model {args.model}: random weights cannot judge what is followed; give a trained one")
        segmenter = engine.segmenter if args.segmenter and args.segmenter != "none" else None
    elif args.segmenter and args.segmenter != "none":
        import torch

        from ..common.feature_cache import FeatureCache
        from ..models.loading import load_segmenter

        segmenter = load_segmenter(args.segmenter, args.segmenter_backend or "auto", FeatureCache(2),
                                   torch.device(args.device if args.device not in (None, "auto") else "cpu"))
    try:
        sequences = load_sequences(args.dataset, args.limit)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    summary = evaluate_tracking(sequences, methods, segmenter=segmenter,
                                config=TrackConfig(recheck_every=args.recheck_every), engine=engine)
    if segmenter is not None:
        summary["segmenter"] = getattr(segmenter, "name", args.segmenter)
    if engine is not None:
        summary["model"] = engine.model_label
    print_summary(summary, args.json)
    return 0
