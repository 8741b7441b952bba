"""The repository stays ruff-clean and the model core stays free of rclpy."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO

ROS_ONLY = {"ros"}  # subpackages allowed to import rclpy


def test_ruff_clean():
    run = subprocess.run([sys.executable, "-m", "ruff", "check", str(REPO)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_core_imports_without_rclpy():
    code = (
        "import sys, importlib, pkgutil; sys.modules['rclpy'] = None\n"
        "import region_perception as rp\n"
        "for m in pkgutil.iter_modules(rp.__path__):\n"
        f"    if m.name in {sorted(ROS_ONLY)!r} or m.name in ('msg', 'srv'): continue\n"
        "    importlib.import_module('region_perception.' + m.name)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
