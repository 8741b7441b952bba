"""The dataset records every loader returns and every evaluator and trainer reads.

Why one shape: the synthetic world, COCO, RefCOCO(+/g) and Visual Genome differ in files, not in
what a region is; evaluation and training code then never looks at a file format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class ImageInfo:
    """One image: where its file is and its size in pixels."""

    image_id: int
    path: Path
    width: int
    height: int


@dataclass
class RegionSample:
    """One annotated region with everything said about it (category, captions, referring sentences)."""

    image_id: int
    ann_id: int
    category: str
    bbox: tuple[float, float, float, float]  # COCO xywh, pixels
    segmentation: Any  # COCO RLE dict or polygon list
    height: int
    width: int
    captions: list[str] = field(default_factory=list)
    refs: list[tuple[int, str]] = field(default_factory=list)  # (ref_id, sentence)
    attributes: dict[str, str] = field(default_factory=dict)

    def mask(self) -> np.ndarray:
        """The region as a bool HxW mask (pycocotools decode of the RLE or polygons)."""
        return segmentation_to_mask(self.segmentation, self.height, self.width)


def segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Decode a COCO segmentation (polygons, uncompressed or compressed RLE) into a bool HxW mask."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        if not segmentation:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        rle = segmentation
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return mask_utils.decode(rle).astype(bool)


def mask_to_rle(mask: np.ndarray) -> dict:
    """A bool HxW mask as compressed COCO RLE with a JSON-ready (str) ``counts``."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


@dataclass
class RegionDataset:
    """A split of a dataset: its images and annotated regions."""

    root: Path
    split: str
    categories: list[str]
    images: dict[int, ImageInfo]
    samples: list[RegionSample]
    name: str = "coco"  # format: synthetic | coco | refcoco directory name | visual_genome
    category_ids: dict[int, str] = field(default_factory=dict)  # the file's category id -> name

    def __post_init__(self) -> None:
        self._by_image: dict[int, list[RegionSample]] = {}
        for s in self.samples:
            self._by_image.setdefault(s.image_id, []).append(s)

    def __len__(self) -> int:
        return len(self.samples)

    def samples_of(self, image_id: int) -> list[RegionSample]:
        """The regions annotated in one image (in file order)."""
        return list(self._by_image.get(image_id, []))

    def read_image(self, image_id: int) -> np.ndarray:
        """The image as RGB uint8 HxWx3."""
        from PIL import Image

        info = self.images[image_id]
        if not info.path.is_file():
            raise FileNotFoundError(f"image {image_id} not found at {info.path}")
        with Image.open(info.path) as im:
            return np.array(im.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
