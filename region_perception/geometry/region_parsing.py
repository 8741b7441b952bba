"""Regions as people type them: points ``"x,y;x,y"`` and boxes ``"x1,y1,x2,y2"``.

The command line and the ROS query tool both read regions from text; the parsing lives here, beside
the regions themselves, so both entry points refuse the same input with the same words.
"""

from __future__ import annotations

import numpy as np


class RegionParseError(ValueError):
    """Text that is not a region: one line that says what was expected."""


def numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        raise RegionParseError(f"{what}: {text!r} is not a list of numbers") from None


def box_from_text(text: str, what: str = "--box") -> list[float]:
    """``"x1,y1,x2,y2"`` -> four numbers."""
    vals = numbers(text, what)
    if len(vals) != 4:
        raise RegionParseError(f"{what}: expected x1,y1,x2,y2, got {text!r}")
    return vals


def parse_points(text: str, what: str = "--points") -> np.ndarray:
    """``"x,y;x,y"`` -> (N, 2)."""
    pairs = [p for p in text.split(";") if p.strip()]
    rows = []
    for pair in pairs:
        vals = numbers(pair, what)
        if len(vals) != 2:
            raise RegionParseError(f"{what}: {pair!r} is not an x,y pair")
        rows.append(vals)
    if not rows:
        raise RegionParseError(f"{what}: no points given")
    return np.array(rows, dtype=np.float64)
