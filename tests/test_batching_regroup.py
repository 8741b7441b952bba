"""A burst whose first query reached the idle worker alone is regrouped into one batch.

The first query's run is given up (``engine.batch.Interrupted``) as soon as a query that could
share its engine call is queued; then all of them are answered by one call, each exactly
once. No test here depends on the machine's speed: the fake engine holds its call until the
test releases it (or tells it to give up), and the tests assert on which queries shared a call.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from region_perception.common.status import Status
from region_perception.engine.batch import BatchItem, Interrupted, check_interrupted, interruptible
from region_perception.geometry.regions import PointsRegion

from .test_batching import BatchingEngine, ask, by_id
from .test_query_processor import caption, frame, make, wait_for, wait_until

LONG = 30.0  # generous: a condition that holds at once on any machine


class GivingUp(BatchingEngine):
    """A single-query call held until the gate opens, asking (as the real engine does inside
    ``interruptible``) whether to give up while it waits; ``run_batch`` answers at once."""

    def __init__(self) -> None:
        super().__init__()
        self.given_up = 0
        self.alone = threading.Event()  # a single-query call is in progress

    def _work(self, name, image, key):
        self.entered += 1
        self.alone.set()
        try:
            while not self.gate.wait(0.005):
                check_interrupted()
        except Interrupted:
            self.given_up += 1
            raise
        finally:
            self.alone.clear()
        self.calls.append((name, key))
        return f"{name}:{key}"

    def run_batch(self, image, items, frame_key=None):
        self.batches.append(list(items))
        return [f"batch:{it.task}" for it in items]


def started(max_batch=8, **kw):
    engine = GivingUp()
    engine.gate.clear()
    proc, frames, outcomes = make(engine, queue_size=16, max_batch=max_batch, batch_settle_ms=0.0, **kw)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("first"))
    assert wait_until(lambda: engine.alone.is_set(), LONG), "the first query never started alone"
    return engine, proc, frames, outcomes


def test_a_query_that_can_join_the_run_alone_makes_it_regroup_into_one_batch():
    engine, proc, _, outcomes = started()
    proc.submit_group([caption("second"), caption("third")])
    got = by_id(wait_for(outcomes, 3, LONG))
    proc.stop()
    assert set(got) == {"first", "second", "third"}
    assert all(o.status == Status.OK for o in got.values())
    assert engine.given_up == 1 and proc.regrouped == 1 and engine.calls == []
    assert [[it.task for it in batch] for batch in engine.batches] == [["caption"] * 3]
    assert {o.batch_size for o in got.values()} == {3}
    assert got["first"].result == "batch:caption"


def test_a_query_on_another_frame_does_not_interrupt_the_run():
    engine, proc, frames, outcomes = started()
    frames.add(frame(2_000_000_000))  # stamp 0 now means this newer frame
    proc.submit(caption("other frame"))
    assert wait_until(lambda: proc.depth == 1, LONG)
    engine.gate.set()
    got = by_id(wait_for(outcomes, 2, LONG))
    proc.stop()
    assert engine.given_up == 0 and proc.regrouped == 0
    assert got["first"].batch_size == 1 and got["other frame"].batch_size == 1
    assert [name for name, _ in engine.calls] == ["caption", "caption"]


def test_different_generation_options_do_not_interrupt_the_run():
    engine, proc, _, outcomes = started()
    proc.submit(caption("longer", max_new_tokens=40))
    assert wait_until(lambda: proc.depth == 1, LONG)
    engine.gate.set()
    got = by_id(wait_for(outcomes, 2, LONG))
    proc.stop()
    assert engine.given_up == 0 and got["first"].batch_size == 1


def test_a_conversation_turn_is_never_given_up():
    engine = GivingUp()
    engine.gate.clear()
    proc, frames, outcomes = make(engine, queue_size=16, max_batch=8, batch_settle_ms=0.0)
    frames.add(frame(1))
    proc.start()
    proc.submit(ask("turn", conversation_id="c1"))
    assert wait_until(lambda: engine.alone.is_set(), LONG)
    proc.submit(caption("joiner"))
    assert wait_until(lambda: proc.depth == 1, LONG)
    engine.gate.set()
    got = by_id(wait_for(outcomes, 2, LONG))
    proc.stop()
    assert engine.given_up == 0 and proc.regrouped == 0
    assert got["turn"].status == Status.OK and got["turn"].batch_size == 1


def test_max_batch_one_runs_every_query_alone_without_interrupting():
    engine, proc, _, outcomes = started(max_batch=1)
    proc.submit(caption("second"))
    assert wait_until(lambda: proc.depth == 1, LONG)
    engine.gate.set()
    got = by_id(wait_for(outcomes, 2, LONG))
    proc.stop()
    assert engine.given_up == 0 and engine.batches == [] and got["second"].batch_size == 1


# -- the real engine: run_items gives up inside interruptible(), and leaves nothing behind ----------


@pytest.fixture(scope="module")
def engine():
    from region_perception.engine import EngineConfig, RegionEngine

    return RegionEngine.load(EngineConfig(model="tiny-regionvlm", segmenter="none", device="cpu", max_new_tokens=4))


def _point() -> list:
    return [PointsRegion(np.array([[40.0, 30.0]]), "p")]


def test_run_items_gives_up_before_reading_the_frame(engine):
    image = np.full((60, 80, 3), 90, np.uint8)
    hits, misses, size = engine.cache.hits, engine.cache.misses, len(engine.cache)
    with pytest.raises(Interrupted), interruptible(lambda: True):
        engine.caption(image, _point(), frame_key="regroup-entry")
    assert (engine.cache.hits, engine.cache.misses, len(engine.cache)) == (hits, misses, size)


@pytest.mark.parametrize("task", ["caption", "classify", "ask"])
def test_run_items_gives_up_while_the_language_model_runs_and_leaves_no_hook(engine, task):
    from region_perception.engine.batch import _language_models

    image = np.random.default_rng(3).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    asked = [0]

    def third_time() -> bool:  # entry and prepared are the first two: the third is a model forward
        asked[0] += 1
        return asked[0] >= 3

    item = {
        "caption": BatchItem("caption", _point()),
        "classify": BatchItem("classify", _point(), labels=["cup", "person"]),
        "ask": BatchItem("ask", _point(), "what is this?"),
    }[task]
    with pytest.raises(Interrupted), interruptible(third_time):
        engine.run_batch(image, [item], frame_key=f"regroup-{task}")
    assert asked[0] == 3
    assert _language_models(engine.model), "the tiny model's language model was not found"
    assert all(not m._forward_pre_hooks for m in _language_models(engine.model))
    # the same query answered afterwards is the answer a run that was never interrupted gives
    again = engine.run_batch(image, [item], frame_key=f"regroup-{task}")[0]
    fresh = engine.run_batch(image, [item], frame_key=f"regroup-{task}-fresh")[0]
    assert [o.text for o in again.outputs] == [o.text for o in fresh.outputs]
    assert [o.label for o in again.outputs] == [o.label for o in fresh.outputs]
