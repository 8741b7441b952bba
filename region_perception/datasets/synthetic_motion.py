"""A moving synthetic world: the shapes of :mod:`.synthetic` on known paths, with per-frame truth.

Why: following an object can only be measured where every frame's answer is known. Each sequence
has a static near *occluder*, an object that passes fully behind it and comes out the other side,
and two objects whose paths cross (the nearer one covers the farther one while they overlap).
Sequence ``index`` of stream ``seed`` is drawn from ``default_rng([seed, index])``, so anyone can
regenerate a frame and its truth from (seed, index, frame). Plain Python and numpy: the ROS camera
publishes what this module returns and ``generate_sequences`` writes it as a dataset.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .synthetic import _RGB as _RGB_OF
from .synthetic import BACKGROUNDS, COLORS, SHAPES, _background, _shape_mask, size_word
from .types import mask_to_rle

DEFAULT_FRAMES = 48
DEFAULT_SIZE = 128
DEFAULT_SEED = 1  # held-out by default, like the synthetic camera (training scenes use seed 0)
BACKGROUND_M = 4.0
ROLES = ("crossing_near", "crossing_far", "occluded", "occluder")


@dataclass
class MovingObject:
    """One object of a sequence: its look, its depth and its path (keyframes, linearly interpolated)."""

    object_id: int  # 1-based, the value of its pixels in the instance masks
    color: str
    shape: str
    radius: int
    depth_m: float  # nearer objects are painted later and cover farther ones
    role: str
    keyframes: list[tuple[float, float, float]] = field(default_factory=list)  # (t in [0, 1], x, y)

    def center(self, frame: int, frames: int) -> tuple[int, int]:
        """The object's centre (pixels) at ``frame`` of a sequence of ``frames``."""
        t = frame / max(1, frames - 1)
        ts = [k[0] for k in self.keyframes]
        x = float(np.interp(t, ts, [k[1] for k in self.keyframes]))
        y = float(np.interp(t, ts, [k[2] for k in self.keyframes]))
        return int(round(x)), int(round(y))

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape}"

    @property
    def size(self) -> str:
        return size_word(self.radius, DEFAULT_SIZE)

    @property
    def expression(self) -> str:
        """A sentence that denotes it (colour and shape are unique within a sequence)."""
        return f"the {self.color} {self.shape}"


@dataclass
class MotionFrame:
    """One rendered frame: the image, depth, and each object's visible and full mask."""

    index: int
    image: np.ndarray  # RGB uint8
    depth_m: np.ndarray  # float32 metres
    visible: dict[int, np.ndarray]  # object id -> visible mask
    full: dict[int, np.ndarray]  # object id -> the whole shape, covered or not
    centers: dict[int, tuple[int, int]]

    def visibility(self, object_id: int) -> float:
        """Visible fraction of the object's pixels (0: fully hidden)."""
        total = int(self.full[object_id].sum())
        return float(self.visible[object_id].sum()) / total if total else 0.0

    def instance_map(self) -> np.ndarray:
        """uint8 HxW: each pixel the id of the visible object there, 0 for the background."""
        out = np.zeros(self.image.shape[:2], np.uint8)
        for oid, m in self.visible.items():
            out[m] = oid
        return out


@dataclass
class MotionSequence:
    """A sequence's objects and background; frames are rendered on demand (deterministic)."""

    seed: int
    index: int
    frames: int
    size: int
    background_kind: str
    background: np.ndarray = field(repr=False)
    objects: list[MovingObject] = field(default_factory=list)

    def by_role(self, role: str) -> MovingObject:
        return next(o for o in self.objects if o.role == role)

    def render(self, frame: int) -> MotionFrame:
        """Frame ``frame``: objects painted far to near over the background."""
        if not 0 <= frame < self.frames:
            raise ValueError(f"frame {frame} outside 0..{self.frames - 1}")
        s = self.size
        order = sorted(self.objects, key=lambda o: -o.depth_m)
        img = self.background.astype(np.float64).copy()
        depth = np.full((s, s), BACKGROUND_M, np.float32)
        full: dict[int, np.ndarray] = {}
        centers: dict[int, tuple[int, int]] = {}
        rng = np.random.default_rng([self.seed, self.index, 7])  # fixed per object: same shading every frame
        tints = {o.object_id: rng.normal(0, 8, size=3) for o in self.objects}
        for o in order:
            c = o.center(frame, self.frames)
            centers[o.object_id] = c
            m = _shape_mask(o.shape, c, o.radius, s)
            full[o.object_id] = m
            rgb = np.array(_RGB_OF[o.color], np.float64) + tints[o.object_id]
            yy = (np.arange(s)[:, None] - c[1]) / max(o.radius, 1)
            shade = (1.0 - 0.08 * np.clip(yy, -1, 1))[..., None]
            img = np.where(m[..., None], rgb * shade, img)
            depth[m] = o.depth_m
        visible = {}
        for i, o in enumerate(order):
            v = full[o.object_id].copy()
            for nearer in order[i + 1 :]:
                v &= ~full[nearer.object_id]
            visible[o.object_id] = v
        image = np.clip(img, 0, 255).astype(np.uint8)
        return MotionFrame(frame, image, depth, visible, full, centers)


