"""The import paths before #23 ("one way through the house"), kept working for users and tests.

Each old name loads **the same module object** as its new home, so ``region_perception.regions is
region_perception.geometry.regions``: ``monkeypatch.setattr`` through an old name patches the real
module, and classes stay one class for ``isinstance`` and pickling. Package code imports the new
paths only (``tests/test_layers.py`` fails on an old one: it no longer names a file).

``region_perception.engine``, ``.bench`` and ``.cli`` need no row: they are packages of the same
name (``engine/__init__.py`` is the engine itself; ``bench/__init__.py`` re-exports its modules;
``cli/__init__.py`` has ``main``). ``depth3d`` was split in two and points at ``_compat.depth3d``,
which re-exports both halves.

Installed by ``region_perception/__init__.py``; imports nothing of the package until an old name
is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

_P = "region_perception"

#: old dotted name -> new dotted name (docs/architecture.md, "Old import paths")
ALIASES: dict[str, str] = {
    f"{_P}.{old}": f"{_P}.{new}"
    for old, new in {
        "timing": "common.timing",
        "status": "common.status",
        "ros_env": "common.ros_env",
        "feature_cache": "common.feature_cache",
        "regions": "geometry.regions",
        "region_text": "geometry.region_text",
        "proposals": "geometry.proposals",
        "depth3d": "_compat.depth3d",
        "synthetic_camera": "datasets.synthetic_camera",
        "engine_config": "engine.config",
        "results": "engine.results",
        "batching": "engine.batch",
        "scoring": "engine.scoring",
        "refer": "engine.refer",
        "conversation": "engine.conversation",
        "vocabulary": "engine.vocabulary",
        "query_processor": "service.query_processor",
        "frame_buffer": "service.frame_buffer",
        "overlay": "service.overlay",
        "config_file": "service.config_file",
        "image_decoding": "service.image_decoding",
        "bench_common": "bench.common",
        "bench_batching": "bench.batching",
    }.items()
}


class AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old name of :data:`ALIASES` and loads it as the new module itself."""

    def __init__(self) -> None:
        self._real_specs: dict[str, object] = {}

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in ALIASES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(ALIASES[spec.name])
        # the import system sets module.__spec__ = spec between create_module and exec_module
        self._real_specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._real_specs.pop(module.__spec__.name)  # the module's own name and file


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), ahead of any stale copy of an old file
    that an earlier install may have left in another directory of the package's ``__path__``."""
    if not any(isinstance(f, AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, AliasFinder())
