"""Command lines of the package's ROS programs, for the demo, benchmarks and tests."""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_PARAMS = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


def _value(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def node_command(params_file: str | Path = DEFAULT_PARAMS, **parameters: object) -> list[str]:
    """``region-perception-node --ros-args --params-file FILE -p name:=value ...``."""
    cmd = [sys.executable, "-m", "region_perception.ros.node", "--ros-args", "--params-file", str(params_file)]
    for name, value in parameters.items():
        cmd += ["-p", f"{name}:={_value(value)}"]
    return cmd


def camera_command(*args: str) -> list[str]:
    """``region-perception-camera ARGS``."""
    return [sys.executable, "-m", "region_perception.ros.camera", *args]
