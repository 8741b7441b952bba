"""A test-side ROS client: spins in a thread, collects what the node publishes."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image
from visualization_msgs.msg import MarkerArray

from region_perception.msg import RegionQuery, RegionResult
from region_perception.ros.spin import make_executor, spin_in_background
from region_perception.srv import QueryRegions


class RosClient:
    def __init__(self, name: str = "test_client") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = make_executor(self.context)
        self.executor.add_node(self.node)
        self.lock = threading.Lock()
        self.frames: dict[tuple[int, int], Image] = {}
        self.results: dict[str, list[RegionResult]] = defaultdict(list)
        self.overlays: list[Image] = []
        self.markers: list[MarkerArray] = []
        self.diagnostics: list[DiagnosticArray] = []
        self.node.create_subscription(Image, "image", self._frame, 5)
        self.node.create_subscription(RegionResult, "region_results", self._result, 1000)
        self.node.create_subscription(MarkerArray, "/region_perception/markers", self.markers.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self.query_pub = self.node.create_publisher(RegionQuery, "region_queries", 1000)
        self.client = self.node.create_client(QueryRegions, "/region_perception/query")
        self._overlay_sub = None
        self._stop, self.thread = spin_in_background(self.executor, "test-client")

    def _frame(self, msg: Image) -> None:
        with self.lock:
            self.frames[(msg.height, msg.width)] = msg

    def _result(self, msg: RegionResult) -> None:
        with self.lock:
            self.results[msg.query_id].append(msg)

    def subscribe_overlay(self) -> None:
        self._overlay_sub = self.node.create_subscription(Image, "/region_perception/overlay", self.overlays.append, 5)

    def wait(self, predicate, timeout: float = 60.0) -> bool:
        """Until ``predicate()`` holds (checked every 50 ms), at most ``timeout`` s: never a fixed sleep."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def fresh_frame(self, size: tuple[int, int], timeout: float = 30.0) -> Image:
        """A frame of this size stamped after now (older samples may still be queued here)."""
        since = self.node.get_clock().now().nanoseconds

        def fresh() -> bool:
            f = self.frames.get(size)
            return f is not None and f.header.stamp.sec * 1_000_000_000 + f.header.stamp.nanosec > since

        assert self.wait(fresh, timeout), f"no {size} frame from the camera"
        return self.frames[size]

    def wait_active(self, timeout: float = 120.0) -> None:
        """Until the node's diagnostics say it is active and receiving frames."""

        def active() -> bool:
            d = self.diagnostic_values()
            return d.get("device", "none") != "none" and int(d.get("frames_received", "0")) > 0

        assert self.wait(active, timeout), f"node not active: {self.diagnostic_values()}"

    def ask(self, query: RegionQuery, timeout: float = 120.0) -> RegionResult:
        self.query_pub.publish(query)
        assert self.wait(lambda: query.query_id in self.results, timeout), f"no result for {query.query_id}"
        return self.results[query.query_id][0]

    def call(self, request: QueryRegions.Request, timeout: float = 120.0) -> RegionResult:
        assert self.client.wait_for_service(timeout_sec=60)
        future = self.client.call_async(request)
        assert self.wait(future.done, timeout), "service did not answer"
        return future.result().result

    def diagnostic_values(self) -> dict[str, str]:
        for array in reversed(self.diagnostics):
            for status in array.status:
                if status.name.startswith("region_perception"):
                    values = {kv.key: kv.value for kv in status.values}
                    return values | {"_level": str(status.level), "_message": status.message}
        return {}

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
