"""Named wall-clock sections, reported in milliseconds with every result."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    """Accumulates time per named section (a section entered twice adds up)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - start) * 1000.0

    def total(self) -> float:
        return sum(self.ms.values())

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.ms.items()}
