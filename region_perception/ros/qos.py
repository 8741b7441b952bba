"""The QoS profiles of our image topics: what the camera and log replay publish, what the node subscribes."""

from __future__ import annotations

from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy


def camera_qos(reliable: bool) -> QoSProfile:
    """The image publisher's QoS: latest frame best-effort, or a short reliable history."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=1 if not reliable else 5,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
    )


def image_qos(depth: int, reliability: str) -> QoSProfile:
    """The node's image (and depth, CameraInfo) subscriptions: ``image_qos_depth`` and ``image_reliability``."""
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT,
    )
