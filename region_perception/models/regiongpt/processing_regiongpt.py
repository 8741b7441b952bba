"""RegionGPT's prompts: LLaVA-1.5's conversation format, ``Region [i] <region>`` references and
the task-guided instructions of the paper's Table 1.

Every prompt is plain text with ``<image>`` (expanded to the image's token count) and
``<region>`` placeholders; the model replaces their embeddings with features.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

IMAGE = "<image>"
REGION = "<region>"

CAPTION = "Give a short description of {target}."
CLASSIFY = "What is the category of {target}? Answer the question using {hint}."
COMPREHEND = 'Which region does "{text}" describe? Answer using the template Region [x].'

_ANSWER = re.compile(r"region\s*\[\s*(\d+)\s*\]", re.IGNORECASE)


def region_list(count: int) -> str:
    """``Region [0] <region>, Region [1] <region>.`` (empty for the whole image)."""
    if count == 0:
        return ""
    return ", ".join(f"Region [{i}] {REGION}" for i in range(count)) + "."


def target(count: int) -> str:
    """How an instruction names its regions."""
    if count <= 1:
        return "Region [0]" if count else "the image"
    return "the regions"


def conversation(
    image_tokens: int,
    regions: int,
    question: str,
    history: Sequence[tuple[str, str]] = (),
) -> str:
    """LLaVA-1.5's ``USER: ... ASSISTANT:`` turns; the image and region list open the first turn.

    ``history`` holds earlier (question, answer) pairs of the same conversation: the regions
    are listed once, in the first turn, and later turns refer to them by index.
    """
    opening = IMAGE * image_tokens + "\n" + (region_list(regions) + " " if regions else "")
    turns = [*history, (question, "")]
    parts = []
    for i, (q, a) in enumerate(turns):
        user = opening + q if i == 0 else q
        parts.append(f"USER: {user} ASSISTANT:" + (f" {a}</s>" if i < len(turns) - 1 else ""))
    return "".join(parts)


def caption_prompt(image_tokens: int) -> str:
    return conversation(image_tokens, 1, CAPTION.format(target="Region [0]"))


def refer_prompt(image_tokens: int) -> str:
    """For models trained with it (``refer_prompt``): a referring sentence is scored as this answer."""
    from ..backend import REFER_INSTRUCTION

    return conversation(image_tokens, 1, REFER_INSTRUCTION.format(target="Region [0]"))


def classify_prompt(image_tokens: int, hint: str) -> str:
    return conversation(image_tokens, 1, CLASSIFY.format(target="Region [0]", hint=hint))


def ask_prompt(image_tokens: int, regions: int, question: str, history: Sequence[tuple[str, str]] = ()) -> str:
    return conversation(image_tokens, regions, question, history)


def comprehend_prompt(image_tokens: int, regions: int, text: str) -> str:
    return conversation(image_tokens, regions, COMPREHEND.format(text=text))


def comprehend_answer(index: int) -> str:
    return f"Region [{index}]"


def parse_region_index(answer: str) -> int | None:
    """The index in a ``Region [x]`` answer, or None."""
    match = _ANSWER.search(answer)
    return int(match.group(1)) if match else None


def square_pad(size: tuple[int, int]) -> tuple[int, int, int]:
    """(side, top, left): LLaVA-1.5 pads an image to a centred square before resizing."""
    h, w = size
    side = max(h, w)
    return side, (side - h) // 2, (side - w) // 2


def pad_image(image: np.ndarray, fill: Sequence[int]) -> np.ndarray:
    side, top, left = square_pad(image.shape[:2])
    out = np.empty((side, side, 3), dtype=image.dtype)
    out[:] = np.asarray(fill, dtype=image.dtype)
    out[top : top + image.shape[0], left : left + image.shape[1]] = image
    return out


def pad_mask(mask: np.ndarray) -> np.ndarray:
    """A region mask placed as its image is in the padded square."""
    side, top, left = square_pad(mask.shape)
    out = np.zeros((side, side), dtype=np.float32)
    out[top : top + mask.shape[0], left : left + mask.shape[1]] = mask
    return out


def ensure_region_token(model, processor) -> None:
    """Give the tokenizer ``<region>`` and the model its id where a checkpoint lacks them (LLaVA's):
    the engine's loader and the training recipe both start here."""
    if model.config.region_token_index < 0 or REGION not in processor.tokenizer.get_vocab():
        processor.tokenizer.add_special_tokens({"additional_special_tokens": [REGION]})
        model.config.region_token_index = processor.tokenizer.convert_tokens_to_ids(REGION)
