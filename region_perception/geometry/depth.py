"""Where is it? A region's 3D position and extent from a depth image aligned to the colour image.

Plain numpy (no rclpy): the node, the CLI, ``run-log`` and the benchmark share it. The
buffering of depth frames and CameraInfo for the node and ``run-log`` is
:class:`region_perception.service.depth_source.DepthSource`, one floor up; this module is the
geometry it calls (pure functions of arrays).

Why robust statistics: a mask's border is where a model's mask and the depth image disagree,
and one pixel of far background behind an object's edge would drag a mean metres away. So
the position is the per-axis **median** of the back-projected depth pixels of the mask
*eroded* at its border, and the extent is a percentile box over the mask's pixels whose
depth lies near that median. Bad or missing depth never costs an answer: every failure is a
short reason that ends up in ``RegionResult.notes``, and the region has no position.

Frames: positions are in the depth camera's optical frame (x right, y down, z forward, metres),
which for depth aligned to colour is the colour camera's optical frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

SUPPORTED_ENCODINGS = ("16UC1", "mono16", "32FC1")


class DepthError(ValueError):
    """Why no position can be given (becomes a note on the result, never an error status)."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of an image of ``width`` x ``height`` pixels (0: size not given)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int = 0
    height: int = 0

    @classmethod
    def parse(cls, text: str, width: int = 0, height: int = 0) -> Intrinsics:
        """``"fx,fy,cx,cy"`` (pixels), as the CLI's ``--intrinsics`` takes it."""
        try:
            fx, fy, cx, cy = (float(v) for v in text.split(","))
        except ValueError:
            raise DepthError(f"intrinsics {text!r}: expected four numbers fx,fy,cx,cy") from None
        intr = cls(fx, fy, cx, cy, width, height)
        intr.check()
        return intr

    @classmethod
    def from_camera_info(cls, k: Any, width: int, height: int) -> Intrinsics:
        """From CameraInfo's row-major 3x3 ``k`` (fx = k[0], cx = k[2], fy = k[4], cy = k[5])."""
        k = [float(v) for v in k]
        if len(k) != 9:
            raise DepthError(f"CameraInfo K has {len(k)} values, expected 9")
        intr = cls(k[0], k[4], k[2], k[5], int(width), int(height))
        intr.check()
        return intr

    def check(self) -> None:
        values = (self.fx, self.fy, self.cx, self.cy)
        if not all(np.isfinite(values)) or self.fx <= 0 or self.fy <= 0:
            raise DepthError(f"intrinsics fx={self.fx:g} fy={self.fy:g}: focal lengths must be finite and > 0")

    def scaled(self, width: int, height: int) -> Intrinsics:
        """The same camera at another resolution (pixel centres at +0.5, as ROS's K assumes)."""
        if width == self.width and height == self.height:
            return self
        sx, sy = width / self.width, height / self.height
        return Intrinsics(
            self.fx * sx, self.fy * sy, (self.cx + 0.5) * sx - 0.5, (self.cy + 0.5) * sy - 0.5, width, height
        )


def intrinsics_for_depth(
    info: Intrinsics, depth_size: tuple[int, int], colour_size: tuple[int, int]
) -> Intrinsics:
    """The intrinsics of the depth image: CameraInfo's own, or scaled when it is the colour image's.

    An aligned depth image of another resolution than the colour image is scaled, not refused;
    only a size that neither the CameraInfo nor the colour image explains is.
    """
    (dh, dw), (ch, cw) = depth_size, colour_size
    if info.width == dw and info.height == dh:
        return info
    if not info.width and not info.height and (dh, dw) == (ch, cw):
        return Intrinsics(info.fx, info.fy, info.cx, info.cy, dw, dh)
    same_aspect = abs((dw / dh) / (cw / ch) - 1.0) < 0.02  # aligned to colour: the same field of view
    if info.width and info.height and (info.height, info.width) == (ch, cw) and same_aspect:
        return info.scaled(dw, dh)
    raise DepthError(
        f"depth image is {dw}x{dh}, colour image {cw}x{ch}, CameraInfo {info.width}x{info.height}: "
        "no intrinsics for the depth image's size"
    )


