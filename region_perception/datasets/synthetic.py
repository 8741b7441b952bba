"""A synthetic region world: coloured shapes on varied backgrounds, written in the real datasets' formats.

Why: answer quality can only be measured where the answers are known. Scenes here are regenerated
from a seed (no download), the language is small and regular (every word is in ``VOCABULARY``, so
word-level tokenizers of tiny models cover it), and every referring expression is checked against
an independent interpreter (``resolve``) to match exactly one object.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from .types import mask_to_rle

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
SIZES: tuple[str, ...] = ("small", "medium", "large")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
BACKGROUNDS: tuple[str, ...] = ("flat", "noise", "gradient", "texture")

_RGB = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
}

# Every word a synthetic caption, referring expression or task prompt uses (sorted, no duplicates).
VOCABULARY: list[str] = sorted(
    {
        "a", "the", "of", "larger", "smaller", "what", "is", "this", "region", "object", "describe",
        "which", "color", "shape", "size", "it", "in", "image", "there",
        *COLORS, *SHAPES, *SIZES, *RELATIONS,
    }
)

# Radius (half-size) of each size word as a fraction of the image side, and the margin (pixels per
# 128) by which one centre must be beyond another for "left of" / "above" to hold.
_SIZE_RANGES = {"small": (0.055, 0.08), "medium": (0.095, 0.125), "large": (0.14, 0.18)}
_RELATION_MARGIN = 6 / 128
_MIN_VISIBLE = 0.6  # an object keeps at least this fraction of its pixels after occlusion


@dataclass
class SceneObject:
    """One drawn object; ``mask`` is what remains visible after later objects are painted over it.

    Also readable as a mapping (``obj["mask"]``) for code that treats objects as dicts.
    """

    color: str
    shape: str
    size: str
    center: tuple[int, int]
    radius: int
    mask: np.ndarray = field(repr=False)
    bbox: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def attributes(self) -> dict[str, str]:
        return {"color": self.color, "shape": self.shape, "size": self.size}


def size_word(radius: float, size: int) -> str:
    """The size word of a radius in an image of side ``size`` (nearest range)."""
    frac = radius / size
    best = min(_SIZE_RANGES, key=lambda w: 0 if _SIZE_RANGES[w][0] <= frac <= _SIZE_RANGES[w][1]
               else min(abs(frac - _SIZE_RANGES[w][0]), abs(frac - _SIZE_RANGES[w][1])))
    return best


def _shape_mask(shape: str, center: tuple[int, int], radius: int, size: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = center
    r = radius
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=255)
    elif shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            ang = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(ang), cy + rad * np.sin(ang)))
        draw.polygon(pts, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return np.asarray(canvas) > 127


def _background(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Muted backgrounds, far from the object colours, so colour words stay unambiguous."""
    base = rng.uniform(90, 200, size=3) * np.array([1.0, 1.0, 1.0]) * rng.uniform(0.9, 1.0, size=3)
    gray = base.mean()
    base = 0.7 * gray + 0.3 * base  # desaturate
    if kind == "flat":
        img = np.broadcast_to(base, (size, size, 3)).copy()
    elif kind == "noise":
        img = base + rng.normal(0, 18, size=(size, size, 1))
    elif kind == "gradient":
        other = np.full(3, rng.uniform(60, 220))
        t = np.linspace(0, 1, size)
        t = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
        img = base * (1 - t) + other * t
        img = np.broadcast_to(img, (size, size, 3)).copy()
    elif kind == "texture":
        # photo-like: low-frequency blobs (upsampled noise) plus grain and a soft vignette
        coarse = rng.normal(0, 1, size=(8, 8))
        blobs = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.BICUBIC))
        yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
        vignette = 1 - 0.5 * (xx**2 + yy**2)
        img = (base[None, None, :] + 25 * blobs[..., None]) * vignette[..., None]
        img = img + rng.normal(0, 6, size=(size, size, 1))
    else:
        raise ValueError(f"unknown background {kind!r}; expected one of {', '.join(BACKGROUNDS)}")
    return img


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0.0, 0.0, 0.0, 0.0)
    x0, y0 = float(xs.min()), float(ys.min())
    return (x0, y0, float(xs.max()) - x0 + 1, float(ys.max()) - y0 + 1)


