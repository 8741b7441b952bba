"""RegionVLM backend on the tiny model: split stages equal transformers' own forward."""

from __future__ import annotations

import numpy as np
import pytest

from region_perception.engine import TaskError
from region_perception.engine.refer import refer_batched, refer_reference
from region_perception.geometry.regions import BoxRegion, MaskRegion, PointsRegion, RegionError
from region_perception.models.loading import tiny_path


@pytest.fixture(scope="module")
def model(tiny_engine):
    return tiny_engine.model


def test_tiny_model_is_loaded_from_disk_and_flagged(model):
    path = tiny_path("tiny-regionvlm")
    assert (path / "model.safetensors").exists() and (path / "RANDOM_WEIGHTS").exists()
    assert model.weights_random is True


def test_split_scoring_equals_full_forward(model, astronaut):
    feats = model.encode_image(astronaut)
    texts = ["[32 64] [36 62]", "[10 10] [20 20] [30 30] [40 40]", "", "[99 0]"]
    sentence = "the man in a white suit"
    batched = model.score_texts(feats, texts, sentence, batch_size=3)
    reference = np.array([model.reference_loss(astronaut, t, sentence) for t in texts])
    np.testing.assert_allclose(batched, reference, atol=1e-4)
    assert len(set(np.round(batched, 4))) > 1, "the region text must change the score"


def test_batched_refer_matches_reference_procedure(model, astronaut):
    """Encode once + batched rows == one full forward per proposal x draw (RegionVLM's eval)."""
    masks = []
    for y0, x0 in [(0, 0), (200, 100), (300, 300)]:
        m = np.zeros(astronaut.shape[:2], dtype=bool)
        m[y0 : y0 + 150, x0 : x0 + 150] = True
        masks.append(m)
    feats = model.encode_image(astronaut)
    sentence = "a rocket on the launch pad"
    ours = refer_batched(
        lambda cues: model.score_regions(feats, cues, sentence, batch_size=7),
        masks,
        points_per_draw=10,
        draws=5,
        seed=3,
    )
    ref = refer_reference(
        lambda cue: model.reference_loss(astronaut, cue.points_text, sentence),
        masks,
        points_per_draw=10,
        draws=5,
        seed=3,
    )
    assert ours.cues == ref.cues and len({c.points_text for c in ours.cues}) == 15
    np.testing.assert_allclose(ours.scores, ref.scores, atol=1e-4)
    assert ours.selected_index == ref.selected_index == int(np.argmin(ref.scores))
    assert ours.draw_losses.shape == (3, 5)
    np.testing.assert_allclose(ours.scores, ours.draw_losses.min(axis=1))


def test_caption_ask_classify_refer(tiny_engine, astronaut):
    cap = tiny_engine.caption(astronaut, [PointsRegion(np.array([[200.0, 100.0]]), name="face")])
    assert cap.weights_random and cap.outputs[0].name == "face" and cap.outputs[0].text
    assert {"vision_encode", "qformer", "generation"} <= set(cap.timings_ms) or "qformer" in cap.timings_ms
    ask = tiny_engine.ask(
        astronaut,
        [BoxRegion(np.array([0.0, 0.0, 100.0, 100.0])), BoxRegion(np.array([200.0, 200.0, 300.0, 300.0]))],
        "which is larger?",
    )
    assert len(ask.outputs) == 2 and ask.outputs[0].text == ask.outputs[1].text
    labels = ["person", "rocket", "flag"]
    cls = tiny_engine.classify(astronaut, [BoxRegion(np.array([100.0, 100.0, 300.0, 400.0]))], labels)
    out = cls.outputs[0]
    assert out.label in labels and sorted(out.labels) == sorted(labels)
    assert abs(sum(out.label_scores) - 1) < 1e-4 and out.label_scores == sorted(out.label_scores, reverse=True)
    ref = tiny_engine.refer(astronaut, "the flag on the arm")
    assert ref.selected_index == int(np.argmin(ref.candidate_scores))
    assert ref.outputs[0].mask.shape == astronaut.shape[:2]
    assert len(ref.candidate_boxes) == len(ref.candidate_scores) <= 20


def test_features_are_computed_once_per_frame(tiny_engine, astronaut):
    calls = []
    original = tiny_engine.model.encode_image

    def counting(image):
        calls.append(1)
        return original(image)

    tiny_engine.model.encode_image = counting
    try:
        region = [MaskRegion(np.pad(np.ones((50, 50), bool), ((10, 452), (10, 452))))]
        for _ in range(3):
            tiny_engine.caption(astronaut, region, frame_key="frame-A", max_new_tokens=3)
        tiny_engine.refer(astronaut, "the man", frame_key="frame-A")
        assert len(calls) == 1
        tiny_engine.caption(astronaut, region, frame_key="frame-B", max_new_tokens=3)
        assert len(calls) == 2
    finally:
        tiny_engine.model.encode_image = original


def test_cache_is_bounded(tiny_engine, astronaut):
    limit = tiny_engine.cache.max_frames
    for i in range(limit + 3):
        tiny_engine.caption(astronaut, [PointsRegion(np.array([[5.0, 5.0]]))], frame_key=f"f{i}", max_new_tokens=2)
    assert len(tiny_engine.cache) == limit


def test_bad_queries_raise_clear_errors(tiny_engine, astronaut):
    with pytest.raises(RegionError, match="outside"):
        tiny_engine.caption(astronaut, [BoxRegion(np.array([0.0, 0.0, 900.0, 10.0]))])
    with pytest.raises(TaskError, match="empty"):
        tiny_engine.refer(astronaut, "   ")
    with pytest.raises(TaskError, match="label"):
        tiny_engine.classify(astronaut, [PointsRegion(np.array([[5.0, 5.0]]))], [])
    with pytest.raises(ValueError, match="H x W x 3"):
        tiny_engine.caption(np.zeros((4, 4, 4), np.uint8), [PointsRegion(np.array([[1.0, 1.0]]))])


def test_engine_refer_equals_the_reference_procedure_and_reuses_rows(tiny_engine, astronaut):
    """The node's REFER path (encode once, rows cached per frame) vs one full forward per row."""
    rng = np.random.default_rng(5)
    masks = []
    for _ in range(4):
        y0, x0 = rng.integers(0, 300, size=2)
        m = np.zeros(astronaut.shape[:2], dtype=bool)
        m[y0 : y0 + 150, x0 : x0 + 150] = True
        masks.append(m)
    key = "refer-equivalence"
    tiny_engine.cache.put(key, "proposals", masks)  # as if the proposer had run on this frame
    cfg = tiny_engine.config
    for sentence in ("the woman in a white suit", "a rocket"):
        ours = tiny_engine.refer(astronaut, sentence, frame_key=key)
        ref = refer_reference(
            lambda cue, s=sentence: tiny_engine.model.reference_loss(astronaut, cue.points_text, s),
            masks,
            points_per_draw=cfg.points_per_region,
            draws=cfg.refer_draws,
            seed=cfg.seed,
        )
        np.testing.assert_allclose(ours.candidate_scores, ref.scores, atol=1e-4)
        assert ours.selected_index == ref.selected_index
        assert np.array_equal(ours.outputs[0].mask, masks[ref.selected_index])
    # the second sentence reused the rows: no Q-Former pass
    assert "qformer" not in ours.timings_ms and "lm_loss" in ours.timings_ms
