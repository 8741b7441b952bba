"""Cross-query batching: queued queries on one frame share one engine call, each answered once."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from region_perception.common.status import Status, Task
from region_perception.engine.batch import BatchItem, sentence_losses
from region_perception.geometry.regions import PointsRegion, RegionError
from region_perception.service.query_processor import QuerySpec

from .test_query_processor import FakeEngine, caption, frame, make, wait_for


class BatchingEngine(FakeEngine):
    """FakeEngine with ``run_batch``: records each batch; a query with text "boom" is a model fault."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[BatchItem]] = []
        self.busy = threading.Event()  # set once the worker is inside a call (FakeEngine.entered counts)

    def _work(self, name, image, key):
        self.busy.set()
        return super()._work(name, image, key)

    def ask(self, image, regions, text, frame_key=None, **kw):
        if text == "boom":
            raise RuntimeError("driver fault on this query")
        return self._work("ask", image, frame_key)

    def run_batch(self, image, items, frame_key=None):
        self.busy.set()
        self.gate.wait()
        self.batches.append(list(items))
        if any(it.text == "boom" for it in items):
            raise RuntimeError("driver fault in the batch")
        return [RegionError("the point is outside the image") if _outside(it) else f"batch:{it.task}" for it in items]


def _outside(item: BatchItem) -> bool:
    """A query only the engine can refuse (intake checks pass): a region named "outside"."""
    return any(r.name == "outside" for r in item.regions)


def ask(qid, text="what?", stamp=0, **kw):
    return QuerySpec(
        query_id=qid, task=Task.ASK, stamp_ns=stamp, regions=[PointsRegion(np.array([[1.0, 1.0]]))], text=text, **kw
    )


def held(max_batch=8, queue_size=16):
    """A processor whose worker is busy with a first query until ``engine.gate`` is set."""
    engine = BatchingEngine()
    proc, frames, outcomes = make(engine, queue_size=queue_size, max_batch=max_batch)
    frames.add(frame(1))
    engine.gate.clear()
    proc.start()
    proc.submit(caption("first"))
    assert engine.busy.wait(10), "the worker never started the first query"
    return engine, proc, frames, outcomes


def by_id(outcomes):
    ids = [o.query_id for o in outcomes]
    assert len(ids) == len(set(ids)), f"a query was answered twice: {ids}"
    return {o.query_id: o for o in outcomes}


def test_queued_queries_on_one_frame_are_answered_by_one_engine_call():
    engine, proc, _, outcomes = held()
    for i in range(5):
        proc.submit(caption(f"q{i}"))
    engine.gate.set()
    wait_for(outcomes, 6)
    proc.stop()
    got = by_id(outcomes)
    assert len(got) == 6 and all(o.status == Status.OK for o in got.values())
    assert [len(b) for b in engine.batches] == [5], "the five waiting queries should form one batch"
    assert all(got[f"q{i}"].batch_size == 5 and got[f"q{i}"].result == "batch:caption" for i in range(5))
    assert got["first"].batch_size == 1
    assert len({got[f"q{i}"].inference_ms for i in range(5)}) == 1  # the batch's inference time


def test_a_failing_batch_is_retried_one_by_one_and_only_the_faulty_query_fails():
    engine, proc, _, outcomes = held()
    proc.submit(ask("a"))
    proc.submit(ask("bad", text="boom"))
    proc.submit(caption("c"))
    engine.gate.set()
    wait_for(outcomes, 4)
    proc.stop()
    got = by_id(outcomes)
    assert len(got) == 4
    assert got["bad"].status == Status.MODEL_ERROR and "driver fault on this query" in got["bad"].error
    assert got["a"].status == Status.OK and got["c"].status == Status.OK
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 3  # tried as a batch first


