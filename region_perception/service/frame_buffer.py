"""A bounded ring of recent camera frames, keyed by stamp.

Frames are kept as received (the ROS message, or the node's camera frame still serialized:
an ``image_decoding.SerializedImage``) and decoded only when a query needs them: an idle
camera stream costs one append per frame. A frame's decoded image is cached on
the frame, so several queries on it decode it once.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Frame:
    stamp_ns: int
    frame_id: str
    raw: Any  # the message as received (or a SerializedImage: its fields, the pixels in the received bytes)
    decode: Callable[[Any], np.ndarray] = field(repr=False)
    _image: np.ndarray | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # the aligned depth frame matched to this colour frame (depth3d.DepthSource): it stays with the
    # frame for as long as a query holds it, however long the model takes
    depth: Any = field(default=None, repr=False)

    @property
    def key(self) -> str:
        """Feature-cache key: one per camera frame."""
        return f"{self.frame_id}@{self.stamp_ns}"

    def image(self) -> np.ndarray:
        """RGB uint8, decoded on first use (raises the decoder's error for a bad frame)."""
        with self._lock:
            if self._image is None:
                self._image = self.decode(self.raw)
            return self._image


class FrameLookupError(LookupError):
    def __init__(self, reason: str, no_frame: bool, not_yet: bool = False) -> None:
        super().__init__(reason)
        self.no_frame = no_frame  # True: nothing received yet
        self.not_yet = not_yet  # True: the stamp is newer than every buffered frame


class FrameBuffer:
    """The last ``capacity`` frames; lookup by nearest stamp within a tolerance."""

    def __init__(self, capacity: int = 30, tolerance_s: float = 0.05) -> None:
        if capacity < 1:
            raise ValueError("frame buffer needs room for at least one frame")
        self.capacity = capacity
        self.tolerance_ns = int(tolerance_s * 1e9)
        self._frames: deque[Frame] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.received = 0
        self.evicted = 0

    def add(self, frame: Frame) -> None:
        with self._lock:
            if len(self._frames) == self.capacity:
                self.evicted += 1
            self._frames.append(frame)
            self.received += 1

    def __len__(self) -> int:
        return len(self._frames)

    def latest(self) -> Frame | None:
        with self._lock:
            return self._frames[-1] if self._frames else None

    def nearest(self, stamp_ns: int) -> Frame | None:
        """The buffered frame nearest ``stamp_ns`` whatever the tolerance (None: buffer empty)."""
        with self._lock:
            frames = list(self._frames)
        return min(frames, key=lambda f: abs(f.stamp_ns - stamp_ns)) if frames else None

    def find(self, stamp_ns: int) -> Frame:
        """The frame for a query stamp: 0 = latest; else nearest within tolerance."""
        with self._lock:
            frames = list(self._frames)
        if not frames:
            raise FrameLookupError("no camera frame received yet", no_frame=True)
        if stamp_ns == 0:
            return frames[-1]
        best = min(frames, key=lambda f: abs(f.stamp_ns - stamp_ns))
        if abs(best.stamp_ns - stamp_ns) <= self.tolerance_ns:
            return best
        oldest, newest = frames[0].stamp_ns, frames[-1].stamp_ns
        where = "older than" if stamp_ns < oldest else "newer than" if stamp_ns > newest else "between"
        raise FrameLookupError(
            f"no buffered frame within {self.tolerance_ns / 1e6:.0f} ms of stamp {stamp_ns / 1e9:.3f} s: it is "
            f"{where} the buffered frames ({oldest / 1e9:.3f} .. {newest / 1e9:.3f} s, {len(frames)} frames); "
            "query sooner, send the image with the service, or raise frame_buffer_size",
            no_frame=False,
            not_yet=stamp_ns > newest,
        )