def motion_sequence(seed: int, index: int, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE) -> MotionSequence:
    """Sequence ``index`` of stream ``seed``: four objects of distinct colour and shape.

    The occluder (a large square or circle, nearest) stands still low in the image; the occluded
    object (small, farthest) moves horizontally straight through it, fully hidden for a stretch;
    above, two objects move on diagonals that cross half-way, the nearer covering the farther.
    Mirrored left/right at random; speeds a few pixels per frame at 128 px.
    """
    if frames < 8 or size < 64:
        raise ValueError(f"need frames >= 8 and size >= 64, got frames={frames}, size={size}")
    rng = np.random.default_rng([seed, index])
    colors = [COLORS[int(k)] for k in rng.permutation(len(COLORS))[:4]]
    occluder_shape = ("square", "circle")[int(rng.integers(2))]
    others = [s for s in SHAPES if s != occluder_shape]
    shapes = [others[int(k)] for k in rng.permutation(len(others))]  # 3 distinct shapes for the movers
    f = size / 128.0
    flip = bool(rng.integers(2))

    def x_of(x: float) -> float:
        return size - 1 - x if flip else x

    # the occluder and the object passing behind it (bottom band)
    r_occ = int(round(rng.uniform(20, 23) * f))
    occ_x, occ_y = rng.uniform(0.42, 0.58) * size, rng.uniform(0.72, 0.76) * size
    r_hid = int(round(rng.uniform(7, 8.5) * f))
    travel = rng.uniform(46, 54) * f
    occluded_kf = [(0.0, x_of(occ_x - travel), occ_y), (1.0, x_of(occ_x + travel), occ_y)]
    # two crossing objects (top band); the crossing point is about half-way through the sequence
    r_a, r_b = int(round(rng.uniform(9, 12) * f)), int(round(rng.uniform(9, 12) * f))
    cx, cy = rng.uniform(0.42, 0.58) * size, rng.uniform(0.26, 0.32) * size
    dx, dy = rng.uniform(34, 42) * f, rng.uniform(10, 14) * f
    t_cross = rng.uniform(0.42, 0.58)
    a_kf = [(0.0, x_of(cx - dx * 2 * t_cross), cy - dy * 2 * t_cross), (t_cross, x_of(cx), cy),
            (1.0, x_of(cx + dx * 2 * (1 - t_cross)), cy + dy * 2 * (1 - t_cross))]
    b_kf = [(0.0, x_of(cx - dx * 2 * t_cross), cy + dy * 2 * t_cross), (t_cross, x_of(cx), cy),
            (1.0, x_of(cx + dx * 2 * (1 - t_cross)), cy - dy * 2 * (1 - t_cross))]
    objects = [
        MovingObject(1, colors[0], shapes[0], r_a, 1.8, "crossing_near", a_kf),
        MovingObject(2, colors[1], shapes[1], r_b, 2.4, "crossing_far", b_kf),
        MovingObject(3, colors[2], shapes[2], r_hid, 3.0, "occluded", occluded_kf),
        MovingObject(4, colors[3], occluder_shape, r_occ, 1.0, "occluder", [(0.0, x_of(occ_x), occ_y),
                                                                          (1.0, x_of(occ_x), occ_y)]),
    ]
    kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    background = _background(kind, size, rng)
    return MotionSequence(seed, index, frames, size, kind, background, objects)


