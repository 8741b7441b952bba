"""The following section of ``make bench``: three goals through the real node, each followed, each re-checked
by the model, and the camera's received rate and a query's overhead measured while they run."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_three_followed_objects_are_measured_through_the_node(tmp_path):
    from region_perception.ros.bench_follow_node import FOLLOWED, bench_follow_node

    report = bench_follow_node(tmp_path, window_s=3.0)
    figures = {f["name"]: f for f in report["figures"]}
    received = figures["following3_camera_received_hz"]
    assert received["value"] > 0 and received["detail"]["node_cpu_pct"] > 0
    followed = figures["following3_followed_hz_per_goal"]["detail"]
    assert len(followed["per_goal_hz"]) == FOLLOWED and min(followed["per_goal_hz"]) > 0, followed
    assert len(followed["model_calls"]) == FOLLOWED and min(followed["model_calls"]) >= 1, followed
    assert followed["tracking_share"] > 0.5, followed  # clicked objects on a still scene stay tracked
    overhead = figures["following3_query_overhead_ms"]
    assert overhead["value"] >= 0 and overhead["detail"]["before_following_ms"] >= 0
