"""Multi-turn ASK: a conversation's second question is about its first question's region;
memory is bounded and expires; models without dialogue say they answered from one turn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from region_perception.engine.conversation import ConversationStore
from region_perception.geometry.regions import MaskRegion

torch.set_num_threads(1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_turns_and_conversations_are_bounded():
    store = ConversationStore(max_turns=2, max_conversations=2, idle_s=60, clock=FakeClock())
    for i in range(3):
        turn = store.begin("a", ["r"], (10, 10), dialogue=True)
        store.finish(turn, f"q{i}", f"a{i}", (10, 10))
    assert store.begin("a", [], (10, 10), dialogue=True).history == [("q1", "a1"), ("q2", "a2")]
    for cid in ("b", "c"):  # "a" is now the least recently used: forgotten
        store.finish(store.begin(cid, ["r"], (10, 10), dialogue=True), "q", "a", (10, 10))
    assert len(store) == 2
    fresh = store.begin("a", [], (10, 10), dialogue=True)
    assert fresh.history == [] and fresh.regions == [] and fresh.notes == []


def test_an_idle_conversation_expires_and_says_so_once():
    clock = FakeClock()
    store = ConversationStore(idle_s=30, clock=clock)
    store.finish(store.begin("x", ["region"], (10, 10), dialogue=True), "what is this?", "a cup", (10, 10))
    clock.now += 29
    kept = store.begin("x", [], (10, 10), dialogue=True)
    assert kept.regions == ["region"] and kept.history == [("what is this?", "a cup")]
    store.finish(kept, "what colour is it?", "red", (10, 10))
    clock.now += 31
    expired = store.begin("x", [], (10, 10), dialogue=True)
    assert expired.history == [] and expired.regions == []
    assert any("expired" in n and "answered as new" in n for n in expired.notes)
    assert store.begin("x", [], (10, 10), dialogue=True).notes == []


def test_a_model_without_dialogue_is_answered_from_this_turn_and_says_so():
    store = ConversationStore()
    store.finish(store.begin("x", ["r"], (10, 10), dialogue=True), "q", "a", (10, 10))
    turn = store.begin("x", [], (10, 10), dialogue=False)
    assert turn.history == [] and turn.regions == [] and "this turn only" in turn.notes[0]
    assert store.begin("", [], (10, 10), dialogue=True).notes == []  # no conversation asked for
    with pytest.raises(ValueError):
        ConversationStore(idle_s=0)


def test_another_image_size_drops_the_old_regions():
    store = ConversationStore()
    store.finish(store.begin("x", ["r"], (10, 10), dialogue=True), "q", "a", (10, 10))
    turn = store.begin("x", [], (20, 20), dialogue=True)
    assert turn.regions == [] and "size changed" in turn.notes[0]


@pytest.fixture(scope="module")
def engine():
    from region_perception.engine import EngineConfig, RegionEngine

    return RegionEngine.load(EngineConfig(model="tiny-regiongpt", segmenter="none", device="cpu"))


def _l_shape() -> np.ndarray:
    m = np.zeros((96, 128), dtype=bool)
    m[10:80, 10:30] = True
    m[60:80, 10:100] = True
    return m


def test_the_second_question_is_about_the_first_questions_region(engine):
    image = np.full((96, 128, 3), 120, dtype=np.uint8)
    calls = []
    describe = engine.model.describe

    def spy(*args, **kwargs):
        calls.append(kwargs.get("history", ()))
        return describe(*args, **kwargs)

    engine.model.describe = spy
    clock = FakeClock()
    engine.conversations.clock = clock
    try:
        first = engine.ask(
            image, [MaskRegion(_l_shape())], "what is this?", conversation_id="robot-1", max_new_tokens=4
        )
        second = engine.ask(image, [], "what colour is it?", conversation_id="robot-1", max_new_tokens=4)
        np.testing.assert_array_equal(second.outputs[0].mask, _l_shape())  # the first question's region
        assert calls[1] == [("what is this?", first.outputs[0].text)]
        other = engine.ask(image, [], "what colour is it?", conversation_id="robot-2", max_new_tokens=4)
        assert other.outputs[0].mask.all() and calls[2] == ()  # another conversation: the whole image
        clock.now += engine.config.conversation_idle_s + 1
        late = engine.ask(image, [], "and its size?", conversation_id="robot-1", max_new_tokens=4)
        assert late.outputs[0].mask.all() and calls[3] == ()
        assert any("expired" in n for n in late.notes)
    finally:
        engine.model.describe = describe


def test_a_regionvlm_model_answers_from_the_last_turn_and_says_so(tiny_engine):
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:30, 10:30] = True
    first = tiny_engine.ask(image, [MaskRegion(mask)], "what is this?", conversation_id="c", max_new_tokens=3)
    second = tiny_engine.ask(image, [], "what colour?", conversation_id="c", max_new_tokens=3)
    assert any("this turn only" in n for n in first.notes + second.notes)
    assert second.outputs[0].mask.all()