def _compose(
    specs: list[tuple[str, str, tuple[int, int], int]], size: int, background: str | np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, list[SceneObject]]:
    img = _background(background, size, rng) if isinstance(background, str) else background.astype(np.float64)
    full = [_shape_mask(shape, center, radius, size) for _, shape, center, radius in specs]
    objects = []
    for i, (color, shape, center, radius) in enumerate(specs):
        rgb = np.array(_RGB[color], dtype=np.float64) + rng.normal(0, 8, size=3)
        # slight shading across the object so it is not a single flat colour
        yy = (np.arange(size)[:, None] - center[1]) / max(radius, 1)
        shade = (1.0 - 0.08 * np.clip(yy, -1, 1))[..., None]
        img = np.where(full[i][..., None], rgb * shade, img)
        visible = full[i].copy()
        for later in full[i + 1:]:
            visible &= ~later
        objects.append(SceneObject(color, shape, size_word(radius, size), (int(center[0]), int(center[1])),
                                   int(radius), visible, _bbox(visible)))
    image = np.clip(img, 0, 255).astype(np.uint8)
    return image, objects


def scene(
    objects: list[tuple[str, str, tuple[int, int], int]], size: int = 128, background: str = "flat", seed: int = 0,
) -> tuple[np.ndarray, list[SceneObject]]:
    """An explicit scene: ``[(colour, shape, (x, y), radius), ...]``, drawn in order (later ones on top)."""
    for color, shape, _, _ in objects:
        if color not in COLORS:
            raise ValueError(f"unknown colour {color!r}; expected one of {', '.join(COLORS)}")
        if shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    return _compose(list(objects), size, background, np.random.default_rng(seed))


