"""Reliability of the node process: injected model faults, bursts, shutdown, diagnostics.

Each node here lives for one class (or one test) and is stopped before the next starts:
two nodes on one domain would both answer every topic query and both publish
/diagnostics (a module-scoped node once outlived its tests and answered for the next
ones). :func:`wait_alone` checks it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter

import pytest
from diagnostic_msgs.msg import DiagnosticStatus

from region_perception.msg import RegionQuery, RegionResult
from region_perception.ros.processes import camera_command, node_command

from .test_node import points, query

pytestmark = pytest.mark.slow


def start_node(log=None, **params) -> subprocess.Popen:
    cmd = node_command(model="tiny-regionvlm", diagnostics_period_s=0.3, image_reliability="reliable", **params)
    return subprocess.Popen(cmd, env=dict(os.environ), stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT)


def start_camera(rate: int = 5) -> subprocess.Popen:
    return subprocess.Popen(
        camera_command("--rate", str(rate), "--reliable"),
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        return None


def wait_alone(client) -> None:
    """Until exactly one node takes topic queries here (a stopped one may take a moment to be forgotten)."""
    assert client.wait(lambda: client.node.count_subscribers("region_queries") == 1, 60), (
        f"{client.node.count_subscribers('region_queries')} nodes subscribe region_queries, expected 1"
    )


def connect(name: str):
    """A client of a node that is up, active, receiving frames and the only one."""
    from .helpers.ros_client import RosClient

    client = RosClient(name)
    assert client.client.wait_for_service(timeout_sec=120)
    client.wait_active()
    wait_alone(client)
    return client


def caption(qid: str, tokens: int = 2) -> RegionQuery:
    return query(qid, RegionQuery.CAPTION, regions=[points((10, 10))], max_new_tokens=tokens)


def diag_int(client, key: str) -> int:
    return int(client.diagnostic_values().get(key, "0"))


@pytest.fixture(scope="class")
def faulty(tmp_path_factory):
    """A node whose every third model call fails (``fault_every``), for this class only."""
    log = open(tmp_path_factory.mktemp("rel") / "node.log", "w")
    node = start_node(log=log, fault_every=3, queue_size=8)
    camera = start_camera()
    client = None
    try:
        client = connect("reliability_client")
        yield client, node
    finally:
        if client is not None:
            client.close()
        stop(camera)
        stop(node)
        log.close()


class TestFaultyModel:
    def test_every_third_model_call_fails_and_the_node_keeps_serving(self, faulty):
        client, node = faulty
        statuses = [client.ask(caption(f"fault-{i}")).status for i in range(9)]
        assert statuses == [RegionResult.OK, RegionResult.OK, RegionResult.MODEL_ERROR] * 3
        assert "injected fault" in client.results["fault-2"][0].error
        assert node.poll() is None

    def test_a_burst_of_200_queries_gets_200_results(self, faulty):
        """Exactly one result each, whatever the machine's speed (QUEUE_FULL is tested where it is certain)."""
        client, node = faulty
        ids = [f"burst-{i}" for i in range(200)]
        for qid in ids:
            client.query_pub.publish(caption(qid, tokens=5))
        assert client.wait(lambda: all(q in client.results for q in ids), 180), "some queries got no result"
        assert all(len(client.results[q]) == 1 for q in ids), "exactly one result per query"
        counts = Counter(client.results[q][0].status for q in ids)
        assert counts[RegionResult.OK] > 0
        assert set(counts) <= {RegionResult.OK, RegionResult.QUEUE_FULL, RegionResult.MODEL_ERROR}
        assert node.poll() is None


QUEUE_SIZE = 16


@pytest.fixture(scope="class")
def held(tmp_path_factory):
    """A node whose every model call is held (``hold_model_s``) until it shuts down, on a 30 Hz camera.

    "A query is being answered" and "queries are pending" are then facts the tests create,
    on a fast machine or a slow one, not races they hope to win.
    """
    log = open(tmp_path_factory.mktemp("held") / "node.log", "w")
    node = start_node(log=log, hold_model_s=600.0, queue_size=QUEUE_SIZE)
    camera = start_camera(rate=30)
    client = None
    try:
        client = connect("held_client")
        yield client, node, {}
    finally:
        if client is not None:
            client.close()
        stop(camera)
        stop(node)
        log.close()


