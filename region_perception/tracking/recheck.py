"""The region-VLM as the tracker's re-check, duck-typed (any object with ``caption`` / ``refer``).

Why: the language model is the judge of *what* is followed, but it is the costly part, so it
is never the searcher: the colour model finds or confirms a candidate first (no call when there
is none), and the model only names it. Shared by the node's follow server and ``eval track``;
no import of the engine package (the engine is handed in).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .appearance import ColourModel, colour_recheck
from .propagate import iou
from .tracker import RecheckResult

_FILLER = {"small", "medium", "large", "big", "tiny", "a", "an", "the", "of", "is", "this", "it"}


def content_words(text: str) -> set[str]:
    """The words of a caption that say what the object is (sizes and articles left out: the size
    of a partly covered object changes, its colour and kind do not)."""
    return {w for w in text.lower().replace(".", " ").replace(",", " ").split() if w not in _FILLER}


def first_caption(engine: Any, image: np.ndarray, mask: np.ndarray, frame_key: str | None = None) -> str:
    """The model's caption of the object on the first frame: what later re-checks must still say."""
    from ..geometry.regions import MaskRegion

    res = engine.caption(image, [MaskRegion(mask)], frame_key=frame_key)
    return res.outputs[0].text if res.outputs else ""


def model_recheck(engine: Any, colour: ColourModel, reference: str, text: str, counter: list[int]) -> Callable:
    """A re-check by the model: colour finds or confirms the candidate, the region-VLM names it.

    With a sentence (``text``), REFER on the frame must land on the candidate (IoU >= 0.3).
    Otherwise the candidate's caption must share at least half the content words of the first
    frame's caption (``reference``). ``counter[0]`` counts the model's calls."""
    from ..geometry.regions import MaskRegion

    cheap = colour_recheck(colour)
    want = content_words(reference)

    def recheck(image: np.ndarray, mask: np.ndarray | None, near: tuple[float, float] | None) -> RecheckResult:
        cand = cheap(image, mask, near)
        if not cand.found or cand.mask is None:
            return cand
        counter[0] += 1
        try:
            if text:
                res = engine.refer(image, text)
                got = res.outputs[0].mask if res.outputs and res.outputs[0].mask is not None else None
                if got is None:
                    return RecheckResult(False, None, 0.0, "REFER found nothing")
                return RecheckResult(iou(got, cand.mask) >= 0.3, cand.mask, cand.score, "refer")
            res = engine.caption(image, [MaskRegion(cand.mask)])
            said = res.outputs[0].text if res.outputs else ""
            ok = not want or len(want & content_words(said)) >= max(1, len(want) // 2)
            return RecheckResult(ok, cand.mask if ok else None, cand.score, said)
        except Exception as exc:  # a model fault must not end the follow: the colour check stands
            return RecheckResult(cand.found, cand.mask, cand.score, f"model re-check failed: {exc}")

    return recheck
