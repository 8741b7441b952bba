"""Shared fixtures. Every ROS process a test starts runs on loopback, in this run's domain."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from region_perception.common.ros_env import apply_local_ros_env

REPO = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"

# Before anything can import rclpy: loopback-only discovery and a per-run domain id,
# inherited by every subprocess the tests start.
apply_local_ros_env()
# Tiny random-weight models are built once into the (git-ignored) build folder and reused.
os.environ.setdefault("REGION_PERCEPTION_CACHE", str(REPO / "build" / "models"))
# No model hub here: released models must fall back to the tiny ones without trying the network.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture()
def child_env() -> dict[str, str]:
    """Environment for a subprocess: this run's ROS settings, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture()
def python() -> str:
    return sys.executable


@pytest.fixture(scope="session")
def astronaut():
    """A real photograph (scikit-image's bundled astronaut), RGB uint8 512x512."""
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def tiny_engine():
    """The engine on the tiny random-weight models, loaded through from_pretrained."""
    from region_perception.engine import EngineConfig, RegionEngine

    return RegionEngine.load(EngineConfig(model="tiny-regionvlm", segmenter="tiny-sam", device="cpu"))
