"""What the ``region-perception`` sub-commands share: bad-input errors, regions and images from
arguments, the engine options and the engine, printing.

Importing this module pulls in no sub-command, no engine and no ROS. Typed regions ("x,y;x,y")
are parsed one floor down (``geometry/region_parsing.py``), where the ROS query tool reads them too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..geometry.region_parsing import box_from_text, parse_points
from ..geometry.regions import BoxRegion, MaskRegion, PointsRegion, Region, ScribbleRegion

EXIT_BAD_INPUT = 2
DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


class CliError(ValueError):
    """Bad command-line input: printed as one line, exit status 2."""


def read_image(path: str) -> np.ndarray:
    import cv2

    if not Path(path).is_file():
        raise CliError(f"image {path!r}: no such file")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise CliError(f"image {path!r}: not an image OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def regions_from_args(args: argparse.Namespace, size: tuple[int, int]) -> list[Region]:
    """Every region option, in the order given on the command line."""
    import cv2

    height, width = size
    scale = np.array([width, height], dtype=np.float64) if args.normalized else np.ones(2)
    regions: list[Region] = []
    for text in args.points or []:
        regions.append(PointsRegion(parse_points(text) * scale))
    for text in args.scribble or []:
        regions.append(ScribbleRegion(parse_points(text, "--scribble") * scale))
    for text in args.box or []:
        regions.append(BoxRegion(np.array(box_from_text(text)) * np.tile(scale, 2)))
    for path in args.mask or []:
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise CliError(f"--mask {path!r}: not an image OpenCV can read")
        regions.append(MaskRegion(mask > 0))
    return regions


# the engine options every model-running command offers: --flag -> EngineConfig field
ENGINE_OPTIONS = ("model", "fallback_model", "model_revision", "segmenter", "segmenter_backend", "segmenter_revision",
                  "proposals", "refer_route", "device", "dtype", "seed")


def add_engine_arguments(p: argparse.ArgumentParser) -> None:
    """The engine options, each unset by default: an option left out takes the ``--config`` file's value, else
    the model's own (its region_perception.json), else the package default (engine/config.py)."""
    g = p.add_argument_group("engine (unset: --config's, else the model's own, else the package default)")
    g.add_argument("--config", help="node parameters YAML (config/default.yaml) to read engine settings from")
    g.add_argument("--model", help="registry name, Hugging Face id or directory (default: Florence-2-base)")
    g.add_argument("--fallback-model", dest="fallback_model",
                   help="model to use (loudly) if --model cannot be loaded; without it a model you name must load")
    g.add_argument("--revision", dest="model_revision", help="hub models: branch, tag or commit (default main)")
    g.add_argument("--segmenter", help="SAM: toy-sam, a trained SAM directory, vit_b:/path.pth, an HF id "
                   "(default facebook/sam-vit-base), or none")
    g.add_argument("--segmenter-backend", dest="segmenter_backend", choices=["auto", "sam", "hf-sam"],
                   help="auto (default: hf-sam for a transformers SAM, else sam), sam (segment-anything) or "
                   "hf-sam (transformers SamModel)")
    g.add_argument("--segmenter-revision", dest="segmenter_revision", help="hub segmenters: branch, tag or commit")
    g.add_argument("--proposals", choices=["sam", "superpixels"], help="REFER proposal source")
    g.add_argument("--refer-route", dest="refer_route", choices=["proposals", "native"],
                   help="REFER: score mask proposals (RegionVLM's method) or the model's own (Florence-2)")
    g.add_argument("--device", help="auto | cpu | cuda")
    g.add_argument("--dtype", help="auto | float32 | float16 | bfloat16")
    g.add_argument("--seed", type=int)


def user_settings_from_args(args: argparse.Namespace):
    """What the command line and ``--config`` set (nothing else: the rest is the model's own or the default)."""
    from ..engine.settings import UserSettings
    from ..service.config_file import engine_values, load_parameters

    config: dict[str, Any] = {}
    if getattr(args, "config", None):
        if not Path(args.config).is_file():
            raise CliError(f"--config {args.config!r}: no such file")
        config = engine_values(load_parameters(args.config))
    options = (*ENGINE_OPTIONS, "max_new_tokens", "default_vocabulary")
    return UserSettings(command_line={k: getattr(args, k) for k in options if getattr(args, k, None) is not None},
                        config=config)


def engine_from_args(args: argparse.Namespace):
    """A loaded engine with the settings resolved: command line > ``--config`` > the model's own > defaults."""
    from ..engine import RegionEngine

    return RegionEngine.load(user_settings_from_args(args))


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """One task result (``TaskResult.to_json()``), as JSON or as lines for a person."""
    if as_json:
        print(json.dumps(result, indent=1))
        return
    if result.get("weights_random"):
        print("*** RANDOM WEIGHTS: the text below exercises the code path; it is not a prediction ***")
    for note in result.get("notes", []):
        print(f"note: {note}")
    for i, out in enumerate(result.get("outputs", [])):
        name = out.get("name") or f"region {i}"
        if result["task"] == "classify":
            ranked = list(zip(out["labels"], out["label_scores"], strict=True))[:5]
            top = ", ".join(f"{lbl} {s:.3f}" for lbl, s in ranked)
            print(f"{name}: {out['label']}   ({top})")
        elif result["task"] == "refer":
            print(f"selected proposal {result['selected_index']} box {out['box']} score {out['score']:.4f}")
        else:
            print(f"{name}: {out['text']}")
        if out.get("position"):  # --depth: where it is (camera optical frame, metres)
            x, y, z = out["position"]
            sx, sy, sz = out["size"]
            print(f"    at x {x:+.3f} y {y:+.3f} z {z:.3f} m, size {sx:.3f} x {sy:.3f} x {sz:.3f} m, "
                  f"depth valid {out['depth_valid_fraction']:.0%}")
    if result["task"] == "refer":
        print("candidate scores (lower is better):", result["candidate_scores"])
    print("timings (ms):", result["timings_ms"])


def print_summary(summary: dict[str, Any], as_json: bool) -> None:
    """A run's summary (``eval``, ``train``): one JSON object, or one ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key}: {json.dumps(value) if isinstance(value, (dict, list)) else value}")


def read_depth(args: argparse.Namespace):
    """``--depth`` as float32 metres with ``--intrinsics`` (of the depth image), or None without it."""
    if not args.depth:
        if args.intrinsics:
            raise CliError("--intrinsics needs --depth")
        return None
    from ..geometry.depth import DepthError, Intrinsics, depth_array_to_metres

    if not args.intrinsics:
        raise CliError("--depth needs --intrinsics fx,fy,cx,cy (pixels of the depth image)")
    if not Path(args.depth).is_file():
        raise CliError(f"{args.depth}: no such file (the depth image)")
    if args.depth.endswith(".npy"):
        try:
            raw = np.load(args.depth, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CliError(f"{args.depth}: not a readable .npy depth array ({exc})") from None
    else:
        import cv2

        raw = cv2.imread(args.depth, cv2.IMREAD_UNCHANGED)  # 16-bit PNG stays uint16 (units x --depth-scale)
        if raw is None:
            raise CliError(f"{args.depth}: not a depth image OpenCV can read (16-bit PNG, float TIFF) or .npy")
    try:
        metres = depth_array_to_metres(raw, args.depth_scale)
        intrinsics = Intrinsics.parse(args.intrinsics, metres.shape[1], metres.shape[0])
    except DepthError as exc:
        raise CliError(f"{args.depth}: {exc}") from None
    return metres, intrinsics