def test_a_query_error_stays_with_its_query():
    engine, proc, _, outcomes = held()
    proc.submit(caption("ok"))
    outside = PointsRegion(np.array([[1.0, 1.0]]), "outside")  # valid at intake: only the engine refuses it
    proc.submit(QuerySpec(query_id="outside", task=Task.CAPTION, regions=[outside]))
    engine.gate.set()
    wait_for(outcomes, 3)
    proc.stop()
    got = by_id(outcomes)
    assert len(engine.batches) == 1 and len(engine.batches[0]) == 2  # it reached the batch, not refused at intake
    assert got["outside"].status == Status.INVALID_QUERY and "outside the image" in got["outside"].error
    assert got["ok"].status == Status.OK and got["ok"].batch_size == 2


def test_differing_generation_options_split_a_batch():
    engine, proc, _, outcomes = held()
    proc.submit(caption("short1", max_new_tokens=5))
    proc.submit(caption("long", max_new_tokens=20))
    proc.submit(caption("short2", max_new_tokens=5))
    proc.submit(
        QuerySpec(query_id="cls", task=Task.CLASSIFY, regions=[PointsRegion(np.array([[1.0, 1.0]]))], labels=["a"])
    )
    engine.gate.set()
    wait_for(outcomes, 5)
    proc.stop()
    assert len(by_id(outcomes)) == 5
    for batch in engine.batches:
        assert len({it.generation_options() for it in batch if it.task in ("caption", "ask")}) <= 1
    sizes = sorted(len(b) for b in engine.batches)
    assert sizes == [3], f"short1, short2 and the CLASSIFY share a call; 'long' runs alone: {sizes}"
    assert by_id(outcomes)["long"].batch_size == 1


def test_queries_on_other_frames_and_past_max_batch_wait_for_their_own_call():
    engine, proc, frames, outcomes = held(max_batch=3)
    frames.add(frame(2_000_000_000))
    for i in range(4):
        proc.submit(caption(f"f1-{i}", stamp=1))
    proc.submit(caption("f2", stamp=2_000_000_000))
    engine.gate.set()
    wait_for(outcomes, 6)
    proc.stop()
    got = by_id(outcomes)
    assert len(got) == 6 and all(o.status == Status.OK for o in got.values())
    assert [len(b) for b in engine.batches] == [3], engine.batches  # f1-0..2; then f1-3 and f2 alone
    assert got["f2"].batch_size == 1 and got["f1-3"].batch_size == 1


def test_each_query_keeps_its_own_deadline():
    engine, proc, _, outcomes = held()
    proc.submit(caption("patient"))
    proc.submit(caption("hurried", timeout_s=0.05))
    end = time.monotonic() + 10
    while not outcomes and time.monotonic() < end:  # waits on the condition, not on a duration
        proc.expire_overdue()
        time.sleep(0.01)
    engine.gate.set()
    wait_for(outcomes, 3)
    proc.stop()
    got = by_id(outcomes)
    assert got["hurried"].status == Status.TIMEOUT and got["patient"].status == Status.OK


def test_max_batch_one_turns_batching_off():
    engine, proc, _, outcomes = held(max_batch=1)
    for i in range(3):
        proc.submit(caption(f"q{i}"))
    engine.gate.set()
    wait_for(outcomes, 4)
    proc.stop()
    assert not engine.batches and all(o.batch_size == 1 for o in outcomes) and len(by_id(outcomes)) == 4


# -- the real engine: a batch answers exactly what the queries would get alone ---------------------------


def _alone(engine, image, item, key):
    if item.task == "caption":
        return engine.caption(image, item.regions, frame_key=key, max_new_tokens=item.max_new_tokens)
    if item.task == "ask":
        return engine.ask(image, item.regions, item.text, frame_key=key)
    if item.task == "classify":
        return engine.classify(image, item.regions, item.labels, frame_key=key, rank=item.rank)
    return engine.refer(image, item.text, frame_key=key)


