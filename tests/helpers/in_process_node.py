"""RegionPerceptionNode instances in the test's own process, configured, with what they publish captured.

``node.published`` collects the RegionResults and ``node.diagnostics`` the DiagnosticArrays instead
of publishing them; ``close`` unloads each node (waiting for a warm-up in the background) and shuts
its context down.
"""

from __future__ import annotations

from typing import Any

from .waiting import GENEROUS_S


class InProcessNodes:
    def __init__(self, **defaults: Any) -> None:
        """``defaults``: node parameters each ``make`` starts from (a test's own override them)."""
        self.defaults = defaults
        self.made: list[tuple[Any, Any]] = []

    def make(self, **params: Any) -> Any:
        import rclpy
        from rclpy.parameter import Parameter

        from region_perception.ros.node import RegionPerceptionNode

        context = rclpy.Context()
        rclpy.init(context=context)
        overrides = [Parameter(k, value=v) for k, v in {**self.defaults, **params}.items()]
        node = RegionPerceptionNode(context=context, parameter_overrides=overrides)
        self.made.append((node, context))
        node.configured = node.trigger_configure()
        node.published, node.diagnostics = [], []
        node.results_pub.publish = node.published.append
        node.diag_pub.publish = node.diagnostics.append
        return node

    def close(self) -> None:
        import rclpy

        for node, context in self.made:
            node._unload("test over")
            if node._warm_thread is not None:
                node._warm_thread.join(GENEROUS_S)
            node.destroy_node()
            rclpy.shutdown(context=context)
