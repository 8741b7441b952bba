"""``region-perception describe | ask | refer | classify | snap``: ask about regions of an image file.

Pixel coordinates by default (``--normalized`` for [0, 1]); ``--json`` prints one JSON
object on stdout. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from ..engine.settings import package_defaults
from .common import (
    CliError,
    add_engine_arguments,
    engine_from_args,
    print_result,
    read_depth,
    read_image,
    regions_from_args,
)


def cmd_task(args: argparse.Namespace) -> int:
    from ..geometry.regions import validate

    image = read_image(args.image)
    if args.command == "classify" and not (args.points or args.scribble or args.box or args.mask):
        raise CliError("classify: give a region (--points, --scribble, --box or --mask)")
    # bad regions fail here, before minutes of model loading
    regions = [validate(r, image.shape[:2]) for r in regions_from_args(args, image.shape[:2])]
    depth = read_depth(args)  # a bad depth file or intrinsics fail here too
    engine = engine_from_args(args)
    if args.command == "describe":
        from ..geometry.regions import WholeImage

        result = engine.caption(image, regions or [WholeImage()])
    elif args.command == "ask":
        result = engine.ask(image, regions, args.question)
    elif args.command == "classify":
        from ..service.config_file import read_vocabulary, vocabulary_display_name

        if args.labels:
            labels, vocab_name = [v.strip() for v in args.labels.split(",")], ""
        else:
            vocab = engine.config.default_vocabulary
            try:
                labels, vocab_name = read_vocabulary(vocab), vocabulary_display_name(vocab)
            except FileNotFoundError as exc:
                raise CliError(str(exc)) from None
        if not regions:
            raise CliError("classify: give a region (--points, --scribble, --box or --mask)")
        result = engine.classify(image, regions, labels, rank=args.rank, vocabulary_name=vocab_name)
    else:  # refer
        result = engine.refer(image, args.text)
        if args.out:
            import cv2

            cv2.imwrite(args.out, result.outputs[0].mask.astype(np.uint8) * 255)
    if depth is not None:
        from ..geometry.depth import DepthSettings, locate_result

        metres, intrinsics = depth
        locate_result(result, metres, intrinsics, DepthSettings(scale=args.depth_scale))
    print_result(result.to_json(), args.json)
    return 0


def cmd_snap(args: argparse.Namespace) -> int:
    from ..engine.vocabulary import VocabularySnapper
    from ..service.config_file import read_vocabulary

    labels = [v.strip() for v in args.labels.split(",")] if args.labels else read_vocabulary(args.vocab)
    snap = VocabularySnapper(args.snap_model, revision=args.revision).snap(args.text, labels)
    top = [{"label": lbl, "similarity": sim} for lbl, sim in zip(snap.labels, snap.similarities, strict=True)]
    if args.json:
        print(json.dumps({"text": args.text, "label": snap.label, "top": top[: args.top]}, indent=1))
    else:
        print(f"{args.text!r} -> {snap.label}")
        for row in top[: args.top]:
            print(f"  {row['similarity']:.3f}  {row['label']}")
    return 0


def add_parsers(sub) -> None:
    """Register the task commands and ``snap`` on the main parser's subcommands."""
    def task_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("image", help="image file (any format OpenCV reads)")
        p.add_argument("--points", action="append", help='clicked points "x,y;x,y" (repeat for more regions)')
        p.add_argument("--scribble", action="append", help='polyline vertices "x,y;x,y;..."')
        p.add_argument("--box", action="append", help="box x1,y1,x2,y2")
        p.add_argument("--mask", action="append", help="mask image, nonzero = inside, the image's size")
        p.add_argument("--normalized", action="store_true", help="coordinates are in [0, 1] of the image")
        add_engine_arguments(p)
        p.add_argument("--max-new-tokens", dest="max_new_tokens", type=int,
                       help="generation length (unset: --config's, the model's own, else 30)")
        p.add_argument("--json", action="store_true", help="one JSON object on stdout")
        p.add_argument("--depth", help="depth image aligned to IMAGE (16-bit PNG x --depth-scale, float TIFF "
                       "or .npy in metres): adds each region's 3D position and size")
        p.add_argument("--intrinsics", help="the depth image's fx,fy,cx,cy in pixels (with --depth)")
        p.add_argument("--depth-scale", type=float, default=0.001, help="16-bit depth units to metres (0.001: mm)")
        p.set_defaults(func=cmd_task)
        return p

    task_parser("describe", "caption the region(s); no region = the whole image")
    task_parser("ask", "answer a question about the region(s)").add_argument("--question", required=True)
    refer = task_parser("refer", "find the region a sentence refers to")
    refer.add_argument("--text", required=True, help="the referring expression")
    refer.add_argument("--out", help="write the selected mask as a PNG of the image's size")
    classify = task_parser("classify", "name the region with a label from a vocabulary")
    group = classify.add_mutually_exclusive_group()
    group.add_argument("--labels", help='candidate labels "a,b,c"')
    group.add_argument("--vocab", dest="default_vocabulary",
                       help="vocabulary name or file (unset: --config's, the model's own, else coco80)")
    classify.add_argument("--rank", action="store_true", help="rank every label by the model's loss")

    snap = sub.add_parser("snap", help="snap free text onto a vocabulary by sentence embedding")
    snap.add_argument("text")
    snap_group = snap.add_mutually_exclusive_group()
    snap_group.add_argument("--vocab", default=package_defaults()["default_vocabulary"],
                            help="vocabulary name or file (default: the package default, coco80)")
    snap_group.add_argument("--labels", help='labels "a,b,c"')
    snap.add_argument("--top", type=int, default=5)
    snap.add_argument("--snap-model", default=package_defaults()["snap_model"], help="sentence-transformers model")
    snap.add_argument("--revision", default="", help="hub snapping models: branch, tag or commit")
    snap.add_argument("--json", action="store_true")
    snap.set_defaults(func=cmd_snap)