def render_scene(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, list[SceneObject]]:
    """A random scene of 2-6 objects on a random background; every object keeps most of its pixels."""
    n = int(rng.integers(2, 7))
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    for _ in range(50):
        specs = []
        for _ in range(n):
            size_name = SIZES[int(rng.integers(len(SIZES)))]
            lo, hi = _SIZE_RANGES[size_name]
            radius = max(3, round(rng.uniform(lo, hi) * size))
            cx = int(rng.integers(radius, size - radius))
            cy = int(rng.integers(radius, size - radius))
            specs.append((COLORS[int(rng.integers(len(COLORS)))], SHAPES[int(rng.integers(len(SHAPES)))],
                          (cx, cy), radius))
        full = [_shape_mask(s, c, r, size) for _, s, c, r in specs]
        ok = True
        for i in range(n):
            visible = full[i].copy()
            for later in full[i + 1:]:
                visible &= ~later
            if visible.sum() < _MIN_VISIBLE * full[i].sum():
                ok = False
                break
        if ok:
            return _compose(specs, size, background, rng)
    n = 2  # dense scenes that never fit: fall back to two objects far apart
    specs = [("red", "circle", (size // 4, size // 2), size // 10), ("blue", "square", (3 * size // 4, size // 2),
                                                                     size // 10)]
    return _compose(specs, size, background, rng)


# ---------------------------------------------------------------- language


def caption(obj: SceneObject) -> str:
    """The region caption of an object, e.g. "a small red triangle"."""
    return f"a {obj.size} {obj.color} {obj.shape}"


def _related(a: SceneObject, b: SceneObject, relation: str, size: int) -> bool:
    """Whether ``a`` is clearly ``relation`` of ``b`` (centres apart by more than the margin)."""
    m = _RELATION_MARGIN * size
    (ax, ay), (bx, by) = a.center, b.center
    return {"left": ax < bx - m, "right": ax > bx + m, "above": ay < by - m, "below": ay > by + m}[relation]


def _area(obj: SceneObject) -> float:
    return float(obj.radius)


def resolve(expression: str, objects: list[SceneObject], size: int = 128) -> list[int]:
    """The indices of the objects an expression denotes, by the grammar the generator writes.

    Grammar: ``the [larger|smaller] [COLOR] SHAPE [(left|right) of|above|below NP]`` where NP is
    ``the [COLOR] SHAPE`` and must itself denote exactly one object. Independent of how the
    expressions were produced, so it can check them.
    """
    words = expression.split()
    if not words or words[0] != "the":
        raise ValueError(f"not a synthetic expression: {expression!r}")
    i = 1
    comparative = None
    if i < len(words) and words[i] in ("larger", "smaller"):
        comparative = words[i]
        i += 1
    color = None
    if i < len(words) and words[i] in COLORS:
        color = words[i]
        i += 1
    if i >= len(words) or words[i] not in SHAPES:
        raise ValueError(f"not a synthetic expression: {expression!r}")
    shape = words[i]
    i += 1
    cands = [k for k, o in enumerate(objects) if o.shape == shape and (color is None or o.color == color)]
    if i < len(words):
        relation = words[i]
        rest = words[i + 2:] if relation in ("left", "right") else words[i + 1:]
        if relation not in RELATIONS or (relation in ("left", "right") and words[i + 1:i + 2] != ["of"]):
            raise ValueError(f"not a synthetic expression: {expression!r}")
        ref = resolve(" ".join(rest), objects, size)
        if len(ref) != 1:
            return []
        cands = [k for k in cands if k != ref[0] and _related(objects[k], objects[ref[0]], relation, size)]
    if comparative is not None:
        if len(cands) != 2 or objects[cands[0]].radius == objects[cands[1]].radius:
            return []
        a, b = sorted(cands, key=lambda k: objects[k].radius)
        ratio = objects[b].radius / objects[a].radius
        if ratio < 1.25:
            return []
        cands = [b] if comparative == "larger" else [a]
    return cands


def _is_clear(target: int, expression: str, objects: list[SceneObject], size: int) -> bool:
    """Unique, and no other object of the same kind is a borderline case of the relation."""
    if resolve(expression, objects, size) != [target]:
        return False
    words = expression.split()
    for relation in RELATIONS:
        if relation in words:
            # others of the target's kind must be clearly on the other side (no near-ties)
            k = words.index(relation)
            rest = words[k + 2:] if relation in ("left", "right") else words[k + 1:]
            ref = resolve(" ".join(rest), objects, size)[0]
            opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}[relation]
            head = [w for w in words[:k] if w in COLORS or w in SHAPES]
            for j, o in enumerate(objects):
                if j in (target, ref) or o.shape != objects[target].shape:
                    continue
                if len(head) == 2 and o.color != objects[target].color:
                    continue
                if not _related(o, objects[ref], opposite, size):
                    return False
    return True


def expressions(target: int, objects: list[SceneObject], size: int = 128, limit: int = 3) -> list[str]:
    """Up to ``limit`` referring expressions that each denote exactly ``objects[target]``."""
    obj = objects[target]
    candidates = [f"the {obj.shape}", f"the {obj.color} {obj.shape}",
                  f"the larger {obj.shape}", f"the smaller {obj.shape}",
                  f"the larger {obj.color} {obj.shape}", f"the smaller {obj.color} {obj.shape}"]
    for j, ref in enumerate(objects):
        if j == target:
            continue
        for ref_np in (f"the {ref.shape}", f"the {ref.color} {ref.shape}"):
            if resolve(ref_np, objects, size) != [j]:
                continue
            for relation in RELATIONS:
                rel = f"{relation} of" if relation in ("left", "right") else relation
                candidates.append(f"the {obj.shape} {rel} {ref_np}")
            break
    out: list[str] = []
    for expr in candidates:
        if expr not in out and _is_clear(target, expr, objects, size):
            out.append(expr)
        if len(out) >= limit:
            break
    return out


# ---------------------------------------------------------------- writing the dataset


def generate(
    out: Path | str, *, images: int = 200, size: int = 128, seed: int = 0, val_fraction: float = 0.2,
    overwrite: bool = False,
) -> Path:
    """Write ``images`` scenes to ``out`` as COCO instances + RefCOCO refs + region captions per split.

    Layout: ``images/NNNNNN.png``; ``instances_{train,val}.json`` (COCO, RLE segmentation, plus
    ``attributes`` {color, shape, size} and ``geometry`` {center, radius} the expressions were checked
    on); ``refs_{split}.json`` (refer-toolkit refs); ``captions_{split}.json`` (Visual Genome region
    descriptions, plus ``ann_id``); ``synthetic.json`` (parameters,
    vocabulary). Deterministic for a seed: image ``i`` is drawn from ``default_rng([seed, i])``.
    """
    out = Path(out)
    if images < 1 or size < 32 or not 0.0 <= val_fraction <= 1.0:
        raise ValueError("need images >= 1, size >= 32 and 0 <= val_fraction <= 1")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (out / "synthetic.json").exists():
            raise FileExistsError(f"{out} is not a synthetic dataset directory; refusing to overwrite it")
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    # the marker first, so a run that stops half-way still leaves a directory --overwrite may replace
    (out / "synthetic.json").write_text(json.dumps({"generator": "region_perception.datasets.synthetic",
                                                    "complete": False}))
    n_val = round(images * val_fraction)
    n_train = images - n_val
    categories = [{"id": k + 1, "name": s, "supercategory": "shape"} for k, s in enumerate(SHAPES)]
    cat_id = {c["name"]: c["id"] for c in categories}
    splits: dict[str, dict[str, list]] = {
        s: {"images": [], "annotations": [], "refs": [], "regions": []} for s in ("train", "val")
    }
    ann_id = ref_id = sent_id = 0
    for index in range(images):
        split = "train" if index < n_train else "val"
        rng = np.random.default_rng([seed, index])
        image, objects = render_scene(rng, size)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(image).save(out / "images" / file_name, compress_level=1)
        bucket = splits[split]
        bucket["images"].append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        regions = []
        for k, obj in enumerate(objects):
            ann_id += 1
            rle = mask_to_rle(obj.mask)
            bucket["annotations"].append({
                "id": ann_id, "image_id": image_id, "category_id": cat_id[obj.shape], "segmentation": rle,
                "area": float(obj.mask.sum()), "bbox": list(obj.bbox), "iscrowd": 0,
                "attributes": obj.attributes, "geometry": {"center": list(obj.center), "radius": obj.radius},
            })
            x, y, w, h = obj.bbox
            regions.append({"region_id": ann_id, "image_id": image_id, "ann_id": ann_id, "phrase": caption(obj),
                            "x": int(x), "y": int(y), "width": int(w), "height": int(h)})
            sents = expressions(k, objects, size)
            if sents:
                ref_id += 1
                sentences = []
                for s in sents:
                    sent_id += 1
                    sentences.append({"sent_id": sent_id, "sent": s, "raw": s, "tokens": s.split()})
                bucket["refs"].append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
                                       "category_id": cat_id[obj.shape], "file_name": file_name,
                                       "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences})
        bucket["regions"].append({"id": image_id, "regions": regions})
    info = {"description": "region_perception synthetic region world", "seed": seed, "size": size}
    for split, bucket in splits.items():
        coco = {"info": info, "licenses": [], "images": bucket["images"], "annotations": bucket["annotations"],
                "categories": categories}
        (out / f"instances_{split}.json").write_text(json.dumps(coco))
        (out / f"refs_{split}.json").write_text(json.dumps(bucket["refs"]))
        (out / f"captions_{split}.json").write_text(json.dumps(bucket["regions"]))
    meta = {"generator": "region_perception.datasets.synthetic", "complete": True, "images": images, "size": size,
            "seed": seed,
            "val_fraction": val_fraction, "colors": list(COLORS), "shapes": list(SHAPES), "sizes": list(SIZES),
            "vocabulary": VOCABULARY, "splits": {s: len(b["images"]) for s, b in splits.items()}}
    (out / "synthetic.json").write_text(json.dumps(meta, indent=1))
    return out
