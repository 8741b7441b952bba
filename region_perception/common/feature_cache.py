"""Per-frame features (vision-encoder output, SAM embedding, mask proposals), computed
once and reused by every query on that frame. Bounded LRU: old frames fall out."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def image_key(image: np.ndarray) -> str:
    """A content key for an image that arrived without a frame id (CLI, service image)."""
    digest = hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=12)
    digest.update(str(image.shape).encode())
    return "sha:" + digest.hexdigest()


class FeatureCache:
    """``(frame_key, kind) -> value``, at most ``max_frames`` frames kept (least recent out)."""

    def __init__(self, max_frames: int = 4) -> None:
        if max_frames < 1:
            raise ValueError("feature cache needs room for at least one frame")
        self.max_frames = max_frames
        self._frames: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, frame_key: str, kind: str) -> Any | None:
        with self._lock:
            entry = self._frames.get(frame_key)
            if entry is None or kind not in entry:
                self.misses += 1
                return None
            self._frames.move_to_end(frame_key)
            self.hits += 1
            return entry[kind]

    def put(self, frame_key: str, kind: str, value: Any) -> None:
        with self._lock:
            self._frames.setdefault(frame_key, {})[kind] = value
            self._frames.move_to_end(frame_key)
            while len(self._frames) > self.max_frames:
                self._frames.popitem(last=False)

    def get_or_compute(self, frame_key: str, kind: str, compute: Callable[[], T]) -> T:
        value = self.get(frame_key, kind)
        if value is None:
            value = compute()
            self.put(frame_key, kind, value)
        return value

    def forget(self, frame_key: str) -> None:
        """Drop one frame's entries (a synthetic frame, such as the warm-up's, must not keep a slot)."""
        with self._lock:
            self._frames.pop(frame_key, None)

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        return len(self._frames)
