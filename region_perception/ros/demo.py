"""``make demo``: the node on a demo camera, a scripted set of queries, overlays saved.

Starts the node (``config/default.yaml``) and the demo camera (bundled photographs) as
separate processes, on loopback in a domain of its own; then asks about specific frames
by stamp (a point caption, a referring sentence, a box classification), prints each
result and saves the node's overlay image for it under ``demo_out/``.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point32
from sensor_msgs.msg import Image

from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.srv import QueryRegions

from ..ros_env import apply_local_ros_env
from ..status import Status
from .image_conversion import image_msg_to_rgb
from .processes import camera_command, node_command
from .query_tool import send

REPO = Path(__file__).resolve().parents[2]

# Photo (by its size) -> queries; coordinates are pixels of that photo.
SCRIPT = [
    ("astronaut", (512, 512), "caption", {"points": [(255, 120)]}, "caption of a point on the face"),
    ("astronaut", (512, 512), "refer", {"text": "the white helmet on the table"}, "refer with a sentence"),
    ("coffee", (400, 600), "classify", {"box": (140, 20, 480, 330)}, "classify a box (COCO-80)"),
    ("chelsea", (300, 451), "caption", {"box": (100, 20, 330, 290)}, "caption of a box"),
]


def make_query(task: str, spec: dict, header, query_id: str) -> RegionQuery:
    q = RegionQuery(query_id=query_id, header=header)
    q.task = {"caption": 0, "classify": 1, "refer": 2, "ask": 3}[task]
    if "points" in spec:
        q.regions.append(
            Region(kind=Region.POINTS, points=[Point32(x=float(x), y=float(y)) for x, y in spec["points"]])
        )
    if "box" in spec:
        q.regions.append(Region(kind=Region.BOX, box=np.array(spec["box"], dtype=np.float32)))
    q.text = spec.get("text", "")
    return q


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="region-perception-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(REPO / "config" / "default.yaml"))
    parser.add_argument("--model", help="override the model parameter")
    parser.add_argument("--out", default=str(REPO / "demo_out"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the node to come up")
    args = parser.parse_args(argv)
    env = dict(apply_local_ros_env())
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # reliable image QoS between the demo camera and the node: on loopback, best-effort
    # frames of ~1 MB lose fragments, and the demo asks about specific frames
    overrides: dict[str, object] = {"image_reliability": "reliable", "image_qos_depth": 5}
    if args.model:
        overrides["model"] = args.model
    # reliable image QoS between the demo camera and the node: on loopback, best-effort
    # frames of ~1 MB lose fragments, and the demo asks about specific frames
    node_cmd = node_command(args.params, **overrides)
    procs = [
        subprocess.Popen(node_cmd, env=env),
        subprocess.Popen(camera_command("--rate", "4", "--reliable"), env=env),
    ]
    rclpy.init()
    client = rclpy.create_node("region_perception_demo")
    frames: dict[tuple[int, int], Image] = {}
    overlays: list[Image] = []
    client.create_subscription(Image, "image", lambda m: frames.__setitem__((m.height, m.width), m), 5)
    client.create_subscription(Image, "/region_perception/overlay", overlays.append, 10)
    diagnostics: list[DiagnosticArray] = []
    client.create_subscription(DiagnosticArray, "/diagnostics", diagnostics.append, 10)
    failures = 0
    try:
        deadline = time.monotonic() + args.timeout
        ready = client.create_client(QueryRegions, "/region_perception/query")
        print("[demo] waiting for the node to load its model ...")
        while not ready.wait_for_service(timeout_sec=0.5):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                print("[demo] the node did not come up", file=sys.stderr)
                return 1
        # active (model loaded) and receiving frames, as its diagnostics say
        while not any(
            st.message == "ok" and int(dict((kv.key, kv.value) for kv in st.values).get("frames_received", 0))
            for arr in diagnostics
            for st in arr.status
            if st.name.startswith("region_perception")
        ):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                print("[demo] the node did not become active", file=sys.stderr)
                return 1
            rclpy.spin_once(client, timeout_sec=0.1)
        for i, (photo, size, task, spec, what) in enumerate(SCRIPT):
            # a frame the node has surely buffered: one stamped from now on (older samples may
            # still sit in our reader's history from before the node subscribed)
            since = client.get_clock().now().nanoseconds

            def fresh(size=size, since=since) -> bool:
                f = frames.get(size)
                return f is not None and f.header.stamp.sec * 1_000_000_000 + f.header.stamp.nanosec > since

            wait = time.monotonic() + 30
            while not fresh() and time.monotonic() < wait:
                rclpy.spin_once(client, timeout_sec=0.1)
            if not fresh():
                print(f"[demo] {what}: no '{photo}' frame from the camera within 30 s", file=sys.stderr)
                failures += 1
                continue
            frame = frames[size]
            query = make_query(task, spec, frame.header, f"demo-{i}-{task}")
            overlays.clear()
            result: RegionResult | None = send(client, query, service=False, timeout=120)
            if result is None:
                print(f"[demo] {what}: no result", file=sys.stderr)
                failures += 1
                continue
            stamp_ok = (result.header.stamp.sec, result.header.stamp.nanosec) == (
                frame.header.stamp.sec,
                frame.header.stamp.nanosec,
            )
            status = Status(result.status).name
            answer = [o.label or o.text for o in result.outputs]
            flag = "  [RANDOM WEIGHTS: not a prediction]" if result.weights_random else ""
            print(f"[demo] {i}: {what} on '{photo}' -> {status}: {answer}{flag}")
            print(f"         frame stamp matches: {stamp_ok}; latency {result.latency_ms:.0f} ms; model {result.model}")
            if result.task == RegionQuery.REFER:
                print(
                    f"         selected proposal {result.selected_index} of {len(result.candidate_scores)}; "
                    f"scores {[round(s, 3) for s in result.candidate_scores]}"
                )
            ok = result.status == RegionResult.OK and stamp_ok
            wait = time.monotonic() + 5
            while not overlays and time.monotonic() < wait:
                rclpy.spin_once(client, timeout_sec=0.1)
            if overlays:
                path = out / f"{i:02d}_{task}_{photo}.png"
                cv2.imwrite(str(path), cv2.cvtColor(image_msg_to_rgb(overlays[-1]), cv2.COLOR_RGB2BGR))
                print(f"         overlay saved: {path.relative_to(REPO) if path.is_relative_to(REPO) else path}")
            else:
                print("         (no overlay received)")
                ok = False
            failures += int(not ok)
    finally:
        client.destroy_node()
        rclpy.shutdown()
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    print(f"[demo] done: {len(SCRIPT) - failures}/{len(SCRIPT)} queries answered OK on their frame, overlays in {out}")
    return 0 if failures == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
