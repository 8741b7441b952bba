"""The node's logic without ROS: frames, queue, deadlines, faults — one outcome per query."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from region_perception.common.status import Status, Task
from region_perception.engine import TaskError
from region_perception.geometry.regions import PointsRegion, RegionError
from region_perception.service.frame_buffer import Frame, FrameBuffer, FrameLookupError
from region_perception.service.query_processor import QueryProcessor, QuerySpec

from .helpers.waiting import wait_until

IMAGE = np.zeros((20, 30, 3), dtype=np.uint8)


def frame(stamp_ns: int, image=IMAGE) -> Frame:
    return Frame(stamp_ns, "cam", image, lambda raw: raw)


class FakeEngine:
    """Answers at once (or by failing, or when its gate opens) and records what it was asked.

    ``gate`` cleared holds every call (the worker is then surely busy); ``entered`` counts
    the calls that reached the engine, so a test waits for "the worker is inside a call"
    instead of sleeping. Like ``hold_model_s``, the processor's ``stop`` opens the gate.
    """

    def __init__(self, fail_every: int = 0, failure: str = "driver fault (injected)") -> None:
        self.fail_every, self.calls, self.failure, self.freed = fail_every, [], failure, 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = 0

    def _work(self, name, image, key):
        self.entered += 1
        self.gate.wait()
        self.calls.append((name, key))
        if self.fail_every and len(self.calls) % self.fail_every == 0:
            raise RuntimeError(self.failure)
        return f"{name}:{key}"

    def release_holds(self):
        self.gate.set()

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


def wait_for(outcomes, n, timeout=30.0):
    wait_until(lambda: len(outcomes) >= n, timeout)
    return outcomes


def busy(engine: FakeEngine, calls: int = 1) -> None:
    """Until the worker is inside its ``calls``-th engine call (held there by the cleared gate)."""
    assert wait_until(lambda: engine.entered >= calls), "the worker never reached the engine"


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
    assert outcomes == [] and len(proc._awaiting) == 1  # submit decided at once: it waits for its frame
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
    proc.submit(caption("q0"))
    busy(engine)  # q0 is in the worker: two more fit in the queue, seven are refused
    for i in range(1, 10):
        proc.submit(caption(f"q{i}"))
    full = [o for o in outcomes if o.status == Status.QUEUE_FULL]  # answered within submit, at once
    assert [o.query_id for o in full] == [f"q{i}" for i in range(3, 10)]
    assert all("retry later" in o.error for o in full)
    engine.gate.set()
    wait_for(outcomes, 10)
    proc.stop()
    assert sorted(o.query_id for o in outcomes) == sorted(f"q{i}" for i in range(10))


def test_deadline_gives_timeout():
    engine = FakeEngine()
    engine.gate.clear()  # "slow" holds the worker until the test opens the gate
    proc, frames, outcomes = make(engine)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("slow"))
    busy(engine)
    proc.submit(caption("late", timeout_s=0.05))
    assert wait_until(lambda: proc.expire_overdue() == 1 or bool(outcomes)), "the deadline never passed"
    assert [o.query_id for o in outcomes] == ["late"], "answered while the worker was still busy"
    engine.gate.set()
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
    proc.submit(caption("same"))  # refused within submit, at once
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


def test_malformed_queries_are_refused_at_once_while_the_worker_is_busy():
    engine = FakeEngine()
    engine.gate.clear()
    proc, frames, outcomes = make(engine)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("busy"))
    busy(engine)
    for spec in (
        QuerySpec(query_id="noregion", task=Task.CAPTION),
        QuerySpec(query_id="nolabels", task=Task.CLASSIFY, regions=[PointsRegion(np.ones((1, 2)))], labels=[" "]),
        QuerySpec(query_id="notext", task=Task.REFER, text="  "),
        QuerySpec(query_id="noquestion", task=Task.ASK),
    ):
        proc.submit(spec)
    # answered within submit, though the only worker is held
    assert {o.query_id: o.status for o in outcomes} == dict.fromkeys(
        ["noregion", "nolabels", "notext", "noquestion"], Status.INVALID_QUERY
    )
    assert "at least one region" in outcomes[0].error and "empty" in outcomes[3].error
    proc.stop()
    assert outcomes[-1].query_id == "busy" and outcomes[-1].status == Status.OK
    assert engine.calls == [("caption", "cam@1")], "no malformed query reached the engine"


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
    busy(engine)  # q0 is in the (held) model call, q1..q3 are pending
    proc.stop()  # answers the pending ones, opens the gate (release_holds) and joins the worker
    proc.submit(caption("after"))
    wait_for(outcomes, 5)
    by_id = {o.query_id: o.status for o in outcomes}
    assert len(outcomes) == 5 and by_id.pop("q0") == Status.OK  # the call under way finishes
    assert set(by_id.values()) == {Status.SHUTTING_DOWN}, by_id


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
