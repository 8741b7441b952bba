"""The node's logic without ROS: frames, queue, deadlines, faults — one outcome per query."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from region_perception.engine import TaskError
from region_perception.frame_buffer import Frame, FrameBuffer, FrameLookupError
from region_perception.query_processor import QueryProcessor, QuerySpec
from region_perception.regions import PointsRegion, RegionError
from region_perception.status import Status, Task

IMAGE = np.zeros((20, 30, 3), dtype=np.uint8)


def frame(stamp_ns: int, image=IMAGE) -> Frame:
    return Frame(stamp_ns, "cam", image, lambda raw: raw)


class FakeEngine:
    """Answers instantly (or slowly, or by failing) and records what it was asked."""

    def __init__(self, delay: float = 0.0, fail_every: int = 0, failure: str = "driver fault (injected)") -> None:
        self.delay, self.fail_every, self.calls, self.failure, self.freed = delay, fail_every, [], failure, 0
        self.gate = threading.Event()
        self.gate.set()

    def _work(self, name, image, key):
        self.gate.wait()
        self.calls.append((name, key))
        time.sleep(self.delay)
        if self.fail_every and len(self.calls) % self.fail_every == 0:
            raise RuntimeError(self.failure)
        return f"{name}:{key}"

    def free_memory(self):
        self.freed += 1

    def caption(self, image, regions, frame_key=None, **kw):
        if not regions:
            raise RegionError("caption needs at least one region")
        return self._work("caption", image, frame_key)

    def ask(self, image, regions, text, frame_key=None, **kw):
        return self._work("ask", image, frame_key)

    def classify(self, image, regions, labels, frame_key=None, **kw):
        if not labels:
            raise TaskError("classify needs at least one candidate label")
        return self._work("classify", image, frame_key)

    def refer(self, image, text, frame_key=None):
        return self._work("refer", image, frame_key)


def make(engine=None, queue_size=8, **kw):
    outcomes = []
    frames = FrameBuffer(capacity=3, tolerance_s=0.01)
    proc = QueryProcessor(engine or FakeEngine(), frames, outcomes.append, queue_size=queue_size, **kw)
    return proc, frames, outcomes


def wait_for(outcomes, n, timeout=10.0):
    end = time.monotonic() + timeout
    while len(outcomes) < n and time.monotonic() < end:
        time.sleep(0.01)
    return outcomes


def caption(qid, stamp=0, **kw):
    return QuerySpec(
        query_id=qid, task=Task.CAPTION, stamp_ns=stamp, regions=[PointsRegion(np.array([[1.0, 1.0]]))], **kw
    )


def test_frame_buffer_lookup():
    buf = FrameBuffer(capacity=3, tolerance_s=0.01)
    with pytest.raises(FrameLookupError) as err:
        buf.find(0)
    assert err.value.no_frame
    for t in (100_000_000, 200_000_000, 300_000_000, 400_000_000):
        buf.add(frame(t))
    assert buf.find(0).stamp_ns == 400_000_000 and buf.evicted == 1
    assert buf.find(305_000_000).stamp_ns == 300_000_000
    with pytest.raises(FrameLookupError, match="older than") as err:
        buf.find(100_000_000)
    assert not err.value.no_frame and not err.value.not_yet
    with pytest.raises(FrameLookupError, match="newer than") as err:
        buf.find(900_000_000)
    assert err.value.not_yet


def test_queries_answer_on_their_own_frame():
    proc, frames, outcomes = make()
    for t in (1_000_000_000, 2_000_000_000):
        frames.add(frame(t))
    proc.start()
    proc.submit(caption("a", 1_000_000_000))
    proc.submit(caption("b", 0))
    wait_for(outcomes, 2)
    proc.stop()
    by_id = {o.query_id: o for o in outcomes}
    assert by_id["a"].status == Status.OK and by_id["a"].frame.stamp_ns == 1_000_000_000
    assert by_id["b"].frame.stamp_ns == 2_000_000_000
    assert by_id["a"].result == "caption:cam@1000000000"


def test_no_frame_and_expired_frame_are_errors_with_reasons():
    proc, frames, outcomes = make()
    proc.start()
    proc.submit(caption("early"))
    frames.add(frame(5_000_000_000))
    proc.submit(caption("old", 1_000_000_000))
    wait_for(outcomes, 2)
    proc.stop()
    assert [o.status for o in outcomes] == [Status.NO_FRAME, Status.FRAME_EXPIRED]
    assert "no camera frame" in outcomes[0].error and "older than" in outcomes[1].error


def test_a_query_that_overtakes_its_frame_waits_for_it():
    proc, frames, outcomes = make(frame_wait_s=2.0)
    frames.add(frame(1_000_000_000))
    proc.start()
    proc.submit(caption("soon", 2_000_000_000))
    time.sleep(0.1)
    assert outcomes == []
    frames.add(frame(2_000_000_000))
    proc.frame_arrived()
    wait_for(outcomes, 1)
    proc.stop()
    assert outcomes[0].status == Status.OK and outcomes[0].frame.stamp_ns == 2_000_000_000


def test_queue_full_is_answered_at_once_and_nothing_is_lost():
    engine = FakeEngine()
    engine.gate.clear()  # hold the worker: the queue fills
    proc, frames, outcomes = make(engine, queue_size=2)
    frames.add(frame(1))
    proc.start()
    for i in range(10):
        proc.submit(caption(f"q{i}"))
    time.sleep(0.1)
    full = [o for o in outcomes if o.status == Status.QUEUE_FULL]
    assert len(full) >= 7 and all("retry later" in o.error for o in full)
    engine.gate.set()
    wait_for(outcomes, 10)
    proc.stop()
    assert sorted(o.query_id for o in outcomes) == sorted(f"q{i}" for i in range(10))


def test_deadline_gives_timeout():
    engine = FakeEngine(delay=0.3)
    proc, frames, outcomes = make(engine)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("slow"))
    proc.submit(caption("late", timeout_s=0.05))
    time.sleep(0.15)
    proc.expire_overdue()
    wait_for(outcomes, 2)
    proc.stop()
    by_id = {o.query_id: o for o in outcomes}
    assert by_id["late"].status == Status.TIMEOUT and "deadline" in by_id["late"].error
    assert by_id["slow"].status == Status.OK
    assert len(outcomes) == 2


def test_model_faults_become_model_error_and_the_worker_survives():
    proc, frames, outcomes = make(FakeEngine(fail_every=3), queue_size=16)
    frames.add(frame(1))
    proc.start()
    for i in range(9):
        proc.submit(caption(f"q{i}"))
    wait_for(outcomes, 9)
    proc.stop()
    statuses = [o.status for o in sorted(outcomes, key=lambda o: int(o.query_id[1:]))]
    assert statuses == [Status.OK, Status.OK, Status.MODEL_ERROR] * 3
    assert "driver fault" in outcomes[2].error


def test_out_of_memory_frees_cached_features_and_retries_once():
    engine = FakeEngine(fail_every=2, failure="CUDA out of memory. Tried to allocate 2.00 GiB")
    proc, frames, outcomes = make(engine)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("first"))  # call 1 ok
    proc.submit(caption("second"))  # call 2 OOM -> freed -> call 3 ok
    wait_for(outcomes, 2)
    assert [o.status for o in outcomes] == [Status.OK, Status.OK] and engine.freed == 1
    engine.fail_every = 1  # now every call runs out of memory
    proc.submit(caption("third"))
    wait_for(outcomes, 3)
    proc.stop()
    assert outcomes[2].status == Status.MODEL_ERROR and "also after freeing" in outcomes[2].error


def test_duplicate_query_ids_are_refused_while_pending_and_reusable_after():
    engine = FakeEngine()
    engine.gate.clear()
    proc, frames, outcomes = make(engine)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("same"))
    proc.submit(caption("same"))
    time.sleep(0.05)
    assert len(outcomes) == 1 and outcomes[0].status == Status.INVALID_QUERY and "already pending" in outcomes[0].error
    engine.gate.set()
    wait_for(outcomes, 2)
    assert outcomes[1].status == Status.OK
    proc.submit(caption("same"))  # answered: the id is free again
    wait_for(outcomes, 3)
    proc.stop()
    assert outcomes[2].status == Status.OK


def test_invalid_queries():
    proc, frames, outcomes = make()
    frames.add(frame(1))
    proc.start()
    proc.submit(QuerySpec(query_id="task", task=9))
    proc.submit(QuerySpec(query_id="noregion", task=Task.CAPTION))
    proc.submit(QuerySpec(query_id="nolabels", task=Task.CLASSIFY, regions=[PointsRegion(np.ones((1, 2)))]))
    proc.submit(QuerySpec(task=Task.REFER, text="x"))
    wait_for(outcomes, 4)
    proc.stop()
    by_id = {o.query_id: o for o in outcomes}
    assert by_id["task"].status == Status.INVALID_QUERY and "unknown task 9" in by_id["task"].error
    assert by_id["noregion"].status == Status.INVALID_QUERY
    assert by_id["nolabels"].status == Status.INVALID_QUERY
    assert any(q.startswith("auto-") for q in by_id), "a query without an id gets one"


def test_bad_frame_is_bad_image():
    proc, frames, outcomes = make()

    def broken(raw):
        raise ValueError("unknown image encoding 'yuv422'")

    frames.add(Frame(1, "cam", None, broken))
    proc.start()
    proc.submit(caption("x"))
    wait_for(outcomes, 1)
    proc.stop()
    assert outcomes[0].status == Status.BAD_IMAGE and "yuv422" in outcomes[0].error


def test_shutdown_answers_pending_queries():
    engine = FakeEngine()
    engine.gate.clear()
    proc, frames, outcomes = make(engine, queue_size=5)
    frames.add(frame(1))
    proc.start()
    for i in range(4):
        proc.submit(caption(f"q{i}"))
    time.sleep(0.05)
    threading.Timer(0.2, engine.gate.set).start()
    proc.stop()
    proc.submit(caption("after"))
    wait_for(outcomes, 5)
    assert len(outcomes) == 5
    assert sum(o.status == Status.SHUTTING_DOWN for o in outcomes) >= 4


def test_real_engine_through_the_processor(tiny_engine, astronaut):
    proc, frames, outcomes = make(tiny_engine)
    frames.add(frame(7, astronaut))
    proc.start()
    proc.submit(QuerySpec(query_id="r", task=Task.REFER, text="the flag"))
    proc.submit(
        QuerySpec(
            query_id="c",
            task=Task.CLASSIFY,
            regions=[PointsRegion(np.array([[100.0, 100.0]]))],
            labels=["person", "flag"],
        )
    )
    wait_for(outcomes, 2, timeout=60)
    proc.stop()
    by_id = {o.query_id: o for o in outcomes}
    assert by_id["r"].status == Status.OK and by_id["r"].result.selected_index >= 0
    assert by_id["c"].result.outputs[0].label in {"person", "flag"}
