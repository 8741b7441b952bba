"""``region-perception models`` (the registry, ``--download`` for offline robots) and ``convert-regionvlm``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .common import DEFAULT_CONFIG_FILE, CliError


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
    from ..models.prefetch import _model, check_target, download
    from ..service.config_file import load_parameters

    target = Path(args.to) if args.to else None
    if target is not None:
        check_target(target)
    if args.download:
        download([_model("model", name, args.revision or "") for name in args.download], target)
    else:
        if args.revision:
            raise CliError("--revision needs a NAME (the configuration's revisions are model_revision & co.)")
        download_configuration(load_parameters(args.config or DEFAULT_CONFIG_FILE), target)
    where = f"HF_HUB_CACHE={target.absolute()} " if target is not None else ""
    print(f"ready to run offline: {where}HF_HUB_OFFLINE=1", flush=True)
    return 0


def download_configuration(params: dict, target: Path | None) -> None:
    """Fetch what an engine on these node parameters loads, decided as the engine decides: the file's values over
    the package defaults for the model (and its fallback); then the model's own settings between the file and
    the defaults for the segmenter and the snapping model (a key the file leaves unset, such as ``segmenter`` in
    config/default.yaml, is the package default's: ``facebook/sam-vit-base``, unless the model brings its own)."""
    import dataclasses

    from ..engine.settings import UserSettings, flatten, model_own_settings
    from ..models.prefetch import download, models_wanted, own_settings_directory, parts_wanted
    from ..models.sources import read_meta
    from ..service.config_file import engine_values

    user = UserSettings(config=engine_values(params))
    models = models_wanted(flatten(dataclasses.asdict(user.loading_config())))
    fetched = download(models, target)
    directory = own_settings_directory(models[0], fetched[0])
    own = model_own_settings(read_meta(directory), directory) if directory is not None else {}
    config, _ = user.resolve(own)
    download(parts_wanted(flatten(dataclasses.asdict(config))), target)


def cmd_convert(args: argparse.Namespace) -> int:
    from ..models.convert_regionvlm import convert

    report = convert(args.checkpoint, args.out_dir, base=args.base, allow_pickle=args.allow_pickle)
    print(json.dumps(report, indent=1))
    return 0


def add_parsers(sub) -> None:
    """Register ``models`` and ``convert-regionvlm``."""
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
