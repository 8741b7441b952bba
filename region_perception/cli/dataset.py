"""``region-perception dataset``: write the synthetic region world, or summarise a dataset directory."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter


def add_parser(sub) -> None:
    """Register ``dataset synthetic`` and ``dataset info`` on the main parser's subcommands."""
    p = sub.add_parser("dataset", help="write the synthetic region world; summarise a dataset directory")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    syn = dsub.add_parser("synthetic", help="coloured shapes in COCO / RefCOCO / region-caption formats")
    syn.add_argument("--out", required=True, help="directory to write (refused if not empty, see --overwrite)")
    syn.add_argument("--images", type=int, default=200, help="number of images (default 200)")
    syn.add_argument("--sequences", type=int, default=0,
                     help="write this many motion sequences (moving objects, per-frame truth) instead of images")
    syn.add_argument("--frames", type=int, default=48, help="--sequences: frames per sequence (default 48)")
    syn.add_argument("--size", type=int, default=128, help="image side in pixels (default 128)")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--val-fraction", dest="val_fraction", type=float, default=0.2)
    syn.add_argument("--overwrite", action="store_true", help="replace an existing synthetic dataset there")
    syn.add_argument("--json", action="store_true", help="one JSON object on stdout")
    syn.set_defaults(func=run_synthetic)
    info = dsub.add_parser("info", help="counts of a dataset split (any format load_dataset reads)")
    info.add_argument("root")
    info.add_argument("--split", default="val")
    info.add_argument("--images", dest="image_dir", help="image directory when not beside the annotations")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=run_info)


def run_synthetic(args: argparse.Namespace) -> int:
    from ..datasets.synthetic import generate

    if args.sequences:
        return run_sequences(args)
    out = generate(args.out, images=args.images, size=args.size, seed=args.seed, val_fraction=args.val_fraction,
                   overwrite=args.overwrite)
    meta = json.loads((out / "synthetic.json").read_text())
    summary = {"out": str(out), "images": meta["images"], "splits": meta["splits"], "seed": meta["seed"]}
    print(json.dumps(summary) if args.json else f"wrote {meta['images']} images to {out} (splits {meta['splits']})")
    return 0


def run_sequences(args: argparse.Namespace) -> int:
    """``--sequences N``: the moving world (``datasets.synthetic_motion``), for ``eval track``."""
    from ..datasets.synthetic_motion import generate_sequences

    if args.sequences < 0 or args.frames < 8:
        print("region-perception dataset: error: need --sequences >= 1 and --frames >= 8", file=sys.stderr)
        return 2
    out = generate_sequences(args.out, sequences=args.sequences, frames=args.frames, size=args.size, seed=args.seed,
                             overwrite=args.overwrite)
    meta = json.loads((out / "motion.json").read_text())
    summary = {"out": str(out), "sequences": len(meta["sequences"]), "frames": meta["frames"], "seed": meta["seed"]}
    print(json.dumps(summary) if args.json else f"wrote {summary['sequences']} sequences of {meta['frames']} frames "
          f"to {out}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..datasets.loading import load_dataset

    ds = load_dataset(args.root, args.split, images=args.image_dir)
    summary = {
        "root": str(ds.root), "split": ds.split, "format": ds.name, "images": len(ds.images),
        "regions": len(ds.samples), "categories": len(ds.categories),
        "sentences": sum(len(s.refs) for s in ds.samples), "captions": sum(len(s.captions) for s in ds.samples),
        "top_categories": dict(Counter(s.category for s in ds.samples).most_common(5)),
    }
    print(json.dumps(summary) if args.json else "\n".join(f"{k}: {v}" for k, v in summary.items()))
    return 0
