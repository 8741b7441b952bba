"""Fault injection for integration and chaos tests: a backend that fails (or waits) on purpose.

``fault_every: N`` (node parameter / engine config) wraps the loaded model so that every
Nth model call raises, as a driver fault or an out-of-memory would. It lets a robot's
integration tests check that their side handles MODEL_ERROR; leave it 0 in production.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

# the calls that do the work of one query (one of them per query for one region)
_WORK = (
    "caption_each", "describe", "describe_rows", "category", "category_many", "score_regions", "rows_loss",
    "comprehend", "refer_native",
)


class InjectedFault(RuntimeError):
    """Raised by :class:`FaultInjectingBackend` on purpose."""


class _WorkCallWrapper:
    """A backend whose work calls (``_WORK``) go through :meth:`_run`; everything else passes through."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._lock = threading.Lock()

    def _run(self, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        raise NotImplementedError

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._backend, name)
        if name not in _WORK or not callable(attr):
            return attr
        return lambda *args, **kwargs: self._run(attr, args, kwargs)


class FaultInjectingBackend(_WorkCallWrapper):
    def __init__(self, backend: Any, every: int, message: str = "injected fault") -> None:
        if every < 1:
            raise ValueError("fault_every must be at least 1")
        super().__init__(backend)
        self._every = every
        self._message = message
        self._calls = itertools.count(1)

    def _run(self, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with self._lock:
            n = next(self._calls)
        if n % self._every == 0:
            raise InjectedFault(f"{self._message} (model call {n}, every {self._every})")
        return call(*args, **kwargs)


class HoldingBackend(_WorkCallWrapper):
    """``hold_model_s: S`` (testing aid): every model work call waits S seconds first.

    It makes "a query is being answered" a state a test can create instead of a race it
    hopes to win (e.g. queries are surely pending when the node is told to stop). The hold
    ends early, for this call and every later one, when :meth:`release_holds` is called:
    the node's shutdown does so, so a held node never delays stopping. 0 in production.
    """

    def __init__(self, backend: Any, hold_s: float) -> None:
        if hold_s <= 0:
            raise ValueError("hold_model_s must be positive")
        super().__init__(backend)
        self._hold_s = hold_s
        self._released = threading.Event()
        self.holding = 0  # calls waiting right now (what a test can wait for)

    def release_holds(self) -> None:
        self._released.set()

    def _run(self, call: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        with self._lock:
            self.holding += 1
        try:
            self._released.wait(self._hold_s)
        finally:
            with self._lock:
                self.holding -= 1
        return call(*args, **kwargs)
