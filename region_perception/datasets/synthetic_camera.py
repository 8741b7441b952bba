"""A camera whose every frame has a known answer: the synthetic shapes world as a stream.

Why: a demo or test of a trained toy model must print each answer beside the truth. Frame
``index`` of stream ``seed`` is the scene ``render_scene(default_rng([seed, index]), size)``,
the same scene ``datasets.synthetic.generate(seed=seed)`` writes as image ``index``, so the
ground truth can be recomputed by anyone from (seed, index, size) and is also published
beside each frame as JSON (see :func:`ground_truth`). Plain Python: the ROS camera only
publishes what this module returns.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from .synthetic import SHAPES, SceneObject, caption, expressions, render_scene
from .types import mask_to_rle

DEFAULT_SEED = 1  # held-out scenes by default: `make train-toy` draws its training scenes from seed 0
DEFAULT_SIZE = 128  # the toy models' input size
SHAPE_LABELS: tuple[str, ...] = SHAPES  # the CLASSIFY vocabulary of the synthetic world


def synthetic_frame(seed: int, index: int, size: int = DEFAULT_SIZE) -> tuple[np.ndarray, list[SceneObject]]:
    """Frame ``index`` of the stream ``seed``: an RGB uint8 image and its objects (deterministic)."""
    if index < 0:
        raise ValueError(f"frame index must be >= 0, got {index}")
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    return render_scene(np.random.default_rng([seed, index]), size)


def inside_point(mask: np.ndarray) -> tuple[int, int]:
    """The visible pixel farthest from the mask's edge (x, y): a click surely on the object,
    even on a partly covered one or a star, whose centre may lie outside what is seen."""
    import cv2

    dist = cv2.distanceTransform(np.pad(mask.astype(np.uint8), 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    # a ridge of equally deep pixels (a long strip) has many maxima: take the one nearest their middle
    deepest = np.argwhere(dist >= dist.max() - 1e-6)
    y, x = deepest[int(np.argmin(((deepest - deepest.mean(axis=0)) ** 2).sum(axis=1)))]
    return int(x), int(y)


def object_truth(k: int, objects: list[SceneObject], size: int) -> dict[str, Any]:
    """What a client needs to ask about object ``k`` and to judge the answer (JSON-ready).

    ``box`` is x_min, y_min, x_max, y_max in pixels (as RegionQuery boxes are); ``point`` a
    pixel inside the visible object; ``expressions`` sentences that denote exactly it.
    """
    obj = objects[k]
    x, y, w, h = obj.bbox
    return {
        "color": obj.color,
        "shape": obj.shape,
        "size": obj.size,
        "caption": caption(obj),
        "box": [x, y, x + w, y + h],
        "point": list(inside_point(obj.mask)),
        "center": list(obj.center),
        "radius": obj.radius,
        "area": int(obj.mask.sum()),
        "mask": mask_to_rle(obj.mask),
        "expressions": expressions(k, objects, size),
    }


def ground_truth(seed: int, index: int, size: int = DEFAULT_SIZE, objects: list[SceneObject] | None = None) -> dict:
    """The ground truth of one frame: its stream position, the camera, and each object (see
    object_truth; ``depth_m``, ``position_m`` and ``size_m`` are its 3D truth, see synthetic_depth_frame)."""
    if objects is None:
        _, objects = synthetic_frame(seed, index, size)
    k = camera_intrinsics(size)
    depths = object_depths(len(objects))
    return {
        "seed": seed,
        "index": index,
        "size": size,
        "camera": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": size, "height": size,
                   "background_m": BACKGROUND_M},
        "objects": [
            {**object_truth(i, objects, size), **object_truth_3d(objects[i].mask, depths[i], k)}
            for i in range(len(objects))
        ],
    }


# --- depth: each object a flat shape facing the camera at its own distance, a wall behind -----------
NEAREST_M, FARTHEST_M, BACKGROUND_M = 1.0, 3.0, 4.0
HFOV_DEG = 60.0


def camera_intrinsics(size: int = DEFAULT_SIZE):
    """The synthetic camera's K: a centred pinhole of 60 degrees horizontal field of view."""
    from ..geometry.depth import synthetic_intrinsics

    return synthetic_intrinsics(size, size, HFOV_DEG)


def object_depths(n: int) -> list[float]:
    """Object k of n at its own depth in [1, 3] m; a later-painted object (it covers earlier
    ones) is nearer, so the depth image agrees with the occlusions of the colour image."""
    return [round(FARTHEST_M - (FARTHEST_M - NEAREST_M) * k / max(1, n - 1), 3) for k in range(n)]


def synthetic_depth_frame(objects: list[SceneObject], size: int = DEFAULT_SIZE) -> np.ndarray:
    """Depth in metres (float32, size x size) aligned to the frame: objects over a background plane."""
    from ..geometry.depth import synthetic_depth

    depths = object_depths(len(objects))
    return synthetic_depth((size, size), [(o.mask, z) for o, z in zip(objects, depths, strict=True)], BACKGROUND_M)


def object_truth_3d(mask: np.ndarray, depth_m: float, k) -> dict[str, Any]:
    """An object's visible part in the optical frame (metres): the per-axis median of its visible
    pixels at its depth (the centre of a whole symmetric shape; of what is seen of a covered one),
    and their extent (one pixel's footprint included; flat: no depth extent)."""
    ys, xs = np.nonzero(mask)
    if not xs.size:
        return {"depth_m": depth_m, "position_m": None, "size_m": None}
    u, v = float(np.median(xs)), float(np.median(ys))
    position = [(u - k.cx) * depth_m / k.fx, (v - k.cy) * depth_m / k.fy, depth_m]
    size = [(xs.max() - xs.min() + 1) * depth_m / k.fx, (ys.max() - ys.min() + 1) * depth_m / k.fy, 0.0]
    return {"depth_m": depth_m, "position_m": [round(p, 4) for p in position], "size_m": [round(p, 4) for p in size]}


def ground_truth_json(truth: dict, stamp_ns: int, frame_id: str) -> str:
    """The side-channel message: the truth plus the stamp and frame id of the image it belongs to."""
    return json.dumps({**truth, "stamp_ns": int(stamp_ns), "frame_id": frame_id})


def mask_from_truth(obj: dict) -> np.ndarray:
    """An object's visible mask (bool HxW) from its published RLE."""
    from pycocotools import mask as mask_utils

    rle = dict(obj["mask"])
    rle["counts"] = rle["counts"].encode("ascii")
    return mask_utils.decode(rle).astype(bool)


def names_object(text: str, color: str, shape: str) -> bool:
    """Whether a caption names this colour and this shape (as whole words)."""
    words = set(text.lower().replace(".", " ").replace(",", " ").split())
    return color in words and shape in words


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0
