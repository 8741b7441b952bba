"""``region-perception``: the parser of every sub-command (one module per command group) and ``main``.

The groups: :mod:`.tasks` (describe, ask, refer, classify, snap), :mod:`.models` (models,
convert-regionvlm), :mod:`.bench` (bench, cost), :mod:`.eval`, :mod:`.train`, :mod:`.dataset`,
:mod:`.run_log`. Bad input exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..geometry.region_parsing import RegionParseError
from ..geometry.regions import RegionError
from . import bench, dataset, models, run_log, tasks, train
from . import eval as eval_command
from .common import EXIT_BAD_INPUT, CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="region-perception", description="ask about regions of an image")
    sub = parser.add_subparsers(dest="command", required=True)
    tasks.add_parsers(sub)
    models.add_parsers(sub)
    bench.add_parsers(sub)
    run_log.add_parser(sub)  # run-log: scripted queries over a recorded log
    dataset.add_parser(sub)  # dataset synthetic / info
    eval_command.add_parser(sub)  # eval refer / comprehension / classify / caption
    train.add_parser(sub)  # train: fine-tune a backend's region pathway (docs/training.md)
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
    except (CliError, RegionError, RegionParseError, ImageError, TaskError, UnsafeCheckpointError,
            FileNotFoundError) as exc:
        print(f"region-perception: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, ValueError) as exc:
        print(f"region-perception: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
