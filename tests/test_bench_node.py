"""The node bench's plain rclpy echo: the floor the node's overhead is measured against.

It must read its topics as the node does (a reader thread, the camera kept serialized) and
answer every query on its own topic, once, with the stored result under the query's id.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pytest
from rclpy.serialization import serialize_message

from region_perception.msg import RegionOutput, RegionQuery, RegionResult
from region_perception.ros.bench_node import ECHO_QUERIES, ECHO_RESULTS
from region_perception.ros.image_conversion import array_to_image_msg, mask_to_msg

pytestmark = pytest.mark.slow


def test_the_echo_answers_each_query_once_with_the_stored_result_while_the_camera_runs(child_env, tmp_path):
    from sensor_msgs.msg import Image

    from region_perception.ros.qos import image_qos

    from .helpers.ros_client import RosClient

    template = RegionResult(model="stored", status=RegionResult.OK)
    template.outputs.append(RegionOutput(text="stored answer", mask=mask_to_msg(np.eye(6, 8, dtype=bool))))
    path = tmp_path / "template.cdr"
    path.write_bytes(serialize_message(template))
    log = open(tmp_path / "echo.log", "w")
    echo = subprocess.Popen(
        [sys.executable, "-m", "region_perception.ros.bench_node", "--echo", str(path)],
        env=child_env, stdout=log, stderr=subprocess.STDOUT,
    )
    client = RosClient("echo_test_client")
    answers: list[RegionResult] = []
    try:
        client.node.create_subscription(RegionResult, ECHO_RESULTS, answers.append, 100)
        queries = client.node.create_publisher(RegionQuery, ECHO_QUERIES, 100)
        camera = client.node.create_publisher(Image, "image", image_qos(1, "reliable"))
        frame = array_to_image_msg(np.zeros((48, 64, 3), np.uint8), "rgb8")

        def matched() -> bool:
            camera.publish(frame)  # the echo keeps the camera's frames as the node does
            return queries.get_subscription_count() > 0 and camera.get_subscription_count() > 0

        assert client.wait(matched, 120), "the echo never subscribed"
        def answered(qid: str) -> bool:  # asked again until the echo's answers reach us
            if not any(a.query_id == qid for a in answers):
                queries.publish(RegionQuery(query_id=qid, task=RegionQuery.CAPTION))
            return any(a.query_id == qid for a in answers)

        assert client.wait(lambda: answered("ping"), 60), "the echo never answered"
        for i in range(5):
            camera.publish(frame)
            queries.publish(RegionQuery(query_id=f"q{i}", task=RegionQuery.ASK))
        assert client.wait(lambda: sum(a.query_id.startswith("q") for a in answers) >= 5, 60)
        got = [a for a in answers if a.query_id.startswith("q")]
        assert sorted(a.query_id for a in got) == [f"q{i}" for i in range(5)]
        assert all(a.task == RegionQuery.ASK and a.model == "stored" for a in got)
        assert all(a.outputs[0].text == "stored answer" and a.outputs[0].mask == template.outputs[0].mask for a in got)
        assert echo.poll() is None, "the echo exited"
    finally:
        client.close()
        echo.send_signal(signal.SIGINT)
        try:
            assert echo.wait(timeout=30) == 0
        finally:
            if echo.poll() is None:
                echo.kill()
            log.close()
