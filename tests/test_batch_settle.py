"""A burst is batched, a lone query is never delayed (``batch_settle_ms``, ``submit_group``).

The worker settles (waits ``batch_settle_ms`` at a time while more arrive) only when it
wakes to find another query already queued: evidence of a burst. No test here depends on
the machine's speed: the settle step's wait is replaced by one that records it and waits
for the test, the fake engine is gated, and the tests assert on which queries shared an
engine call and on the settle steps taken, never on durations.
"""

from __future__ import annotations

import threading

from region_perception.common.status import Status

from .test_batching import BatchingEngine, by_id
from .test_query_processor import caption, frame, make, wait_for

LONG = 30.0  # generous: a condition that holds at once on any machine


class Staged:
    """A processor over a batching fake whose worker is idle in ``queue.get`` (checked), with a staged settle."""

    def __init__(self, max_batch: int = 16, settle_ms: float = 3.0, **kw) -> None:
        self.engine = BatchingEngine()
        self.proc, frames, self.outcomes = make(
            self.engine, queue_size=32, max_batch=max_batch, batch_settle_ms=settle_ms, **kw
        )
        frames.add(frame(1))
        q = self.proc._queue
        real_get = q.get
        self.idle = threading.Event()
        self.took = threading.Event()  # the worker has returned from a blocking get (it woke)

        def get(block=True, timeout=None):  # queue.get_nowait() calls get(False): only a blocking get is idle
            if block:
                self.idle.set()
            job = real_get(block, timeout)
            if block:
                self.took.set()
            return job

        q.get = get
        self.steps: list[float] = []
        self.settling, self.go_on = threading.Event(), threading.Event()

        def step(seconds: float) -> None:  # the settle step: the test decides what arrives during it
            self.steps.append(seconds)
            if len(self.steps) == 1:
                self.settling.set()
                assert self.go_on.wait(LONG), "the test never released the settle step"

        self.proc._sleep = step
        self.proc.start()
        assert self.idle.wait(LONG), "the worker never waited for a query"

    def finish(self, n: int) -> dict:
        wait_for(self.outcomes, n, LONG)
        self.proc.stop()
        got = by_id(self.outcomes)
        assert len(got) == n and len(self.outcomes) == n, "exactly one answer per query"
        return got


def test_a_lone_query_reaching_an_idle_worker_is_answered_at_once_without_a_settle_step():
    s = Staged()
    s.proc.submit(caption("alone"))
    got = s.finish(1)
    assert got["alone"].status == Status.OK and got["alone"].batch_size == 1
    assert s.steps == [] and not s.engine.batches  # no wait at all, answered through engine.caption


def test_lone_queries_one_after_another_never_settle():
    s = Staged()
    for i in range(3):
        s.proc.submit(caption(f"q{i}"))
        wait_for(s.outcomes, i + 1, LONG)
    s.finish(3)
    assert s.steps == []


def test_a_group_reaching_an_idle_worker_is_answered_by_one_engine_call():
    """The node's drained messages, submitted together: the woken worker sees them all queued."""
    s = Staged()
    s.go_on.set()
    s.proc.submit_group([caption(f"g{i}") for i in range(10)])
    got = s.finish(10)
    assert all(o.status == Status.OK for o in got.values())
    assert [len(b) for b in s.engine.batches] == [10] and all(o.batch_size == 10 for o in got.values())
    assert s.steps == [0.003]  # nine were queued when it woke (a burst): one step, which brought none


def test_a_group_is_queued_whole_before_the_woken_worker_decides():
    """The worker wakes on the group's first query while the rest are still being enqueued: it waits for them."""
    s = Staged(settle_ms=0.0)  # no settle: only the intake's atomicity can put the group in one call
    proc = s.proc
    real_enqueue = proc._enqueue
    count = 0

    def enqueue(job):
        nonlocal count
        real_enqueue(job)
        count += 1
        if count == 1:  # the worker has surely woken on the first before the others are queued
            assert s.took.wait(LONG), "the worker did not wake on the group's first query"

    proc._enqueue = enqueue
    proc.submit_group([caption(f"g{i}") for i in range(5)])
    s.finish(5)
    assert [len(b) for b in s.engine.batches] == [5], "the worker took part of a group"
    assert s.steps == []


def test_a_burst_still_arriving_is_answered_by_one_engine_call():
    """Evidence of a burst (two queued at the wake), then the rest arrives during the settle step."""
    s = Staged()
    s.proc.submit_group([caption("b0"), caption("b1")])
    assert s.settling.wait(LONG), "the worker did not settle on a burst"
    for i in range(2, 10):
        s.proc.submit(caption(f"b{i}"))
    s.go_on.set()
    got = s.finish(10)
    assert [len(b) for b in s.engine.batches] == [10], "the whole burst should share one engine call"
    assert all(o.batch_size == 10 for o in got.values())
    assert s.steps == [0.003, 0.003]  # one step brought eight, the next none: it stopped


def test_the_settle_stops_once_a_whole_batch_waits():
    s = Staged(max_batch=4)
    s.proc.submit_group([caption("b0"), caption("b1")])
    assert s.settling.wait(LONG)
    for i in range(2, 6):
        s.proc.submit(caption(f"b{i}"))
    s.go_on.set()
    s.finish(6)
    assert len(s.engine.batches[0]) == 4 and len(s.steps) == 1  # no step after max_batch was reached


def test_settle_zero_never_waits():
    s = Staged(settle_ms=0.0)
    s.proc.submit_group([caption(f"g{i}") for i in range(3)])
    s.finish(3)
    assert s.steps == [] and [len(b) for b in s.engine.batches] == [3]


def test_a_busy_worker_does_not_settle():
    """Queries that waited while the worker was busy are taken at once (they are all there)."""
    s = Staged()
    s.go_on.set()
    s.engine.gate.clear()
    s.proc.submit(caption("first"))
    assert s.engine.busy.wait(LONG)
    for i in range(3):
        s.proc.submit(caption(f"q{i}"))
    s.engine.gate.set()
    s.finish(4)
    assert [len(b) for b in s.engine.batches] == [3] and s.steps == []  # "first" was alone: no step either


def test_a_group_keeps_every_intake_guarantee():
    """Duplicates, malformed and over-capacity queries in a group are answered at intake, once each."""
    engine = BatchingEngine()
    engine.gate.clear()
    proc, frames, outcomes = make(engine, queue_size=2, max_batch=16)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("held"))
    assert engine.busy.wait(LONG)
    bad = caption("empty")
    bad.regions = []
    proc.submit_group([caption("a"), caption("a"), bad, caption("b"), caption("c")])
    wait_for(outcomes, 3, LONG)  # the duplicate, the malformed one and the one past the queue, at once
    early = {o.query_id: o.status for o in outcomes}
    assert sorted(early.values()) == sorted([Status.INVALID_QUERY, Status.INVALID_QUERY, Status.QUEUE_FULL])
    assert early["empty"] == Status.INVALID_QUERY and early["c"] == Status.QUEUE_FULL
    engine.gate.set()
    wait_for(outcomes, 6, LONG)
    proc.stop()
    statuses = sorted((o.query_id, o.status) for o in outcomes)  # "a" twice: the original and its duplicate
    assert len(outcomes) == 6 and ("b", Status.OK) in statuses and ("held", Status.OK) in statuses
    assert sorted(st for q, st in statuses if q == "a") == [Status.OK, Status.INVALID_QUERY]
