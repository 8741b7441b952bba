"""What a region query is answered with, and the checks every path makes: below the engine and its batches.

The engine's entry points (:mod:`.engine`) and the one path that answers tasks
(:mod:`.batching`) both use these; so does the query processor, which refuses a query at
intake with the words the engine would use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..geometry.regions import RegionError
from ..models.backend import RegionCue


class ImageError(ValueError):
    """The image itself cannot be used (shape, dtype, size)."""


class TaskError(ValueError):
    """The query is well-formed but cannot be answered on this image (e.g. no proposals)."""


TASKS = ("caption", "ask", "classify", "refer", "comprehend")  # what a BatchItem may ask


@dataclass
class RegionAnswer:
    name: str = ""
    text: str = ""
    label: str = ""
    score: float = 0.0
    labels: list[str] = field(default_factory=list)
    label_scores: list[float] = field(default_factory=list)
    mask: np.ndarray | None = None  # bool, image size
    box: list[float] = field(default_factory=list)  # x_min, y_min, x_max, y_max px
    region_text: str = ""  # what the Q-Former read
    cue: RegionCue | None = field(default=None, repr=False)
    location: Any = None  # depth3d.Location: set by the 3D step when depth is on (None: not run)


@dataclass
class TaskResult:
    task: str
    outputs: list[RegionAnswer]
    model: str
    weights_random: bool
    image_size: tuple[int, int]
    timings_ms: dict[str, float]
    selected_index: int = -1
    candidate_scores: list[float] = field(default_factory=list)
    candidate_boxes: list[list[float]] = field(default_factory=list)
    candidate_masks: list[np.ndarray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # engine settings that are not the package defaults: {name: {"value": v, "from": level}} (engine/settings.py)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Everything but the pixel masks, for printing."""
        return {
            "task": self.task,
            "model": self.model,
            "weights_random": self.weights_random,
            "image_size": {"height": self.image_size[0], "width": self.image_size[1]},
            "outputs": [
                {
                    "name": o.name,
                    "text": o.text,
                    "label": o.label,
                    "score": o.score,
                    "labels": o.labels,
                    "label_scores": o.label_scores,
                    "box": o.box,
                    "region_text": o.region_text,
                    "mask_area": int(o.mask.sum()) if o.mask is not None else 0,
                    **(o.location.to_json() if o.location is not None else {}),
                }
                for o in self.outputs
            ],
            "selected_index": self.selected_index,
            "candidate_scores": self.candidate_scores,
            "candidate_boxes": self.candidate_boxes,
            "timings_ms": self.timings_ms,
            "notes": self.notes,
            "settings": self.settings,
        }


def check_image(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image, or ImageError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must be H x W x 3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"image is empty ({w}x{h})")
    if h * w > max_pixels:
        raise ImageError(f"image {w}x{h} has more than the limit of {max_pixels} pixels")
    return image


def check_text(text: str, what: str, max_chars: int) -> str:
    """The stripped text, or TaskError if it is empty or longer than ``max_chars``.

    Module-level so that the query processor refuses such a query at intake, before it
    could wait in the queue, with the words the engine would use.
    """
    text = (text or "").strip()
    if not text:
        raise TaskError(f"{what} is empty")
    if len(text) > max_chars:
        raise TaskError(f"{what} has {len(text)} characters, more than the limit of {max_chars}")
    return text


def box_list(box: np.ndarray) -> list[float]:
    """A box as the results report it (pixels, two decimals)."""
    return [round(float(v), 2) for v in box]


def query_errors() -> tuple[type[Exception], ...]:
    """Errors that belong to one query (answered INVALID_QUERY), never to the batch."""
    return (RegionError, TaskError)
