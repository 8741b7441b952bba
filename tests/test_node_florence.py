"""The node with the Florence-2 backend: only the `model` parameter changes.

A module of its own, so that the RegionVLM node of test_node.py (same node name, same
service) has stopped before this one starts.
"""

from __future__ import annotations

import signal
import subprocess

import numpy as np
import pytest

from region_perception.msg import RegionQuery, RegionResult
from region_perception.ros.image_conversion import array_to_image_msg
from region_perception.ros.processes import node_command
from region_perception.srv import QueryRegions

from .test_node import box, points, query

pytestmark = pytest.mark.slow


def test_the_node_runs_florence2_by_changing_the_model_parameter_only(child_env, astronaut):
    """Same parameters file, `-p model:=tiny-florence2`: caption, classify and refer answer."""
    from .helpers.ros_client import RosClient

    node = subprocess.Popen(
        node_command(model="tiny-florence2", diagnostics_period_s=0.5),
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = RosClient("florence_client")
    try:
        assert client.client.wait_for_service(timeout_sec=120)
        assert client.wait(lambda: client.diagnostic_values().get("model") == "tiny-florence2", 120)
        image = np.ascontiguousarray(astronaut[::4, ::4])  # 128 x 128 photograph
        for i, (task, fields) in enumerate(
            [
                (RegionQuery.CAPTION, {"regions": [box(10, 10, 60, 60)]}),
                (RegionQuery.CLASSIFY, {"regions": [points((30, 30))]}),
                (RegionQuery.REFER, {"text": "the bright part"}),
            ]
        ):
            req = QueryRegions.Request(query=query(f"flo-{i}", task, **fields))
            req.image = array_to_image_msg(image, "rgb8")
            result = client.call(req)
            assert result.status == RegionResult.OK, result.error
            assert result.model == "tiny-florence2" and result.weights_random
        assert (
            client.call(
                QueryRegions.Request(
                    query=query("flo-ask", RegionQuery.ASK, text="why?"), image=array_to_image_msg(image, "rgb8")
                )
            ).status
            == RegionResult.INVALID_QUERY
        )
    finally:
        client.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()
