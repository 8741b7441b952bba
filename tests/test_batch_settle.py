"""An idle worker woken by a query settles while a burst arrives (``batch_settle_ms``).

No test here depends on the machine's speed: the burst is queued while the worker is
provably inside its settle step (the step's wait is replaced by one that waits for the
test), and the tests assert on which queries shared an engine call, never on durations.
"""

from __future__ import annotations

import threading

from region_perception.common.status import Status

from .test_batching import BatchingEngine, by_id
from .test_query_processor import caption, frame, make, wait_for

LONG = 30.0  # generous: a condition that holds at once on any machine


def staged(max_batch=16, settle_ms=3.0, **kw):
    """A processor over a batching fake whose worker is idle in ``queue.get`` (checked), with a staged settle."""
    engine = BatchingEngine()
    proc, frames, outcomes = make(engine, queue_size=32, max_batch=max_batch, batch_settle_ms=settle_ms, **kw)
    frames.add(frame(1))
    q = proc._queue
    real_get = q.get
    idle = threading.Event()

    def get(block=True, timeout=None):  # queue.get_nowait() calls get(False): only a blocking get is idle
        if block:
            idle.set()
        return real_get(block, timeout)

    q.get = get
    steps: list[float] = []
    settling, go_on = threading.Event(), threading.Event()

    def step(seconds: float) -> None:  # the worker's settle step: the test decides what arrives during it
        steps.append(seconds)
        if len(steps) == 1:
            settling.set()
            assert go_on.wait(LONG), "the test never released the settle step"

    proc._sleep = step
    proc.start()
    assert idle.wait(LONG), "the worker never waited for a query"
    return engine, proc, outcomes, steps, settling, go_on


def test_a_burst_reaching_an_idle_worker_is_answered_by_one_engine_call():
    engine, proc, outcomes, steps, settling, go_on = staged()
    proc.submit(caption("b0"))  # wakes the idle worker
    assert settling.wait(LONG), "the worker did not settle on an idle wake"
    for i in range(1, 10):  # the rest of the burst arrives during the settle step
        proc.submit(caption(f"b{i}"))
    go_on.set()
    wait_for(outcomes, 10)
    proc.stop()
    got = by_id(outcomes)
    assert len(got) == 10 and all(o.status == Status.OK for o in got.values())
    assert [len(b) for b in engine.batches] == [10], "the whole burst should share one engine call"
    assert all(o.batch_size == 10 for o in got.values())
    assert len(steps) == 2 and steps[0] == 0.003  # one step brought nine, the next none: it stopped


def test_the_settle_stops_once_a_whole_batch_waits():
    engine, proc, outcomes, steps, settling, go_on = staged(max_batch=4)
    proc.submit(caption("b0"))
    assert settling.wait(LONG)
    for i in range(1, 6):
        proc.submit(caption(f"b{i}"))
    go_on.set()
    wait_for(outcomes, 6)
    proc.stop()
    assert len(by_id(outcomes)) == 6
    assert len(engine.batches[0]) == 4 and len(steps) == 1  # no step after max_batch was reached


def test_a_query_alone_settles_one_step_and_is_answered_alone():
    engine, proc, outcomes, steps, _settling, go_on = staged()
    go_on.set()
    proc.submit(caption("alone"))
    wait_for(outcomes, 1)
    proc.stop()
    assert outcomes[0].status == Status.OK and outcomes[0].batch_size == 1
    assert not engine.batches and len(steps) == 1  # answered through engine.caption, after one quiet step


def test_settle_zero_never_waits():
    engine, proc, outcomes, steps, _settling, _go_on = staged(settle_ms=0.0)
    proc.submit(caption("alone"))
    wait_for(outcomes, 1)
    proc.stop()
    assert outcomes[0].status == Status.OK and steps == [] and not engine.batches


def test_a_busy_worker_does_not_settle():
    """Queries that waited while the worker was busy are taken at once (they are all there)."""
    engine, proc, outcomes, steps, _settling, go_on = staged()
    go_on.set()
    engine.gate.clear()
    proc.submit(caption("first"))
    assert engine.busy.wait(LONG)
    for i in range(3):
        proc.submit(caption(f"q{i}"))
    engine.gate.set()
    wait_for(outcomes, 4)
    proc.stop()
    assert [len(b) for b in engine.batches] == [3] and len(steps) == 1  # the one step was "first"'s idle wake
