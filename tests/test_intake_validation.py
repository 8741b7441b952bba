"""A query that can never succeed is refused at intake, however busy the worker is.

Under load a malformed query used to wait in the queue (or be refused QUEUE_FULL, "retry
later") because its regions were only checked by the engine. Here the queue is full of
held model calls (``hold_model_s``, a state the test creates) while each malformed kind is
sent: each must be answered INVALID_QUERY, with the engine's own reason, within ``submit``,
and the valid queued queries must still get their one answer.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess

import numpy as np
import pytest

from region_perception.common.status import Status, Task
from region_perception.engine import RegionEngine, TaskError
from region_perception.geometry.regions import BoxRegion, MaskRegion, PointsRegion, RegionError, ScribbleRegion
from region_perception.models.faults import HoldingBackend
from region_perception.service.frame_buffer import Frame
from region_perception.service.query_processor import QuerySpec

from .test_query_processor import FakeEngine, busy, caption, frame, make, wait_for, wait_until

NAN, INF = math.nan, math.inf


def _pts(*xy) -> PointsRegion:
    return PointsRegion(np.array(xy, dtype=np.float64).reshape(-1, 2))


def _box(x0, y0, x1, y1) -> BoxRegion:
    return BoxRegion(np.array([x0, y0, x1, y1], dtype=np.float64))


def _spec(qid: str, task: int = Task.CAPTION, regions=None, **kw) -> QuerySpec:
    return QuerySpec(query_id=qid, task=task, regions=list(regions or []), **kw)


# (query, words its reason must contain) on a 512x512 frame
MALFORMED = [
    (_spec("mask-size", regions=[MaskRegion(np.ones((10, 10), bool))]), "does not match the 512x512 image"),
    (_spec("mask-empty", regions=[MaskRegion(np.zeros((512, 512), bool))]), "mask: it is empty"),
    (_spec("points-outside", regions=[_pts((600, 10))]), "is outside the 512x512 image"),
    (_spec("points-negative", regions=[_pts((-1, 10))]), "is outside the 512x512 image"),
    (_spec("points-nan", regions=[_pts((NAN, 1))]), "NaN or infinity"),
    (_spec("points-inf", regions=[_pts((INF, 1))]), "NaN or infinity"),
    (_spec("no-points", regions=[PointsRegion(np.zeros((0, 2)))]), "needs at least 1 point(s)"),
    (_spec("too-many-points", regions=[PointsRegion(np.ones((5000, 2)))]), "5000 points is more than the limit"),
    (_spec("scribble-one-point", regions=[ScribbleRegion(np.array([[1.0, 1.0]]))]), "needs at least 2 point(s)"),
    (_spec("box-outside", regions=[_box(0, 0, 900, 100)]), "is outside the 512x512 image"),
    (_spec("box-inverted", regions=[_box(100, 100, 50, 50)]), "is empty (need x_max > x_min"),
    (_spec("box-nan", regions=[_box(NAN, 0, 10, 10)]), "NaN or infinity"),
    (_spec("unknown-region-type", regions=[object()]), "unknown region type object"),
    (_spec("one-bad-of-two", regions=[_pts((5, 5)), _box(0, 0, 10, 600)]), "is outside the 512x512 image"),
    (_spec("no-region"), "caption needs at least one region"),
    (_spec("no-labels", Task.CLASSIFY, [_pts((5, 5))], labels=[" "]), "needs at least one candidate label"),
    (_spec("classify-mask-size", Task.CLASSIFY, [MaskRegion(np.ones((4, 4), bool))], labels=["a"]), "does not match"),
    (_spec("refer-empty", Task.REFER, text="  "), "the referring expression is empty"),
    (_spec("refer-long", Task.REFER, text="x" * 20000), "has 20000 characters, more than the limit of 2000"),
    (_spec("ask-empty", Task.ASK, [_pts((5, 5))]), "the question is empty"),
    (_spec("ask-long", Task.ASK, [_pts((5, 5))], text="y" * 20000), "has 20000 characters, more than the limit"),
    (_spec("ask-box-outside", Task.ASK, [_box(500, 500, 520, 520)], text="what?"), "is outside the 512x512 image"),
    (_spec("unknown-task", 9), "unknown task 9"),
]


def _engine_refusal(engine: RegionEngine, spec: QuerySpec, image: np.ndarray) -> str:
    """What the engine itself says of the query (its error), called directly."""
    try:
        if spec.task == Task.CAPTION:
            engine.caption(image, spec.regions)
        elif spec.task == Task.CLASSIFY:
            engine.classify(image, spec.regions, spec.labels)
        elif spec.task == Task.REFER:
            engine.refer(image, spec.text)
        elif spec.task == Task.ASK:
            engine.ask(image, spec.regions, spec.text)
    except (RegionError, TaskError) as exc:
        return str(exc)
    return "(the engine answered it)"


def _held(engine: RegionEngine) -> RegionEngine:
    """The same models, every model call held (``hold_model_s``) until ``release_holds``."""
    return RegionEngine(engine.config, HoldingBackend(engine.model, 600.0), engine.segmenter, engine.proposer)


def test_every_malformed_kind_is_refused_at_once_while_the_queue_is_full(tiny_engine, astronaut):
    engine = _held(tiny_engine)
    proc, frames, outcomes = make(engine, queue_size=2)
    frames.add(frame(1, astronaut))
    proc.start()
    valid = ["held", "queued-0", "queued-1"]
    proc.submit(caption("held", max_new_tokens=2))
    assert wait_until(lambda: engine.model.holding == 1), "the first query never reached the model"
    # distinct generation options: the queued two could not join one batch
    proc.submit(caption("queued-0", max_new_tokens=3))
    proc.submit(caption("queued-1", max_new_tokens=4))
    proc.submit(caption("overflow"))
    assert [(o.query_id, o.status) for o in outcomes] == [("overflow", Status.QUEUE_FULL)], "the queue is full"
    for spec, words in MALFORMED:
        before = len(outcomes)
        proc.submit(spec)
        assert len(outcomes) == before + 1, f"{spec.query_id} was not answered within submit"
        got = outcomes[-1]
        assert (got.query_id, got.status) == (spec.query_id, Status.INVALID_QUERY), (got.query_id, got.error)
        assert words in got.error, (spec.query_id, got.error)
        if spec.task in {t.value for t in Task}:  # the engine's own words (one source of truth)
            assert got.error == _engine_refusal(tiny_engine, spec, astronaut), spec.query_id
    assert engine.model.holding == 1 and proc.depth == 2, "the queued queries were disturbed"
    assert not any(o.query_id in valid for o in outcomes)
    engine.release_holds()
    wait_for(outcomes, 1 + len(MALFORMED) + len(valid), timeout=120)
    proc.stop()
    ids = [o.query_id for o in outcomes]
    assert sorted(ids) == sorted(["overflow", *valid, *(s.query_id for s, _ in MALFORMED)]), "one answer each"
    assert all(o.status == Status.OK for o in outcomes if o.query_id in valid)


def test_a_query_that_overtook_its_frame_is_validated_when_the_frame_arrives():
    engine = FakeEngine()
    engine.gate.clear()
    proc, frames, outcomes = make(engine, queue_size=2, frame_wait_s=600.0)
    frames.add(frame(1_000_000_000))
    proc.start()
    proc.submit(caption("held", 1_000_000_000))
    busy(engine)
    proc.submit(caption("queued-0", 1_000_000_000))
    proc.submit(caption("queued-1", 1_000_000_000))  # the queue (2) is full now
    later = 2_000_000_000
    proc.submit(QuerySpec(query_id="outside", task=Task.CAPTION, stamp_ns=later, regions=[_pts((100, 5))]))
    proc.submit(caption("valid-early", later))
    assert outcomes == [] and len(proc._awaiting) == 2, "both wait for their frame"
    frames.add(frame(later))  # a 30x20 image
    proc.frame_arrived()
    got = {o.query_id: o for o in outcomes}
    assert got["outside"].status == Status.INVALID_QUERY and "outside the 30x20 image" in got["outside"].error
    assert got["valid-early"].status == Status.QUEUE_FULL  # it could succeed: only such a query retries
    engine.gate.set()
    wait_for(outcomes, 5)
    proc.stop()
    got = {o.query_id: o for o in outcomes}
    assert len(outcomes) == 5 and got["held"].status == got["queued-0"].status == got["queued-1"].status == Status.OK


def test_a_frame_that_cannot_be_decoded_is_bad_image_at_once_while_the_queue_is_full():
    engine = FakeEngine()
    engine.gate.clear()
    proc, frames, outcomes = make(engine, queue_size=1)
    frames.add(frame(1))
    proc.start()
    proc.submit(caption("held", 1))
    busy(engine)
    proc.submit(caption("queued", 1))

    def broken(raw):
        raise ValueError("unknown image encoding 'yuv422'")

    proc.submit(QuerySpec(query_id="bad", task=Task.REFER, text="the cup", frame=Frame(0, "srv", None, broken)))
    assert [(o.query_id, o.status) for o in outcomes] == [("bad", Status.BAD_IMAGE)]
    assert "yuv422" in outcomes[0].error
    engine.gate.set()
    wait_for(outcomes, 3)
    proc.stop()
    assert sorted(o.query_id for o in outcomes if o.status == Status.OK) == ["held", "queued"]


# -- the live node, through ~/query --------------------------------------------------------


@pytest.fixture()
def held_node(tmp_path):
    """A node (queue 2) whose every model call is held until it stops, on the demo camera."""
    from region_perception.ros.processes import camera_command, node_command

    from .test_reliability import connect, stop

    log = open(tmp_path / "node.log", "w")
    cmd = node_command(
        model="tiny-regionvlm", diagnostics_period_s=0.3, image_reliability="reliable", hold_model_s=600.0, queue_size=2
    )
    node = subprocess.Popen(cmd, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
    camera = subprocess.Popen(
        camera_command("--rate", "5", "--reliable"), env=dict(os.environ), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = None
    try:
        client = connect("intake_client")
        yield client, node
    finally:
        if client is not None:
            client.close()
        stop(camera)
        stop(node)
        log.close()


@pytest.mark.slow
def test_the_node_refuses_malformed_service_calls_at_once_while_its_queue_is_full(held_node):
    from region_perception.msg import Region, RegionQuery, RegionResult
    from region_perception.ros.image_conversion import array_to_image_msg
    from region_perception.srv import QueryRegions

    from .test_node import box, points, query
    from .test_reliability import caption, diag_int

    client, node = held_node
    # the node must hear the query topic and have a camera frame before the burst, else a query is
    # lost to discovery or answered NO_FRAME and the queue never fills (seen on a fresh clone)
    assert client.wait(lambda: client.query_pub.get_subscription_count() > 0
                       and diag_int(client, "frames_received") > 0, 120), client.diagnostic_values()
    valid = ["held", "queued-0", "queued-1"]
    # the held call first: sent together, the worker's batch settle could take a second query into the held
    # batch and the queue would never reach two (seen on a fresh clone)
    client.query_pub.publish(caption(valid[0], tokens=2))
    assert client.wait(lambda: diag_int(client, "model_calls_held") == 1, 120), client.diagnostic_values()
    for i, qid in enumerate(valid[1:], start=1):  # distinct lengths: no two share one engine call
        client.query_pub.publish(caption(qid, tokens=2 + i))
    assert client.wait(
        lambda: diag_int(client, "model_calls_held") == 1 and diag_int(client, "queue_depth") == 2, 120
    ), client.diagnostic_values()

    def mask(array: np.ndarray, encoding: str = "mono8") -> Region:
        return Region(kind=Region.MASK, mask=array_to_image_msg(array, encoding))

    truncated = mask(np.full((48, 64), 255, np.uint8))
    truncated.mask.data = bytes(truncated.mask.data)[:100]
    own = array_to_image_msg(np.zeros((48, 64, 3), np.uint8), "rgb8")  # the service's own 64x48 image
    cap, refer, ask = RegionQuery.CAPTION, RegionQuery.REFER, RegionQuery.ASK
    cases = {
        "mask-size": (query("mask-size", cap, regions=[mask(np.full((10, 10), 255, np.uint8))]), "does not match"),
        "mask-encoding": (query("mask-enc", cap, regions=[mask(np.zeros((48, 64, 3), np.uint8), "rgb8")]), "mono8"),
        "mask-empty": (query("mask-empty", cap, regions=[mask(np.zeros((48, 64), np.uint8))]), "mask: it is empty"),
        "mask-truncated": (query("mask-truncated", cap, regions=[truncated]), "mask: data has 100 bytes"),
        "points-outside": (query("points-outside", cap, regions=[points((70, 5))]), "outside the 64x48 image"),
        "points-nan": (query("points-nan", cap, regions=[points((NAN, 5))]), "NaN or infinity"),
        "points-inf": (query("points-inf", cap, regions=[points((5, INF))]), "NaN or infinity"),
        "no-points": (query("no-points", cap, regions=[Region(kind=Region.POINTS)]), "needs at least 1 point"),
        "too-many-points": (query("too-many-points", cap, regions=[points(*[(1, 1)] * 5000)]), "5000 points"),
        "box-outside": (query("box-outside", cap, regions=[box(0, 0, 65, 10)]), "outside the 64x48 image"),
        "box-inverted": (query("box-inverted", cap, regions=[box(10, 10, 5, 5)]), "is empty"),
        "too-many-regions": (query("too-many-regions", cap, regions=[points((1, 1))] * 33), "33 regions"),
        "unknown-kind": (query("unknown-kind", cap, regions=[Region(kind=42)]), "unknown region kind 42"),
        "unknown-task": (query("unknown-task", 9), "unknown task 9"),
        "refer-empty": (query("refer-empty", refer), "the referring expression is empty"),
        "ask-long": (query("ask-long", ask, regions=[points((1, 1))], text="z" * 20000), "20000 characters"),
        "no-labels": (
            query("no-labels", RegionQuery.CLASSIFY, regions=[points((1, 1))], labels=[" "]),
            "candidate label",
        ),
        # on the latest camera frame (512x512 or 451x300): outside either
        "camera-outside": (query("camera-outside", cap, regions=[points((5000, 5))]), "is outside the"),
    }
    for name, (q, words) in cases.items():  # one at a time: a service keeps only 10 requests waiting
        request = QueryRegions.Request(query=q)
        if name != "camera-outside":
            request.image = own
        result = client.call(request, timeout=60)
        assert (result.query_id, result.status) == (q.query_id, RegionResult.INVALID_QUERY), (name, result.error)
        assert words in result.error, (qid, result.error)
    # a valid call is told to retry (the queue is full), and nothing queued was disturbed
    valid_call = client.call(QueryRegions.Request(query=caption("valid-call"), image=own))
    assert valid_call.status == RegionResult.QUEUE_FULL and "retry later" in valid_call.error
    assert diag_int(client, "model_calls_held") == 1 and not any(q in client.results for q in valid)
    assert client.wait(lambda: diag_int(client, "queue_depth") == 2, 30), client.diagnostic_values()
    assert node.poll() is None
    node.send_signal(signal.SIGINT)  # the held ones: one answer each, at shutdown
    assert client.wait(lambda: all(q in client.results for q in valid), 60), "queued queries were lost"
    assert all(len(client.results[q]) == 1 for q in valid)
    assert {client.results[q][0].status for q in valid[1:]} == {RegionResult.SHUTTING_DOWN}
    assert node.wait(timeout=60) == 0
