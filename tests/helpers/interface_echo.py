"""Subscriber process for the cross-process interface test.

Subscribes to a RegionQuery and a RegionResult topic, prints READY, then prints each
message it receives as one JSON line and exits once it has one of each (or times out).
"""

import json
import sys
import time

import rclpy
from rclpy.node import Node

from region_perception.common.ros_env import apply_local_ros_env
from region_perception.msg import RegionQuery, RegionResult
from region_perception.ros.msg_dict import msg_to_dict


def main() -> int:
    apply_local_ros_env()
    rclpy.init()
    node = Node("interface_echo")
    got: dict[str, dict] = {}

    def keep(kind: str):
        def callback(msg) -> None:
            if kind not in got:
                got[kind] = msg_to_dict(msg)
                print(json.dumps({"kind": kind, "msg": got[kind]}), flush=True)

        return callback

    node.create_subscription(RegionQuery, "rp_test/query", keep("query"), 10)
    node.create_subscription(RegionResult, "rp_test/result", keep("result"), 10)
    print("READY", flush=True)
    deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
    while len(got) < 2 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
    node.destroy_node()
    rclpy.shutdown()
    return 0 if len(got) == 2 else 1


if __name__ == "__main__":
    sys.exit(main())
