"""Depth frames and CameraInfo for the node and ``run-log``: buffered by stamp, decoded on demand.

The ROS node only feeds depth frames and CameraInfo into a :class:`DepthSource`; the query
processor's worker calls :meth:`DepthSource.locate` after the model has answered, when the
result's masks exist. The geometry (back-projection, robust statistics) is
:mod:`region_perception.geometry.depth`.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry.depth import (
    DepthError,
    DepthSettings,
    Intrinsics,
    depth_msg_to_metres,
    intrinsics_for_depth,
    locate_result,
    no_position,
)
from .frame_buffer import Frame, FrameBuffer


@dataclass
class _CameraInfo:
    intrinsics: Intrinsics | None
    frame_id: str
    error: str = ""


@dataclass
class DepthSource:
    """Depth frames buffered by stamp and the latest CameraInfo; locates results on the worker.

    ``add_depth`` and ``set_camera_info`` are cheap (called from ROS callbacks): frames are
    decoded only when a query needs one. ``locate`` waits up to ``wait_ms`` for a depth frame
    that lags its colour frame, so a depth image published just after its colour image counts.
    """

    settings: DepthSettings = field(default_factory=DepthSettings)
    depth_topic: str = "depth"
    camera_info_topic: str = "camera_info"

    def __post_init__(self) -> None:
        self.frames = FrameBuffer(max(1, int(self.settings.buffer_size)), self.settings.max_stamp_diff_ms / 1000.0)
        self._arrived = threading.Condition()
        self._info: _CameraInfo | None = None
        self._colour: deque[Frame] = deque(maxlen=max(1, int(self.settings.buffer_size)))  # to match depth to

    def colour_arrived(self, frame: Frame) -> None:
        """Match a new colour frame with its depth frame, now or when that arrives (``frame.depth``).

        The match travels with the colour frame, so a query whose model call outlasts the depth
        buffer still finds its depth frame at the 3D step.
        """
        with self._arrived:
            nearest = self.frames.nearest(frame.stamp_ns)
            if nearest is not None and self._matches(nearest, frame):
                frame.depth = nearest
            self._colour.append(frame)

    def _matches(self, depth: Frame, colour: Frame) -> bool:
        """``depth`` is within the tolerance of ``colour`` and nearer than its current match."""
        diff = abs(depth.stamp_ns - colour.stamp_ns)
        if diff > self.settings.max_stamp_diff_ms * 1e6:
            return False
        return colour.depth is None or diff < abs(colour.depth.stamp_ns - colour.stamp_ns)

    def add_depth(self, stamp_ns: int, frame_id: str, raw: Any, decode: Any = None) -> None:
        """A depth frame as received; ``decode(raw)`` gives metres (default: a sensor_msgs/Image)."""
        scale = self.settings.scale
        decoder = decode or (lambda m: depth_msg_to_metres(m, scale))
        depth = Frame(int(stamp_ns), frame_id, raw, decoder)
        with self._arrived:
            self.frames.add(depth)
            for colour in self._colour:  # recent colour frames waiting for (a nearer) depth
                if self._matches(depth, colour):
                    colour.depth = depth
            self._arrived.notify_all()

    def add_depth_array(self, stamp_ns: int, frame_id: str, metres: np.ndarray) -> None:
        """An already decoded depth frame (float32 metres)."""
        self.add_depth(stamp_ns, frame_id, metres, lambda a: a)

    def set_camera_info(self, k: Any, width: int, height: int, frame_id: str = "") -> None:
        try:
            self._info = _CameraInfo(Intrinsics.from_camera_info(k, width, height), frame_id)
        except DepthError as exc:
            self._info = _CameraInfo(None, frame_id, f"CameraInfo on {self.camera_info_topic!r} is unusable: {exc}")

    @property
    def has_camera_info(self) -> bool:
        return self._info is not None

    def set_intrinsics(self, intrinsics: Intrinsics, frame_id: str = "") -> None:
        self._info = _CameraInfo(intrinsics, frame_id)

    def depth_for(self, stamp_ns: int, matched: Frame | None = None) -> Frame:
        """The depth frame nearest the colour stamp within the tolerance (waits for a lagging one);
        ``matched``: the one matched to the colour frame on arrival (see colour_arrived), if any."""
        if stamp_ns <= 0:
            raise DepthError("the image has no stamp (sent with the query): no depth frame can be matched to it")
        tol_ns = self.settings.max_stamp_diff_ms * 1e6
        deadline = time.monotonic() + max(0.0, self.settings.wait_ms) / 1000.0
        with self._arrived:
            while True:
                found = [f for f in (self.frames.nearest(stamp_ns), matched) if f is not None]
                nearest = min(found, key=lambda f: abs(f.stamp_ns - stamp_ns)) if found else None
                newest = self.frames.latest()
                if nearest is not None and abs(nearest.stamp_ns - stamp_ns) <= tol_ns:
                    return nearest
                remaining = deadline - time.monotonic()
                # the depth frame may still be on its way: wait, unless the depth stream has
                # stalled (its newest frame over a second older), which must not slow every answer
                lagging = newest is not None and 0 < stamp_ns - newest.stamp_ns <= 1_000_000_000
                if lagging and remaining > 0:
                    self._arrived.wait(remaining)
                    continue
                break
        if nearest is None:
            raise DepthError(f"no depth frame received yet on {self.depth_topic!r}")
        diff_ms = (nearest.stamp_ns - stamp_ns) / 1e6
        when = "older" if diff_ms < 0 else "newer"
        raise DepthError(
            f"the nearest depth frame is {abs(diff_ms):.0f} ms {when} than the colour frame "
            f"(depth_max_stamp_diff_ms {self.settings.max_stamp_diff_ms:g})"
        )

    def locate(self, result: Any, colour_stamp_ns: int, colour_frame_id: str = "", matched: Frame | None = None) -> str:
        """Give each output of ``result`` a Location (or a note why not); the positions' frame id.

        ``matched``: the colour frame's depth match (``Frame.depth``). Never raises for bad
        depth: the answer stands, without positions.
        """
        started = time.perf_counter()
        frame_id = ""
        try:
            depth = self.depth_for(colour_stamp_ns, matched)
            try:
                metres = depth.image()
            except DepthError as exc:
                raise DepthError(f"depth frame on {self.depth_topic!r}: {exc}") from None
            info = self._info
            if info is None:
                raise DepthError(f"no CameraInfo received yet on {self.camera_info_topic!r}")
            if info.intrinsics is None:
                raise DepthError(info.error)
            intr = intrinsics_for_depth(info.intrinsics, metres.shape, tuple(result.image_size))
            locate_result(result, metres, intr, self.settings)
            frame_id = depth.frame_id or info.frame_id or colour_frame_id
            if colour_frame_id and frame_id != colour_frame_id:
                result.notes.append(
                    f"positions are in the depth frame {frame_id!r}, not the colour image's {colour_frame_id!r}"
                )
        except DepthError as exc:
            no_position(result, str(exc))
        result.timings_ms["depth_3d"] = (time.perf_counter() - started) * 1000.0
        return frame_id
