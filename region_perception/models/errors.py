"""The one error a model that cannot be loaded raises, its reasons, and the loud notice.

The bottom of ``models/``: it imports nothing from the package, so every other module here
(``hub``, ``fetch``, ``sources``, the backends, ``loading``) can use it without a circle.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("region_perception")

REASONS = (
    "not_found_local",
    "not_found_hub",
    "no_network",
    "unreadable_checkpoint",
    "unknown_architecture",
    "unknown_name",
    "unknown_revision",
    "hub_error",
    "download_failed",
)
REASON_TEXT = {
    "not_found_local": "not found locally",
    "not_found_hub": "not found on the hub",
    "no_network": "no network",
    "unreadable_checkpoint": "unreadable checkpoint",
    "unknown_architecture": "unknown architecture",
    "unknown_name": "unknown name",
    "unknown_revision": "unknown revision",
    "hub_error": "hub error",
    "download_failed": "download failed",
}


class ModelLoadError(Exception):
    """A model (region model, segmenter or snapping model) that cannot be loaded, and why.

    ``reason`` is one of :data:`REASONS`; ``str()`` is one line: what was asked for, the
    reason, and what was tried.
    """

    def __init__(self, reason: str, what: str, name: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ModelLoadError reason {reason!r}")
        self.reason, self.what, self.name, self.detail = reason, what, name, one_line(detail)
        super().__init__(f"{what} {name!r}: {REASON_TEXT[reason]} ({reason}): {self.detail}")


def one_line(text: object, limit: int = 300) -> str:
    """The first non-empty line of an error, shortened: messages here are one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else type(text).__name__
    return first if len(first) <= limit else first[: limit - 3] + "..."


def loud_notice(message: str) -> None:
    """A notice nobody can miss: logged and written to stderr in a banner."""
    log.debug(message)
    bar = "!" * 78
    print(f"{bar}\n!! {message}\n{bar}", file=sys.stderr, flush=True)
