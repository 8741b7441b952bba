"""RegionVLM's region text: the points of a region written as words for the Q-Former.

RegionVLM (arXiv 2403.18260) feeds the Q-Former K points in [0, 1] image coordinates,
x then y, each times 100 and cast to int, written ``"[32 64] [36 62]"``; an empty string
means the whole image. The released training and evaluation code truncates (``int()``);
the paper's prose says rounded, which is offered as an option.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Rounding = Literal["truncate", "round"]


def points_to_text(points_xy_normalized: object, rounding: Rounding = "truncate") -> str:
    """``[[0.324, 0.643], [0.365, 0.622]]`` -> ``"[32 64] [36 62]"``; no points -> ``""``."""
    pts = np.asarray(points_xy_normalized, dtype=np.float64)
    if pts.size == 0:
        return ""
    pts = pts.reshape(-1, 2)
    scaled = pts * 100.0
    if rounding == "truncate":
        ints = np.trunc(scaled)
    elif rounding == "round":
        ints = np.floor(scaled + 0.5)  # half up, as a person reads "rounded"
    else:
        raise ValueError(f"rounding must be 'truncate' or 'round', not {rounding!r}")
    return " ".join(f"[{int(x)} {int(y)}]" for x, y in ints)


def multi_region_prompt(num_regions: int, question: str) -> list[str]:
    """Text pieces around each region's slot for RegionVLM's several-region prompt.

    ``"[0]: <Z0> [1]: <Z1> question"``: returns ``["[0]:", "[1]:", ..., question]``;
    the caller puts region i's query embeddings after piece i.
    """
    return [f"[{i}]:" for i in range(num_regions)] + [question]