def depth_to_metres(
    encoding: str, height: int, width: int, step: int, data: bytes | bytearray | memoryview | np.ndarray,
    is_bigendian: bool = False, scale: float = 0.001,
) -> np.ndarray:
    """A depth image's bytes as float32 metres (H, W); zero and non-finite become NaN.

    ``16UC1`` (and ``mono16``) are integer units times ``scale`` (0.001: millimetres);
    ``32FC1`` is metres already (``scale`` does not apply). Raises DepthError for anything else.
    """
    if encoding in ("16UC1", "mono16"):
        dtype, bpp = np.dtype(">u2" if is_bigendian else "<u2"), 2
    elif encoding == "32FC1":
        dtype, bpp = np.dtype(">f4" if is_bigendian else "<f4"), 4
    else:
        raise DepthError(
            f"depth encoding {encoding!r} is not supported: expected 16UC1 (units x depth_scale) or 32FC1 (metres)"
        )
    height, width, step = int(height), int(width), int(step)
    if height <= 0 or width <= 0:
        raise DepthError(f"depth image is {width}x{height}: empty")
    if step < width * bpp:
        raise DepthError(f"depth image step {step} is less than width x {bpp} bytes ({width * bpp})")
    buf = np.frombuffer(data if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    if buf.size < step * height:
        raise DepthError(f"depth image data has {buf.size} bytes, expected step x height = {step * height}")
    rows = buf[: step * height].reshape(height, step)[:, : width * bpp]
    values = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
    metres = values.astype(np.float32) * np.float32(scale) if bpp == 2 else values.astype(np.float32)
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


def depth_msg_to_metres(msg: Any, scale: float = 0.001) -> np.ndarray:
    """A ``sensor_msgs/Image`` (any object with its fields) as float32 metres."""
    big = bool(msg.is_bigendian)
    return depth_to_metres(msg.encoding, msg.height, msg.width, msg.step, bytes(msg.data), big, scale)


def depth_array_to_metres(depth: np.ndarray, scale: float = 0.001) -> np.ndarray:
    """A depth array read from a file (uint16 units x ``scale``, or float metres) as float32 metres."""
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[2] == 1:
        depth = depth[:, :, 0]
    if depth.ndim != 2:
        raise DepthError(f"depth image has shape {depth.shape}: expected one channel")
    if depth.dtype.kind in "ui":
        metres = depth.astype(np.float32) * np.float32(scale)
    elif depth.dtype.kind == "f":
        metres = depth.astype(np.float32)
    else:
        raise DepthError(f"depth image has dtype {depth.dtype}: expected integers or floats")
    metres[~np.isfinite(metres) | (metres <= 0)] = np.nan
    return metres


@dataclass
class Location:
    """A region's 3D position and extent (metres), or why there is none."""

    position: tuple[float, float, float] | None = None
    size: tuple[float, float, float] | None = None
    valid_fraction: float = 0.0
    reason: str = ""  # why position is None

    @property
    def has_position(self) -> bool:
        return self.position is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "has_position": self.has_position,
            "position": list(self.position) if self.position else None,
            "size": list(self.size) if self.size else None,
            "depth_valid_fraction": round(self.valid_fraction, 4),
        }


@dataclass
class DepthSettings:
    """How depth is read and reduced (the node's depth_* parameters)."""

    scale: float = 0.001  # 16UC1 units to metres
    min_m: float = 0.1  # depth outside [min_m, max_m] is invalid
    max_m: float = 10.0
    erode_px: int = 3  # the mask is eroded this much (depth pixels) before the median
    max_stamp_diff_ms: float = 50.0  # a depth frame matches a colour frame within this
    wait_ms: float = 100.0  # a depth frame lagging its colour frame is waited for this long
    buffer_size: int = 30  # depth frames kept
    min_points: int = 5  # fewer valid pixels in the eroded mask: the whole mask is used
    max_points: int = 6000  # a larger region is read on an even grid of about this many pixels