def _items(w: int, h: int, questions: bool) -> list[BatchItem]:
    regions = [PointsRegion(np.array([[w * (i + 1) / 6, h / 2]])) for i in range(4)]
    items = [
        BatchItem("caption", regions=[regions[0]]),
        BatchItem("caption", regions=regions[1:3]),
        BatchItem("caption", regions=[regions[3]], max_new_tokens=4),
        BatchItem("classify", regions=[regions[0]], labels=["person", "rocket", "flag"]),
        BatchItem("classify", regions=regions[1:3], labels=["helmet", "sky"], rank=True),
        BatchItem("refer", text="the white helmet"),
        BatchItem("refer", text="the woman on the left"),
        BatchItem("caption", regions=[]),
    ]
    if questions:
        items += [BatchItem("ask", regions=regions[:2], text="what is between them?"), BatchItem("ask", text="where?")]
    return items


@pytest.fixture(scope="module")
def florence_engine():
    from region_perception.engine import EngineConfig, RegionEngine

    return RegionEngine.load(EngineConfig(model="tiny-florence2", segmenter="none", device="cpu"))


@pytest.mark.parametrize("which", ["tiny_engine", "florence_engine"])
def test_run_batch_equals_each_query_alone(which, request, astronaut):
    engine = request.getfixturevalue(which)
    h, w = astronaut.shape[:2]
    items = _items(w, h, questions=engine.model.answers_questions)
    results = engine.run_batch(astronaut, items, frame_key=f"batch-{which}")
    assert isinstance(results[7], RegionError)
    for item, got in zip(items, results, strict=True):
        if item.task == "caption" and not item.regions:
            continue
        alone = _alone(engine, astronaut, item, f"batch-{which}")
        assert [(o.text, o.label, o.labels, o.label_scores) for o in got.outputs] == [
            (o.text, o.label, o.labels, o.label_scores) for o in alone.outputs
        ], item
        assert got.selected_index == alone.selected_index
        np.testing.assert_allclose(got.candidate_scores, alone.candidate_scores, atol=1e-4)
        assert got.weights_random and got.notes == alone.notes


def test_several_sentences_share_decoder_calls_with_the_losses_each_gets_alone(tiny_engine, astronaut):
    engine = tiny_engine
    key = "batch-sentences"
    feats = engine._features(key, astronaut, engine_timings())
    _, cues, encoded, _ = engine._refer_rows(astronaut, key, feats, engine_timings())
    sentences = ["the helmet", "a flag on the wall", "the left arm of the woman"]
    calls = []
    original = engine.model.rows_loss

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    engine.model.rows_loss = counting
    try:
        together = sentence_losses(engine.model, encoded, sentences, row_budget=10_000)
    finally:
        del engine.model.rows_loss
    assert len(calls) == 1
    for sentence, losses in zip(sentences, together, strict=True):
        alone = original(encoded, [sentence] * len(cues))
        np.testing.assert_allclose(losses, alone, atol=1e-4)


def engine_timings():
    from region_perception.common.timing import Timings

    return Timings()


def test_refer_bound_is_vision_plus_row_over_row_from_the_same_runs_timings():
    from region_perception.bench import Figure
    from region_perception.bench.batching import refer_bound

    timings = {"vision_encode": 300.0, "qformer": 8000.0, "lm_encode": 1000.0, "lm_loss": 1000.0, "generation": 9e9}
    detail = {"ours_timings_ms": timings, "rows": 100, "reference_s": 50.0}
    refer = Figure("refer_speedup_vs_reference", 4.0, "x", detail=detail)
    got = refer_bound(refer)
    per_row = (8000.0 + 1000.0 + 1000.0) / 100  # 100 ms: the stages every row pays, not generation
    assert got.detail["bound"] == pytest.approx((300.0 + per_row) / per_row, abs=0.01)  # 4.0
    assert got.value == pytest.approx(4.0 / 4.0, abs=0.01) and got.met
    assert got.detail["reference_row_ms"] == 500.0
    assert not refer_bound(Figure("r", 3.0, "x", detail=refer.detail)).met  # 0.75 of the bound