class TestHeldModel:
    """In order: a ~/query call held in the model, then shutdown with queries pending."""

    def test_a_service_call_waiting_on_the_model_blocks_neither_frames_nor_topic_queries(self, held):
        from region_perception.srv import QueryRegions

        client, node, shared = held
        call = client.client.call_async(QueryRegions.Request(query=caption("held-srv", tokens=3)))
        shared["call"] = call
        assert client.wait(lambda: diag_int(client, "model_calls_held") == 1, 60), (
            f"the call never reached the model: {client.diagnostic_values()}"
        )
        # the node still buffers new frames ...
        before = diag_int(client, "frames_received")
        assert client.wait(lambda: diag_int(client, "frames_received") >= before + 30, 120), "frames stopped"
        # ... and answers topic queries (these two without the model, which is busy)
        no_region = RegionQuery(query_id="no-region-while-held", task=RegionQuery.CAPTION)
        assert client.ask(no_region).status == RegionResult.INVALID_QUERY
        old = caption("expired-while-held")
        old.header.stamp.sec = 1
        assert client.ask(old).status == RegionResult.FRAME_EXPIRED
        assert not call.done(), "the service call cannot be answered before its model call ends"
        assert node.poll() is None

    def test_a_full_queue_refuses_at_once_and_shutdown_answers_every_pending_query(self, held):
        client, node, shared = held
        # distinct lengths: no two of them can share one engine call (batching)
        ids = [f"late-{i}" for i in range(6)]
        for i, qid in enumerate(ids):
            client.query_pub.publish(caption(qid, tokens=10 + i))
        # one model call is held (the ~/query call above, or else late-0), so the others are surely pending
        depth = len(ids) if "call" in shared else len(ids) - 1
        assert client.wait(
            lambda: diag_int(client, "model_calls_held") == 1 and diag_int(client, "queue_depth") == depth, 60
        ), client.diagnostic_values()
        assert not any(q in client.results for q in ids), "nothing can be answered while the model is held"
        # the queue fills up: exactly the overflow is refused, at once, the rest stays pending
        burst = [f"fill-{i}" for i in range(QUEUE_SIZE)]
        for qid in burst:
            client.query_pub.publish(caption(qid, tokens=2))
        overflow = burst[QUEUE_SIZE - depth :]
        assert client.wait(lambda: all(q in client.results for q in overflow), 60), "QUEUE_FULL was not answered"
        assert all(client.results[q][0].status == RegionResult.QUEUE_FULL for q in overflow)
        assert client.wait(lambda: diag_int(client, "queue_depth") == QUEUE_SIZE, 60), client.diagnostic_values()
        assert not any(q in client.results for q in burst[: QUEUE_SIZE - depth])
        # shutdown: everything still pending is answered SHUTTING_DOWN
        node.send_signal(signal.SIGINT)
        pending = ids + burst
        assert client.wait(lambda: all(q in client.results for q in pending), 60), "pending queries were lost"
        statuses = [client.results[q][0].status for q in ids]
        assert statuses.count(RegionResult.SHUTTING_DOWN) >= 5, statuses
        queued = [client.results[q][0].status for q in burst[: QUEUE_SIZE - depth]]
        assert set(queued) == {RegionResult.SHUTTING_DOWN}, queued
        assert all(len(client.results[q]) == 1 for q in pending), "exactly one result per query"
        call = shared.get("call")
        if call is not None:  # the ~/query call that was waiting on the held model call is answered too
            assert client.wait(call.done, 60), "the waiting ~/query call was not answered at shutdown"
            assert call.result().result.status in (RegionResult.OK, RegionResult.SHUTTING_DOWN)
        assert node.wait(timeout=60) == 0


def test_repeated_model_failures_turn_diagnostics_to_error(tmp_path):
    log = open(tmp_path / "node.log", "w")
    node = start_node(log=log, fault_every=1)
    camera = start_camera()
    client = None
    try:
        client = connect("diag_client")
        for i in range(3):
            result = client.ask(caption(f"f{i}"))
            assert result.status == RegionResult.MODEL_ERROR and "injected fault" in result.error, result
        assert client.wait(lambda: client.diagnostic_values().get("_level") == str(DiagnosticStatus.ERROR), 10)
        assert "model errors in a row" in client.diagnostic_values()["_message"]
    finally:
        if client is not None:
            client.close()
        stop(camera)
        stop(node)
        log.close()
