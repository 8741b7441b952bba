"""``region-perception run-log LOG --queries queries.yaml --out results.jsonl``.

Regression testing on robot data: the engine answers a scripted list of queries over a
log's frames (no ROS graph), one JSON line per result, then a summary on stderr (and in
``--summary`` as JSON when asked).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..logs import LogError

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run-log", help="answer scripted queries over a recorded log's frames (no ROS graph)")
    p.add_argument("log", help="MCAP file or ROS 2 bag directory")
    p.add_argument("--queries", required=True, help="queries.yaml (see region_perception/logs/script.py)")
    p.add_argument("--out", required=True, help="results, one JSON line per query answer")
    p.add_argument("--topic", help="image topic in the log (default: its image topic with most frames)")
    p.add_argument("--config", help=f"node parameters YAML (default: {DEFAULT_CONFIG.name} if present)")
    p.add_argument("--model", help="registry name, Hugging Face id or directory (default: the config's)")
    p.add_argument("--device", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--tolerance", type=float, help="stamp match tolerance in s (default: the config's)")
    p.add_argument("--masks", help="write each result's masks as PNGs into this folder")
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
    for target in (out_path, Path(args.summary) if args.summary else None):
        if target is not None and target.exists() and not args.force:
            raise LogError(f"{target}: already exists (use --force to overwrite)")
    queries = load_script(args.queries)  # bad input fails before the model loads
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

    engine = RegionEngine.load(UserSettings(command_line=given, config=values))
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
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(desc="run-log", unit="query", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.update(done - bar.n)

    depth = None
    if depth_topic:
        from ..geometry.depth import DepthSettings
        from ..logs.run_log import DepthFeed

        settings = DepthSettings(
            scale=float(params.get("depth_scale", 0.001)),
            min_m=float(params.get("depth_min_m", 0.1)),
            max_m=float(params.get("depth_max_m", 10.0)),
            erode_px=int(params.get("depth_erode_px", 3)),
            max_stamp_diff_ms=float(params.get("depth_max_stamp_diff_ms", 50.0)),
        )
        depth = DepthFeed(reader, depth_topic, info_topic, settings)
        print(f"run-log: 3D positions from {depth_topic} and {info_topic or 'no CameraInfo'}", file=sys.stderr)
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
