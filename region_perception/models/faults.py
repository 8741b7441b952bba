"""Fault injection for integration and chaos tests: a backend that fails on purpose.

``fault_every: N`` (node parameter / engine config) wraps the loaded model so that every
Nth model call raises, as a driver fault or an out-of-memory would. It lets a robot's
integration tests check that their side handles MODEL_ERROR; leave it 0 in production.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

# the calls that do the work of one query (one of them per query for one region)
_WORK = ("caption_each", "describe", "category", "rows_loss", "refer_native")


class InjectedFault(RuntimeError):
    """Raised by :class:`FaultInjectingBackend` on purpose."""


class FaultInjectingBackend:
    def __init__(self, backend: Any, every: int, message: str = "injected fault") -> None:
        if every < 1:
            raise ValueError("fault_every must be at least 1")
        self._backend = backend
        self._every = every
        self._message = message
        self._calls = itertools.count(1)
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name not in _WORK or not callable(attr):
            return attr

        def call(*args, **kwargs):
            with self._lock:
                n = next(self._calls)
            if n % self._every == 0:
                raise InjectedFault(f"{self._message} (model call {n}, every {self._every})")
            return attr(*args, **kwargs)

        return call
