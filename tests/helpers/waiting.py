"""Waiting on a condition in tests: polled until it holds, never a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable

GENEROUS_S = 120.0  # loading a tiny model or starting a process on a busy 2-core machine


def wait_until(predicate: Callable[[], object], timeout: float = GENEROUS_S) -> bool:
    """Until ``predicate()`` holds (polled every 10 ms), at most ``timeout`` s; whether it did."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True
