"""Florence-2 backend on the tiny model: location tokens, polygons, scoring, both REFER routes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from region_perception.engine import EngineConfig, RegionEngine, TaskError
from region_perception.geometry.regions import BoxRegion, PointsRegion
from region_perception.models.backend import RegionCue
from region_perception.models.florence2 import box_to_location_tokens, location_tokens_to_box, polygons_to_mask
from region_perception.models.loading import tiny_path


@pytest.fixture(scope="module")
def engine():
    return RegionEngine.load(EngineConfig(model="tiny-florence2", segmenter="none", device="cpu"))


@settings(max_examples=100, deadline=None)
@given(
    st.integers(16, 4000),
    st.integers(16, 4000),
    st.floats(0, 0.98),
    st.floats(0, 0.98),
    st.floats(0.01, 1.0),
    st.floats(0.01, 1.0),
)
def test_location_tokens_round_trip_within_one_bin(engine, w, h, fx0, fy0, fw, fh):
    proc = engine.model.processor
    x0, y0 = fx0 * w, fy0 * h
    x1, y1 = min(w, x0 + fw * (w - x0)), min(h, y0 + fh * (h - y0))
    tokens = box_to_location_tokens(proc, (x0, y0, x1, y1), (h, w))
    assert tokens.count("<loc_") == 4
    back = location_tokens_to_box(proc, tokens, (h, w))
    bin_w, bin_h = w / 1000, h / 1000
    for got, want, size in zip(back, (x0, y0, x1, y1), (bin_w, bin_h, bin_w, bin_h), strict=True):
        assert abs(got - want) <= size + 1.0  # one bin, plus the integer rounding of the dequantizer


def test_polygon_to_mask_has_the_image_size():
    mask = polygons_to_mask([[10, 10, 60, 10, 60, 40, 10, 40]], (50, 80))
    assert mask.shape == (50, 80) and mask.dtype == bool
    assert mask[20, 30] and not mask[45, 70]
    assert 1400 <= mask.sum() <= 1600  # the 50 x 30 rectangle, edges included
    assert not polygons_to_mask([[1, 1, 2, 2]], (5, 5)).any(), "fewer than 3 points is no area"


def test_tiny_model_is_flagged_and_loaded_from_disk(engine):
    assert (tiny_path("tiny-florence2") / "RANDOM_WEIGHTS").exists()
    assert engine.model.weights_random and engine.weights_random


def test_split_scoring_equals_the_full_forward(engine, astronaut):
    model = engine.model
    feats = model.encode_image(astronaut)
    cues = [RegionCue("", (0.1, 0.2, 0.5, 0.7)), RegionCue("", (0.0, 0.0, 1.0, 1.0))]
    ours = model.score_regions(feats, cues, ["a man in a suit", "the flag"])
    for cue, text, loss in zip(cues, ["a man in a suit", "the flag"], ours, strict=True):
        box = [cue.box_norm[0] * 512, cue.box_norm[1] * 512, cue.box_norm[2] * 512, cue.box_norm[3] * 512]
        inputs = model.processor(
            text="<REGION_TO_DESCRIPTION>" + box_to_location_tokens(model.processor, box, (512, 512)),
            images=astronaut,
            return_tensors="pt",
        )
        labels = model.tokenizer([text], return_tensors="pt").input_ids
        with torch.inference_mode():
            ref = float(model.model(**inputs, labels=labels).loss)
        assert abs(loss - ref) < 1e-4


def test_tasks_and_both_refer_routes(engine, astronaut):
    cap = engine.caption(astronaut, [BoxRegion(np.array([100.0, 200.0, 300.0, 500.0]))])
    assert cap.model == "tiny-florence2" and cap.weights_random and isinstance(cap.outputs[0].text, str)
    by_proposals = engine.refer(astronaut, "the helmet", route="proposals")
    assert by_proposals.selected_index == int(np.argmin(by_proposals.candidate_scores))
    assert len(by_proposals.candidate_scores) >= 1
    native = engine.refer(astronaut, "the helmet", route="native")
    assert native.outputs[0].mask.shape == astronaut.shape[:2]
    with pytest.raises(TaskError, match="does not answer free questions"):
        engine.ask(astronaut, [], "what is this?")


@settings(max_examples=8, deadline=None)
@given(
    st.lists(
        st.sampled_from(["cat", "dog", "rocket", "person", "cup", "flag", "sky", "sofa"]),
        min_size=1,
        max_size=5,
        unique=True,
    ),
    st.booleans(),
)
def test_classify_answers_only_from_the_labels_for_both_backends(engine, tiny_engine, astronaut, labels, rank):
    for eng in (engine, tiny_engine):
        result = eng.classify(
            astronaut, [PointsRegion(np.array([[200.0, 150.0]]))], labels, rank=rank, frame_key="classify-frame"
        )
        out = result.outputs[0]
        assert out.label in labels and sorted(out.labels) == sorted(labels)
        assert abs(sum(out.label_scores) - 1) < 1e-4