def locate_mask(
    mask: np.ndarray, depth_m: np.ndarray, intrinsics: Intrinsics, settings: DepthSettings | None = None
) -> Location:
    """The 3D position and extent of ``mask`` (bool, any size: resampled to the depth image's).

    Position: per-axis median of the back-projected valid depth pixels of the mask eroded by
    ``erode_px`` (the whole mask when erosion leaves fewer than ``min_points``). Extent: the
    1st-99th percentile box of the mask's valid points within a band around the median depth
    (background leaking in at the border is not the object), plus one pixel's footprint.
    A mask larger than ``max_points`` pixels is read on an even grid (every k-th row and
    column), so the cost per region is bounded whatever its size.
    """
    import cv2

    s = settings or DepthSettings()
    dh, dw = depth_m.shape
    m = np.asarray(mask, dtype=bool)
    if m.shape != (dh, dw):
        m = cv2.resize(m.view(np.uint8), (dw, dh), interpolation=cv2.INTER_NEAREST).view(bool)
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return Location(reason="the region's mask is empty")
    cols = np.flatnonzero(m[rows[0] : rows[-1] + 1].any(axis=0))
    y0, x0 = int(rows[0]), int(cols[0])
    area = (rows[-1] + 1 - y0) * (cols[-1] + 1 - x0)
    k = max(1, int(np.ceil(np.sqrt(area / max(1, s.max_points)))))  # grid step: at most ~max_points pixels
    crop_m = m[y0 : rows[-1] + 1 : k, x0 : cols[-1] + 1 : k]
    crop_d = depth_m[y0 : rows[-1] + 1 : k, x0 : cols[-1] + 1 : k]
    finite = np.isfinite(crop_d)
    in_range = finite & (crop_d >= s.min_m) & (crop_d <= s.max_m)
    valid = crop_m & in_range
    n_mask, n_valid = int(np.count_nonzero(crop_m)), int(np.count_nonzero(valid))
    if n_valid == 0:
        if not (crop_m & finite).any():
            return Location(reason="no depth in the region (every pixel zero or NaN)")
        return Location(reason=f"the region's depth is outside [{s.min_m:g}, {s.max_m:g}] m")
    core = valid
    r = int(np.ceil(max(0, int(s.erode_px)) / k))
    if r > 0:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        eroded = cv2.erode(crop_m.view(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0)
        core_try = eroded.view(bool) & in_range
        if int(np.count_nonzero(core_try)) >= s.min_points:
            core = core_try
    i = intrinsics
    z_core = crop_d[core].astype(np.float64)
    z_med = float(np.median(z_core))
    # only pixels whose depth is near the object's count for x, y and the extent: a background
    # pixel left inside the border back-projects metres off sideways (x grows with z)
    mad = float(np.median(np.abs(z_core - z_med))) * 1.4826
    band = max(0.05, 0.03 * z_med, 3.0 * mad)
    ys, xs = np.nonzero(core & (np.abs(crop_d - z_med) <= band))
    z = crop_d[ys, xs].astype(np.float64)
    x = (xs * k + x0 - i.cx) * z / i.fx
    y = (ys * k + y0 - i.cy) * z / i.fy
    position = (float(np.median(x)), float(np.median(y)), z_med)
    # extent: every valid mask pixel whose depth is near the object's (not the background behind an edge)
    ys, xs = np.nonzero(valid & (np.abs(crop_d - z_med) <= band))
    z = crop_d[ys, xs].astype(np.float64)
    x = (xs * k + x0 - i.cx) * z / i.fx
    y = (ys * k + y0 - i.cy) * z / i.fy
    lo, hi = np.percentile(np.stack([x, y, z]), [1.0, 99.0], axis=1)
    size = (float(hi[0] - lo[0] + z_med / i.fx), float(hi[1] - lo[1] + z_med / i.fy), float(hi[2] - lo[2]))
    return Location(position=position, size=size, valid_fraction=n_valid / n_mask)


def locate_result(result: Any, depth_m: np.ndarray, intrinsics: Intrinsics, settings: DepthSettings) -> None:
    """Give every output of a TaskResult its Location, with a note for each region without one."""
    for k, out in enumerate(result.outputs):
        if out.mask is None:
            out.location = Location(reason="the region has no mask")
        else:
            out.location = locate_mask(out.mask, depth_m, intrinsics, settings)
        if not out.location.has_position:
            result.notes.append(f"no 3D position for {_region_name(k, out.name)}: {out.location.reason}")


def no_position(result: Any, reason: str) -> None:
    """Every output without a position, and one note saying why."""
    for out in result.outputs:
        out.location = Location(reason=reason)
    result.notes.append(f"no 3D position: {reason}")


def _region_name(k: int, name: str) -> str:
    return f"region {k} ({name!r})" if name else f"region {k}"


def synthetic_depth(
    size: tuple[int, int], objects: list[tuple[np.ndarray, float]], background_m: float
) -> np.ndarray:
    """Depth (metres) of fronto-parallel objects, each a mask at its own depth, over a background plane.

    Objects are painted in order, so a later one covers an earlier one where they overlap.
    """
    depth = np.full(size, background_m, dtype=np.float32)
    for mask, z in objects:
        depth[np.asarray(mask, dtype=bool)] = z
    return depth


def metres_to_16uc1(metres: np.ndarray, scale: float = 0.001) -> np.ndarray:
    """Float metres as uint16 units of ``scale`` (NaN and out-of-range become 0: no depth)."""
    units = np.nan_to_num(np.asarray(metres, dtype=np.float64) / scale, nan=0.0)
    units[(units < 0) | (units > 65535)] = 0
    return np.round(units).astype(np.uint16)


def synthetic_intrinsics(width: int, height: int, hfov_deg: float = 60.0) -> Intrinsics:
    """A centred pinhole camera of ``hfov_deg`` horizontal field of view, square pixels."""
    f = (width / 2.0) / np.tan(np.radians(hfov_deg) / 2.0)
    return Intrinsics(float(f), float(f), (width - 1) / 2.0, (height - 1) / 2.0, width, height)
