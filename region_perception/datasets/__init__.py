"""Region datasets: the synthetic world and loaders for COCO, RefCOCO(+/g) and Visual Genome (no rclpy)."""

from .loading import load_dataset
from .refs_pickle import UnsafePickleError, load_refs_pickle
from .types import ImageInfo, RegionDataset, RegionSample, mask_to_rle, segmentation_to_mask

__all__ = [
    "ImageInfo",
    "RegionDataset",
    "RegionSample",
    "UnsafePickleError",
    "load_dataset",
    "load_refs_pickle",
    "mask_to_rle",
    "segmentation_to_mask",
]
