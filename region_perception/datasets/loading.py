"""``load_dataset``: one entry point for the synthetic world, COCO, RefCOCO(+/g) and Visual Genome.

Why: the evaluator and trainers take a directory and a split; which format the directory holds is
recognised from its files, and a directory that is none of them gets one clear error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .refs_pickle import load_refs_pickle
from .types import ImageInfo, RegionDataset, RegionSample


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _image_dir(root: Path, split: str, images: Path | str | None) -> Path:
    if images is not None:
        return Path(images)
    for cand in (root / "images" / split, root / split, root / "images"):
        if cand.is_dir():
            return cand
    return root / "images"


def _coco_images(coco: dict, image_dir: Path) -> dict[int, ImageInfo]:
    return {
        int(im["id"]): ImageInfo(int(im["id"]), image_dir / im["file_name"], int(im["width"]), int(im["height"]))
        for im in coco.get("images", [])
    }


def _check_coco(coco: Any, path: Path) -> None:
    if not isinstance(coco, dict) or not {"images", "annotations", "categories"} <= set(coco):
        raise ValueError(f"{path}: not a COCO instances file (needs images, annotations, categories)")


def _category_ids(coco: dict) -> dict[int, str]:
    return {int(c["id"]): str(c["name"]) for c in coco["categories"]}


def _refs_by_ann(refs: list[dict], split: str | None) -> dict[int, list[tuple[int, str]]]:
    out: dict[int, list[tuple[int, str]]] = {}
    for ref in refs:
        if split is not None and ref.get("split") != split:
            continue
        for sent in ref.get("sentences", []):
            out.setdefault(int(ref["ann_id"]), []).append((int(ref["ref_id"]), str(sent["sent"])))
    return out


def _captions_by_ann(regions: list[dict]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for entry in regions:
        for reg in entry.get("regions", []):
            key = reg.get("ann_id", reg.get("region_id"))
            out.setdefault(int(key), []).append(str(reg["phrase"]))
    return out


def _samples(coco: dict, images: dict[int, ImageInfo], refs: dict[int, list[tuple[int, str]]],
             captions: dict[int, list[str]], only_referred: bool) -> list[RegionSample]:
    names = {int(c["id"]): str(c["name"]) for c in coco["categories"]}
    samples = []
    for ann in coco["annotations"]:
        aid = int(ann["id"])
        if only_referred and aid not in refs:
            continue
        info = images.get(int(ann["image_id"]))
        if info is None:
            continue
        samples.append(RegionSample(
            image_id=info.image_id, ann_id=aid, category=names.get(int(ann["category_id"]), "unknown"),
            bbox=tuple(float(v) for v in ann["bbox"]), segmentation=ann.get("segmentation", []),
            height=info.height, width=info.width, captions=captions.get(aid, []), refs=refs.get(aid, []),
            attributes=dict(ann.get("attributes", {})),
        ))
    return samples


def load_coco_dir(root: Path, split: str, images: Path | str | None = None) -> RegionDataset:
    """A COCO-format directory: ``instances_{split}.json`` (top level or ``annotations/``), images, and
    optional ``refs_{split}.json`` (refer-toolkit refs) and ``captions_{split}.json`` (VG regions)."""
    path = root / f"instances_{split}.json"
    if not path.is_file():
        path = root / "annotations" / f"instances_{split}.json"
    coco = _read_json(path)
    _check_coco(coco, path)
    infos = _coco_images(coco, _image_dir(root, split, images))
    refs_path = root / f"refs_{split}.json"
    refs = _refs_by_ann(_read_json(refs_path), None) if refs_path.is_file() else {}
    cap_path = root / f"captions_{split}.json"
    captions = _captions_by_ann(_read_json(cap_path)) if cap_path.is_file() else {}
    name = "synthetic" if (root / "synthetic.json").is_file() else "coco"
    cats = [str(c["name"]) for c in sorted(coco["categories"], key=lambda c: c["id"])]
    return RegionDataset(root, split, cats, infos, _samples(coco, infos, refs, captions, False), name=name,
                         category_ids=_category_ids(coco))


def load_refcoco_dir(root: Path, split: str, images: Path | str | None = None, refs_file: str | None = None
                     ) -> RegionDataset:
    """A refer-toolkit directory (``instances.json`` + ``refs(unc).p``/``refs(umd).p``/``refs(google).p``);
    only regions with a sentence in ``split`` (val, testA, testB, test) are samples. Images are COCO
    train2014 files: ``images=`` or ``root/images``."""
    picks = [root / refs_file] if refs_file else sorted(root.glob("refs(*).p"))
    if not picks or not picks[0].is_file():
        raise FileNotFoundError(f"{root}: no refs(*).p file")
    if len(picks) > 1:
        preferred = [p for p in picks if p.name in ("refs(unc).p", "refs(umd).p")]
        picks = preferred or picks
    refs_list = load_refs_pickle(picks[0])
    coco = _read_json(root / "instances.json")
    _check_coco(coco, root / "instances.json")
    image_dir = Path(images) if images is not None else root / "images"
    infos = _coco_images(coco, image_dir)
    refs = _refs_by_ann(refs_list, split)
    if not refs:
        found = sorted({str(r.get("split")) for r in refs_list})
        raise ValueError(f"{picks[0]}: no refs in split {split!r}; splits present: {', '.join(found)}")
    cats = [str(c["name"]) for c in sorted(coco["categories"], key=lambda c: c["id"])]
    used = {int(r["image_id"]) for r in refs_list if r.get("split") == split}
    infos = {k: v for k, v in infos.items() if k in used}
    # the referring sentences are also the regions' descriptions (RefCOCOg region-captioning references)
    captions = {ann: [sent for _, sent in sents] for ann, sents in refs.items()}
    return RegionDataset(root, split, cats, infos, _samples(coco, infos, refs, captions, True),
                         name=root.name or "refcoco",
                         category_ids=_category_ids(coco))


def load_visual_genome_dir(root: Path, split: str, images: Path | str | None = None) -> RegionDataset:
    """Visual Genome ``region_descriptions.json`` (+ ``image_data.json`` for sizes); each region is a box
    sample whose caption is its phrase. ``split`` selects image ids listed in ``{split}.txt`` if present."""
    regions = _read_json(root / "region_descriptions.json")
    sizes: dict[int, tuple[int, int]] = {}
    if (root / "image_data.json").is_file():
        for im in _read_json(root / "image_data.json"):
            sizes[int(im.get("image_id", im.get("id")))] = (int(im["width"]), int(im["height"]))
    keep: set[int] | None = None
    if (root / f"{split}.txt").is_file():
        keep = {int(t) for t in (root / f"{split}.txt").read_text().split()}
    image_dir = Path(images) if images is not None else root / "images"
    infos: dict[int, ImageInfo] = {}
    samples = []
    for entry in regions:
        image_id = int(entry.get("id", entry.get("image_id")))
        if keep is not None and image_id not in keep:
            continue
        if image_id not in sizes:
            raise ValueError(f"{root}: no size for image {image_id} (image_data.json missing or incomplete)")
        w, h = sizes[image_id]
        infos[image_id] = ImageInfo(image_id, image_dir / f"{image_id}.jpg", w, h)
        for reg in entry.get("regions", []):
            x, y, bw, bh = (float(reg[k]) for k in ("x", "y", "width", "height"))
            poly = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            samples.append(RegionSample(image_id, int(reg["region_id"]), "region", (x, y, bw, bh), poly, h, w,
                                        captions=[str(reg["phrase"]).strip()]))
    return RegionDataset(root, split, ["region"], infos, samples, name="visual_genome")


def load_dataset(root: str | Path, split: str = "val", *, images: str | Path | None = None,
                 refs_file: str | None = None) -> RegionDataset:
    """Load a split of the dataset in ``root``, recognising its format from its files.

    - synthetic / COCO-format: ``instances_{split}.json`` (or ``annotations/instances_{split}.json``;
      split ``val`` also finds ``val2017``);
    - RefCOCO/RefCOCO+/RefCOCOg: ``instances.json`` + ``refs(*).p``;
    - Visual Genome: ``region_descriptions.json``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset directory {root} does not exist")
    for name in (split, f"{split}2017"):
        if (root / f"instances_{name}.json").is_file() or (root / "annotations" / f"instances_{name}.json").is_file():
            return load_coco_dir(root, name, images)
    if (root / "instances.json").is_file() and (refs_file or any(root.glob("refs(*).p"))):
        return load_refcoco_dir(root, split, images, refs_file)
    if (root / "region_descriptions.json").is_file():
        return load_visual_genome_dir(root, split, images)
    raise ValueError(
        f"{root}: no dataset for split {split!r} (looked for instances_{split}.json,"
        f" annotations/instances_{split}.json, instances.json + refs(*).p, region_descriptions.json)"
    )
