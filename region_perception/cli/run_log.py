"""``region-perception run-log LOG --queries queries.yaml --out results.jsonl``.

Regression testing on robot data: the engine answers a scripted list of queries over a
log's frames (no ROS graph), one JSON line per result, then a summary on stderr (and in
``--summary`` as JSON when asked).

``region-perception run-log LOG --follow [SENTENCE] [--points X,Y | --box ... | --mask PNG]
--out track.jsonl`` follows one object through the log's frames instead, as the node's
``~/follow`` action would (one JSON line per frame: state, score, box, mask area, position).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..logs import LogError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run-log", help="answer scripted queries over a recorded log's frames, or follow one "
                       "object through them (no ROS graph)")
    p.add_argument("log", help="MCAP file or ROS 2 bag directory")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--queries", help="queries.yaml (see region_perception/logs/script.py)")
    what.add_argument("--follow", nargs="?", const="", metavar="SENTENCE",
                      help="follow one object through the frames: a sentence (REFER finds it), or the region of "
                      "--points / --box / --mask on the first frame")
    p.add_argument("--out", required=True, help="results, one JSON line per query answer (--follow: per frame)")
    p.add_argument("--points", help='--follow: "x,y;x,y" clicks on the object in the first frame (pixels)')
    p.add_argument("--box", help="--follow: x1,y1,x2,y2 around the object in the first frame")
    p.add_argument("--mask", help="--follow: a PNG of the object in the first frame (nonzero = inside)")
    p.add_argument("--start", type=float, default=0.0,
                   help="--follow: the first frame's stamp in seconds (default: the log's first frame)")
    p.add_argument("--recheck-every", dest="recheck_every", type=int, default=10,
                   help="--follow: frames between the model's re-checks (default 10)")
    p.add_argument("--topic", help="image topic in the log (default: its image topic with most frames)")
    p.add_argument("--config", help=f"node parameters YAML (default: {DEFAULT_CONFIG.name} if present)")
    p.add_argument("--model", help="registry name, Hugging Face id or directory (default: the config's); "
                   "--follow: 'none' follows with no model (colour re-checks)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--tolerance", type=float, help="stamp match tolerance in s (default: the config's)")
    p.add_argument("--masks", help="write each result's masks (--follow: each frame's) as PNGs into this folder")
    p.add_argument("--depth-topic", help="aligned depth Image topic for 3D positions (default: the log's topic "
                   "named like depth, if any; 'none' = no 3D)")
    p.add_argument("--camera-info-topic", help="its CameraInfo topic (default: the one beside the depth topic)")
    p.add_argument("--summary", help="also write the summary as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --out / --summary if they exist")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..logs.reader import LogReader
    from ..logs.run_log import run_log
    from ..logs.script import load_script
    from ..service.config_file import engine_values, load_parameters, read_vocabulary, vocabulary_display_name

    out_path = Path(args.out)
    for existing in (out_path, Path(args.summary) if args.summary else None):
        if existing is not None and existing.exists() and not args.force:
            raise LogError(f"{existing}: already exists (use --force to overwrite)")
    if args.follow is None:
        stray = [f"--{name.replace('_', '-')}" for name in ("points", "box", "mask") if getattr(args, name)]
        if stray or args.start:
            raise LogError(f"{', '.join(stray) or '--start'}: for --follow only")
    target = follow_target(args) if args.follow is not None else None  # bad input fails before the model loads
    queries = load_script(args.queries) if args.follow is None else []
    reader = LogReader(args.log)
    topic = reader.image_topic(args.topic)
    depth_topic = None if args.depth_topic == "none" else reader.depth_topic(args.depth_topic)
    info_topic = reader.camera_info_topic(args.camera_info_topic, beside=depth_topic) if depth_topic else None
    config = args.config or (str(DEFAULT_CONFIG) if DEFAULT_CONFIG.is_file() else None)
    params: dict[str, Any] = load_parameters(config) if config else {}
    values = engine_values(params)
    given = {key: getattr(args, key) for key in ("model", "device", "seed") if getattr(args, key) is not None}
    tolerance = args.tolerance if args.tolerance is not None else float(params.get("stamp_tolerance_s", 0.05))

    from ..engine import RegionEngine, UserSettings
    from ..service.frame_buffer import FrameBuffer
    from ..service.query_processor import QueryProcessor

    no_model = target is not None and args.model == "none"
    engine = None if no_model else RegionEngine.load(UserSettings(command_line=given, config=values))
    depth = _depth_feed(reader, depth_topic, info_topic, params)
    if target is not None:
        return _follow(args, reader, topic, tolerance, engine, target, depth, out_path)
    vocabulary = engine.config.default_vocabulary  # the config's, the model's own, or the default
    if engine.weights_random:
        print("*** RANDOM WEIGHTS: the answers exercise the code path; they are not predictions ***", file=sys.stderr)
    processor = QueryProcessor(
        engine,
        FrameBuffer(1),
        lambda outcome: None,
        default_labels=read_vocabulary(vocabulary),
        vocabulary_name=vocabulary_display_name(vocabulary),
    )
    bar, progress = _progress_bar("run-log", "query", enabled=not args.no_progress)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as out:
        summary = run_log(
            reader,
            queries,
            processor,
            out,
            topic=topic,
            tolerance_s=tolerance,
            masks_dir=Path(args.masks) if args.masks else None,
            model_name=engine.model.name,
            progress=progress,
            depth=depth,
        )
    if bar is not None:
        bar.close()
    summary["out"] = str(out_path)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), file=sys.stderr)
    return 0 if summary["statuses"].keys() <= {"OK"} else 3


def _depth_feed(reader: Any, depth_topic: str | None, info_topic: str | None, params: dict[str, Any]) -> Any:
    if not depth_topic:
        return None
    from ..geometry.depth import DepthSettings
    from ..logs.run_log import DepthFeed

    settings = DepthSettings(
        scale=float(params.get("depth_scale", 0.001)),
        min_m=float(params.get("depth_min_m", 0.1)),
        max_m=float(params.get("depth_max_m", 10.0)),
        erode_px=int(params.get("depth_erode_px", 3)),
        max_stamp_diff_ms=float(params.get("depth_max_stamp_diff_ms", 50.0)),
    )
    print(f"run-log: 3D positions from {depth_topic} and {info_topic or 'no CameraInfo'}", file=sys.stderr)
    return DepthFeed(reader, depth_topic, info_topic, settings)


def follow_target(args: argparse.Namespace) -> dict[str, Any]:
    """``--follow``'s object: ``{"text": ...}`` or ``{"region": a core region}`` (one of them)."""
    import numpy as np

    from ..geometry.region_parsing import box_from_text, parse_points
    from ..geometry.regions import BoxRegion, MaskRegion, PointsRegion

    given = [name for name in ("points", "box", "mask") if getattr(args, name)]
    text = (args.follow or "").strip()
    if len(given) + bool(text) != 1:
        raise LogError("--follow needs exactly one of: a sentence, --points, --box, --mask")
    if args.recheck_every < 0:
        raise LogError(f"--recheck-every must be >= 0, got {args.recheck_every}")
    if text:
        if args.model == "none":
            raise LogError("--follow with a sentence needs a model (REFER finds the object): not --model none")
        return {"text": text}
    if args.points:
        return {"region": PointsRegion(parse_points(args.points))}
    if args.box:
        return {"region": BoxRegion(np.array(box_from_text(args.box), dtype=np.float64))}
    import cv2

    mask = cv2.imread(args.mask, cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise LogError(f"--mask {args.mask!r}: not an image OpenCV can read")
    return {"region": MaskRegion(mask > 0)}


def _follow(args: argparse.Namespace, reader: Any, topic: str, tolerance: float, engine: Any,
            target: dict[str, Any], depth: Any, out_path: Path) -> int:
    from ..logs.run_log import run_follow
    from ..tracking.follow import start_track

    def start(image: Any, key: str) -> Any:
        return start_track(1, image, region=target.get("region"), text=target.get("text", ""), engine=engine,
                           key=key, recheck_every=args.recheck_every)

    if engine is not None and engine.weights_random:
        print("*** RANDOM WEIGHTS: the model does not judge the follow (colour re-checks) ***", file=sys.stderr)
    bar, progress = _progress_bar("follow", "frame", enabled=not args.no_progress)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w") as out:
        summary = run_follow(
            reader, start, out, topic=topic, start_ns=int(round(args.start * 1e9)), tolerance_s=tolerance,
            masks_dir=Path(args.masks) if args.masks else None, progress=progress, depth=depth,
            model_name=engine.model.name if engine is not None else "none",
            weights_random=bool(engine.weights_random) if engine is not None else False,
        )
    if bar is not None:
        bar.close()
    summary["out"] = str(out_path)
    if args.summary:
        Path(args.summary).write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps(summary), file=sys.stderr)
    return 3 if "error" in summary else 0


def _progress_bar(desc: str, unit: str, enabled: bool) -> tuple[Any, Callable[[int, int], None]]:
    """A tqdm bar on stderr (None when not ``enabled``) and the ``progress(done, total)`` callback that moves it."""
    bar = None
    if enabled:
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit=unit, file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    return bar, progress
