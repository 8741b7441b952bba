"""RegionVLM's region text, exactly as its released code writes it."""

import re

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from region_perception.geometry.region_text import multi_region_prompt, points_to_text


def test_paper_example_truncates():
    assert points_to_text([[0.324, 0.643], [0.365, 0.622]]) == "[32 64] [36 62]"


def test_rounding_is_an_option():
    assert points_to_text([[0.324, 0.643], [0.365, 0.622]], rounding="round") == "[32 64] [37 62]"


def test_empty_region_is_whole_image():
    assert points_to_text([]) == ""
    assert points_to_text(np.zeros((0, 2))) == ""


def test_bad_rounding_is_refused():
    import pytest

    with pytest.raises(ValueError, match="rounding"):
        points_to_text([[0.1, 0.2]], rounding="ceil")


@given(st.lists(st.tuples(st.floats(0, 0.9999), st.floats(0, 0.9999)), min_size=1, max_size=12))
def test_format_is_bracketed_int_pairs(points):
    text = points_to_text(points)
    pairs = re.findall(r"\[(\d+) (\d+)\]", text)
    assert len(pairs) == len(points)
    assert text == " ".join(f"[{x} {y}]" for x, y in pairs)
    assert all(0 <= int(v) <= 99 for pair in pairs for v in pair)


def test_multi_region_prompt_pieces():
    assert multi_region_prompt(2, "what is between them?") == ["[0]:", "[1]:", "what is between them?"]
