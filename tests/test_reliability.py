"""Reliability of the node process: injected model faults, bursts, shutdown, diagnostics."""

from __future__ import annotations

import os
import signal
import subprocess
import time
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


def start_camera() -> subprocess.Popen:
    return subprocess.Popen(
        camera_command("--rate", "5", "--reliable"),
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
        return None


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    from .helpers.ros_client import RosClient

    log = open(tmp_path_factory.mktemp("rel") / "node.log", "w")
    node = start_node(log=log, fault_every=3, queue_size=8)
    camera = start_camera()
    client = RosClient("reliability_client")
    try:
        assert client.client.wait_for_service(timeout_sec=120)
        client.wait_active()
        yield client, node
    finally:
        client.close()
        stop(camera)
        stop(node)


def caption(qid: str, tokens: int = 2) -> RegionQuery:
    return query(qid, RegionQuery.CAPTION, regions=[points((10, 10))], max_new_tokens=tokens)


def test_every_third_model_call_fails_and_the_node_keeps_serving(faulty):
    client, node = faulty
    statuses = [client.ask(caption(f"fault-{i}")).status for i in range(9)]
    assert statuses == [RegionResult.OK, RegionResult.OK, RegionResult.MODEL_ERROR] * 3
    assert "injected fault" in client.results["fault-2"][0].error
    assert node.poll() is None


def test_a_burst_of_200_queries_in_a_second_gets_200_results(faulty):
    client, node = faulty
    ids = [f"burst-{i}" for i in range(200)]
    start = time.monotonic()
    for qid in ids:
        client.query_pub.publish(caption(qid, tokens=5))
    assert time.monotonic() - start < 1.0, "the burst itself took more than a second"
    assert client.wait(lambda: all(q in client.results for q in ids), 180), "some queries got no result"
    assert all(len(client.results[q]) == 1 for q in ids), "exactly one result per query"
    counts = Counter(client.results[q][0].status for q in ids)
    assert counts[RegionResult.QUEUE_FULL] > 0 and counts[RegionResult.OK] > 0
    assert set(counts) <= {RegionResult.OK, RegionResult.QUEUE_FULL, RegionResult.MODEL_ERROR}
    assert node.poll() is None


def test_shutdown_answers_every_pending_query(faulty):
    client, node = faulty
    ids = [f"late-{i}" for i in range(6)]
    for qid in ids:
        client.query_pub.publish(caption(qid, tokens=30))
    time.sleep(0.3)
    node.send_signal(signal.SIGINT)
    assert client.wait(lambda: all(q in client.results for q in ids), 30), "pending queries were lost at shutdown"
    statuses = [client.results[q][0].status for q in ids]
    assert RegionResult.SHUTTING_DOWN in statuses
    assert node.wait(timeout=30) == 0


def test_repeated_model_failures_turn_diagnostics_to_error():
    from .helpers.ros_client import RosClient

    node = start_node(fault_every=1)
    camera = start_camera()
    client = RosClient("diag_client")
    try:
        assert client.client.wait_for_service(timeout_sec=120)
        client.wait_active()
        for i in range(3):
            assert client.ask(caption(f"f{i}")).status == RegionResult.MODEL_ERROR
        assert client.wait(lambda: client.diagnostic_values().get("_level") == str(DiagnosticStatus.ERROR), 10)
        assert "model errors in a row" in client.diagnostic_values()["_message"]
    finally:
        client.close()
        stop(camera)
        stop(node)
