"""The folders are floors (docs/architecture.md): imports go only downward, never round in a
circle (imports inside functions included), only ``ros/`` imports rclpy, and only the command line
itself imports ``cli/``."""

from __future__ import annotations

import importlib
import textwrap
from pathlib import Path

import pytest

from region_perception.testing.layers import (
    LAYERS,
    cycles,
    external_imports,
    forbidden_externals,
    full_graph,
    module_graph,
    unplaced,
    unresolved,
    upward_imports,
)

PKG = Path(__file__).resolve().parents[1] / "region_perception"


def test_no_import_cycles_late_imports_included():
    assert cycles(full_graph(PKG)) == []


def test_every_module_has_a_floor():
    assert unplaced(full_graph(PKG), LAYERS) == []


def test_imports_only_go_down():
    assert upward_imports(full_graph(PKG), LAYERS) == []


def test_package_code_uses_the_new_paths():
    assert unresolved(PKG) == []


def test_rclpy_only_under_ros():
    assert forbidden_externals(external_imports(PKG), ("rclpy",), ("region_perception.ros",)) == []


def test_nothing_below_the_command_line_imports_it():
    graph = full_graph(PKG)
    into_cli = sorted((src, dst) for src, targets in graph.items() for dst in targets
                      if dst.startswith("region_perception.cli") and not src.startswith("region_perception.cli"))
    assert into_cli == []


# the modules that lay loose at the package root before the folders were floors: none may import again
OLD_NAMES = ("timing", "status", "ros_env", "feature_cache", "regions", "region_text", "proposals", "depth3d",
             "synthetic_camera", "engine_config", "results", "batching", "scoring", "refer", "conversation",
             "vocabulary", "query_processor", "frame_buffer", "overlay", "config_file", "image_decoding",
             "bench_common", "bench_batching", "_aliases", "_compat")


@pytest.mark.parametrize("old", OLD_NAMES)
def test_no_name_of_the_old_layout_imports(old):
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"region_perception.{old}")


# The checker itself, on a package written for the test.


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "region_perception"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture
def house(tmp_path):
    return _package(
        tmp_path,
        {
            "__init__.py": "",
            "common/__init__.py": "",
            "common/timing.py": "import time\n",
            "geometry/__init__.py": "",
            "geometry/regions.py": "from ..common.timing import time\n",
            "engine/__init__.py": "from ..geometry.regions import time\n",
            "engine/batch.py": "from . import results\n",
            "engine/results.py": "from ..geometry import regions\n",
            "ros/__init__.py": "import rclpy\nfrom ..engine import batch\nfrom region_perception.msg import Region\n",
        },
    )


def test_the_checker_passes_a_clean_house(house):
    graph = full_graph(house)
    assert cycles(graph) == [] and upward_imports(graph, LAYERS) == [] and unplaced(graph, LAYERS) == []
    assert unresolved(house) == []  # region_perception.msg is generated: not an old path
    assert forbidden_externals(external_imports(house), ("rclpy",), ("region_perception.ros",)) == []


def test_the_checker_finds_a_circle_behind_a_late_import(house):
    (house / "engine" / "results.py").write_text(
        "from ..geometry import regions\n\ndef late():\n    from .batch import x\n"
    )
    assert cycles(module_graph(house)) == []  # Python would not notice at import time
    assert cycles(full_graph(house)) == [["region_perception.engine.batch", "region_perception.engine.results"]]


def test_the_checker_finds_an_upward_import_an_old_path_and_rclpy(house):
    (house / "geometry" / "regions.py").write_text(
        "import rclpy\nfrom ..common.timing import time\n\ndef late():\n    from ..engine.batch import x\n"
        "    from ..timing import Timings\n"
    )
    graph = full_graph(house)
    up = ("region_perception.geometry.regions", "region_perception.engine.batch", 1, 4)
    assert upward_imports(graph, LAYERS) == [up]
    assert [(m, line) for m, line, _ in unresolved(house)] == [("region_perception.geometry.regions", 6)]
    assert forbidden_externals(external_imports(house), ("rclpy",), ("region_perception.ros",)) == [
        ("region_perception.geometry.regions", "rclpy")
    ]


def test_a_module_without_a_floor_is_reported(house):
    (house / "newfloor.py").write_text("")
    assert unplaced(full_graph(house), {k: v for k, v in LAYERS.items() if k != "region_perception"}) == [
        "region_perception",
        "region_perception.newfloor",
    ]
