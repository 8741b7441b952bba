"""The offline demo's synthetic branch with depth: each answer's 3D position beside the truth.

A random-weight model stands in for the (untrained) toy: the words are noise, but where a
region is does not depend on them: the position comes from the region's mask and the
synthetic camera's exact depth.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


def test_demo_prints_positions_beside_the_ground_truth(child_env, tmp_path):
    env = dict(child_env, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "region_perception.ros.demo", "--offline", "--model", "tiny-regionvlm",
         "--scenes", "1", "--out", str(tmp_path / "out")],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=500,
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip().startswith("3D:")]
    assert len(lines) >= 3, log[-4000:]
    assert all("| truth (" in line for line in lines), lines
    # a clicked point's disk lies on the object: its position is the object's (exact depth)
    point = next(i for i, line in enumerate(proc.stdout.splitlines()) if "caption of point" in line)
    first = next(line for line in proc.stdout.splitlines()[point:] if line.strip().startswith("3D:"))
    err_cm = float(re.search(r"error ([\d.]+) cm", first).group(1))
    assert err_cm <= 2.0, first
    assert re.search(r"\[demo\] 3D: \d+/\d+ answers have a position", proc.stdout), log[-4000:]