def _box(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    if not xs.size:
        return None
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def frame_truth(seq: MotionSequence, frame: MotionFrame, with_masks: bool = True) -> dict[str, Any]:
    """One frame's ground truth (JSON-ready): each object's visibility, box (x0, y0, x1, y1), centre,
    3D position of what is seen, and optionally its visible mask as RLE."""
    from .synthetic_camera import camera_intrinsics, object_truth_3d

    k = camera_intrinsics(seq.size)
    objs = []
    for o in seq.objects:
        v = frame.visible[o.object_id]
        entry = {
            "id": o.object_id, "visibility": round(frame.visibility(o.object_id), 4), "area": int(v.sum()),
            "box": _box(v), "center": list(frame.centers[o.object_id]),
            **object_truth_3d(v, o.depth_m, k),
        }
        if with_masks:
            entry["mask"] = mask_to_rle(v)
        objs.append(entry)
    return {"index": frame.index, "objects": objs}


def sequence_info(seq: MotionSequence) -> dict[str, Any]:
    """What stays the same over a sequence: the objects (look, depth, path) and which to follow."""
    return {
        "seed": seq.seed, "index": seq.index, "frames": seq.frames, "size": seq.size,
        "background": seq.background_kind,
        "objects": [
            {"id": o.object_id, "color": o.color, "shape": o.shape, "size": o.size, "radius": o.radius,
             "depth_m": o.depth_m, "role": o.role, "caption": o.caption, "expression": o.expression,
             "keyframes": [[round(v, 3) for v in k] for k in o.keyframes]}
            for o in seq.objects
        ],
        # the objects a follower is measured on: both crossing ones and the one that disappears
        "targets": [o.object_id for o in seq.objects if o.role != "occluder"],
    }


def generate_sequences(
    out: Path | str, *, sequences: int = 10, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE,
    seed: int = DEFAULT_SEED, overwrite: bool = False,
) -> Path:
    """Write ``sequences`` sequences under ``out``.

    Layout: ``motion.json`` (parameters, list of sequences; ``complete`` false until the end);
    per sequence ``NNNN/frames/FFFFFF.png`` (RGB), ``NNNN/masks/FFFFFF.png`` (uint8 instance ids
    of the visible objects, 0 = background), ``NNNN/depth/FFFFFF.png`` (uint16 millimetres) and
    ``NNNN/annotations.json`` (:func:`sequence_info` plus ``frame_truth``: :func:`frame_truth` without
    the RLE masks, which the instance PNGs hold).
    """
    out = Path(out)
    if sequences < 1:
        raise ValueError("need sequences >= 1")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (out / "motion.json").exists():
            raise FileExistsError(f"{out} is not a motion dataset directory; refusing to overwrite it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {"generator": "region_perception.datasets.synthetic_motion", "complete": False}
    (out / "motion.json").write_text(json.dumps(meta))
    names = []
    for index in range(sequences):
        seq = motion_sequence(seed, index, frames, size)
        name = f"{index:04d}"
        d = out / name
        for sub in ("frames", "masks", "depth"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        truths = []
        for t in range(frames):
            fr = seq.render(t)
            Image.fromarray(fr.image).save(d / "frames" / f"{t:06d}.png", compress_level=1)
            Image.fromarray(fr.instance_map()).save(d / "masks" / f"{t:06d}.png", compress_level=1)
            mm = np.round(fr.depth_m * 1000).astype(np.uint16)
            Image.fromarray(mm).save(d / "depth" / f"{t:06d}.png", compress_level=1)
            truths.append(frame_truth(seq, fr, with_masks=False))
        (d / "annotations.json").write_text(json.dumps({**sequence_info(seq), "frame_truth": truths}))
        names.append(name)
    meta = {**meta, "complete": True, "sequences": names, "frames": frames, "size": size, "seed": seed}
    (out / "motion.json").write_text(json.dumps(meta, indent=1))
    return out


@dataclass
class LoadedSequence:
    """A written sequence read back: frames (RGB), instance maps and its annotations."""

    name: str
    info: dict[str, Any]
    images: list[np.ndarray]
    instances: list[np.ndarray]

    def mask(self, frame: int, object_id: int) -> np.ndarray:
        return self.instances[frame] == object_id

    def object(self, object_id: int) -> dict[str, Any]:
        return next(o for o in self.info["objects"] if o["id"] == object_id)


def is_motion_dataset(root: Path | str) -> bool:
    return (Path(root) / "motion.json").exists()


def load_sequences(root: Path | str, limit: int | None = None) -> list[LoadedSequence]:
    """The sequences a :func:`generate_sequences` run wrote (a half-written directory is refused)."""
    root = Path(root)
    meta = json.loads((root / "motion.json").read_text())
    if not meta.get("complete"):
        raise ValueError(f"{root}: the motion dataset was not completely written")
    out = []
    for name in meta["sequences"][: limit or None]:
        d = root / name
        info = json.loads((d / "annotations.json").read_text())
        n = int(info["frames"])
        images = [np.asarray(Image.open(d / "frames" / f"{t:06d}.png").convert("RGB")) for t in range(n)]
        inst = [np.asarray(Image.open(d / "masks" / f"{t:06d}.png")) for t in range(n)]
        out.append(LoadedSequence(name, info, images, inst))
    return out


def motion_stream(seed: int = DEFAULT_SEED, start: int = 0, frames: int = DEFAULT_FRAMES, size: int = DEFAULT_SIZE):
    """Frames of sequences ``start``, ``start + 1``, ... one after another, forever: ``(sequence, frame)``."""
    index = start
    while True:
        seq = motion_sequence(seed, index, frames, size)
        for t in range(frames):
            yield seq, seq.render(t)
        index += 1


def stream_truth(seq: MotionSequence, frame: MotionFrame) -> dict[str, Any]:
    """A streamed frame's ground truth: where it is in the stream, the camera, and every object
    (its look and role from :func:`sequence_info` with its per-frame truth and visible-mask RLE)."""
    from .synthetic_camera import camera_intrinsics

    k = camera_intrinsics(seq.size)
    info = {o["id"]: o for o in sequence_info(seq)["objects"]}
    objects = [{**{key: info[o["id"]][key] for key in ("color", "shape", "size", "role", "caption", "expression")},
                **o} for o in frame_truth(seq, frame)["objects"]]
    return {
        "seed": seq.seed, "sequence": seq.index, "index": frame.index, "frames": seq.frames, "size": seq.size,
        "camera": {"fx": k.fx, "fy": k.fy, "cx": k.cx, "cy": k.cy, "width": seq.size, "height": seq.size,
                   "background_m": BACKGROUND_M},
        "objects": objects,
    }
