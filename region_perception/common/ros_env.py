"""The ROS environment of every process this project starts itself (tests, demo, bench).

This workplace allows traffic only on loopback, and parallel runs must not hear each
other: DDS discovery stays on localhost and each run gets its own domain id. The node
itself does not call this; a robot's deployment chooses its own discovery settings.
"""

from __future__ import annotations

import os
import random
from collections.abc import MutableMapping

DISCOVERY_RANGE = "LOCALHOST"
# Domain ids 0..101 are valid with the default port mapping on every RMW; 0 is the
# default a stray process would use, so runs draw from 1..101.
_DOMAIN_IDS = range(1, 102)


def pick_domain_id(rng: random.Random | None = None) -> int:
    """A domain id for one run, unlikely to be shared with a concurrent run."""
    return (rng or random.SystemRandom()).choice(_DOMAIN_IDS)


def apply_local_ros_env(env: MutableMapping[str, str] | None = None) -> MutableMapping[str, str]:
    """Force loopback-only discovery; keep a domain id already chosen for this run.

    Must run before ``rclpy.init``: the middleware reads these at context creation.
    """
    env = os.environ if env is None else env
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = DISCOVERY_RANGE
    env.pop("ROS_STATIC_PEERS", None)
    if not env.get("ROS_DOMAIN_ID", "").strip().isdigit():
        env["ROS_DOMAIN_ID"] = str(pick_domain_id())
    return env
