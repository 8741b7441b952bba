"""The ROS users' route: `cd ros2_ws && colcon build`, then the interfaces import."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_colcon_build_in_ros2_ws(tmp_path: Path, child_env: dict[str, str]):
    venv = Path(sys.prefix)
    colcon = venv / "bin" / "colcon"
    if not colcon.exists():
        pytest.skip("colcon is not installed in this environment")
    assert (REPO / "ros2_ws" / "src" / "region_perception" / "package.xml").exists()
    env = dict(child_env, AMENT_PREFIX_PATH=str(venv), CMAKE_PREFIX_PATH=str(venv))
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env['PATH']}"
    build = subprocess.run(
        [
            str(colcon),
            "--log-base",
            str(tmp_path / "log"),
            "build",
            "--build-base",
            str(tmp_path / "build"),
            "--install-base",
            str(tmp_path / "install"),
            "--cmake-args",
            f"-DPython3_EXECUTABLE={sys.executable}",
            "-DBUILD_TESTING=OFF",
        ],
        cwd=REPO / "ros2_ws",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    install = tmp_path / "install"
    check = (
        "import region_perception, region_perception.cli;"
        "from region_perception.msg import RegionQuery, RegionResult, Region;"
        "from region_perception.srv import QueryRegions;"
        "print(region_perception.__file__);"
        "print(RegionQuery.REFER, len(QueryRegions.Request().query.regions))"
    )
    run = subprocess.run(
        ["bash", "-c", f". {install}/setup.bash && cd / && {sys.executable} -c '{check}'"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    first, second = run.stdout.split()[:2], run.stdout.split()[1:]
    assert first[0].startswith(str(install)), "the package must come from the colcon install space"
    assert second == ["2", "0"]
    # launch files, config and `ros2 run` launchers are installed where ROS tools look
    share = install / "region_perception" / "share" / "region_perception"
    assert (share / "package.xml").exists()
    assert (share / "config").is_dir()
    shutil.rmtree(tmp_path / "build", ignore_errors=True)
