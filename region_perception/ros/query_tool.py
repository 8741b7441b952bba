"""``region-perception-query``: send one region query and print its result.

Points, boxes, scribbles and masks as in the ``region-perception`` CLI (pixels of the
camera frame); the query goes out on ``region_queries`` (or to the ``~/query`` service
with ``--service``) and the matching ``RegionResult`` is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

import cv2
import numpy as np
import rclpy
from geometry_msgs.msg import Point32
from rclpy.utilities import remove_ros_args

from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.srv import QueryRegions

from ..common.status import Status
from ..geometry.region_parsing import RegionParseError, box_from_text, parse_points
from .image_conversion import array_to_image_msg
from .msg_dict import msg_to_dict
from .script_runner import client_node, script_main

TASKS = {
    "caption": RegionQuery.CAPTION,
    "classify": RegionQuery.CLASSIFY,
    "refer": RegionQuery.REFER,
    "ask": RegionQuery.ASK,
}


class UsageError(ValueError):
    """Bad command-line input to the query tool: one line, exit status 2."""


def build_query(args: argparse.Namespace) -> RegionQuery:
    q = RegionQuery()
    q.query_id = args.id or f"cli-{uuid.uuid4().hex[:8]}"
    q.task = TASKS[args.task] if args.task in TASKS else int(args.task)
    for text in args.points or []:
        q.regions.append(Region(kind=Region.POINTS, points=[Point32(x=x, y=y) for x, y in parse_points(text)]))
    for text in args.scribble or []:
        pts = parse_points(text, "--scribble")
        q.regions.append(Region(kind=Region.SCRIBBLE, points=[Point32(x=x, y=y) for x, y in pts]))
    for text in args.box or []:
        q.regions.append(Region(kind=Region.BOX, box=np.array(box_from_text(text), dtype=np.float32)))
    for path in args.mask or []:
        mask = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise UsageError(f"--mask {path!r}: not an image OpenCV can read")
        q.regions.append(Region(kind=Region.MASK, mask=array_to_image_msg((mask > 0).astype(np.uint8) * 255, "mono8")))
    q.text = args.text or ""
    q.labels = [v.strip() for v in args.labels.split(",")] if args.labels else []
    q.rank_labels = bool(args.rank)
    q.max_new_tokens = args.max_new_tokens
    q.timeout_s = float(args.deadline)
    return q


def summarize(result: RegionResult) -> dict:
    """The result as a dict, masks reduced to their size and area."""
    d = msg_to_dict(result)
    d["status_name"] = Status(result.status).name if result.status in Status._value2member_map_ else "?"
    for out, msg_out in zip(d["outputs"], result.outputs, strict=True):
        m = msg_out.mask
        area = int(np.count_nonzero(np.frombuffer(bytes(m.data), np.uint8))) if m.width else 0
        out["mask"] = {"width": m.width, "height": m.height, "area": area}
    return d


def send(
    node,
    query: RegionQuery,
    *,
    service: bool,
    timeout: float,
    service_name: str = "/region_perception/query",
    topic: str = "region_queries",
    results_topic: str = "region_results",
) -> RegionResult | None:
    """Send ``query`` and wait (spinning ``node``) for its one result; None on timeout."""
    deadline = time.monotonic() + timeout
    if service:
        client = node.create_client(QueryRegions, service_name)
        while not client.wait_for_service(timeout_sec=0.2):
            if time.monotonic() > deadline:
                return None
        future = client.call_async(QueryRegions.Request(query=query))
        while not future.done() and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        node.destroy_client(client)
        return future.result().result if future.done() else None
    got: list[RegionResult] = []
    sub = node.create_subscription(
        RegionResult, results_topic, lambda m: got.append(m) if m.query_id == query.query_id else None, 10
    )
    pub = node.create_publisher(RegionQuery, topic, 10)
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(0.2)  # let the node's result publisher match our subscription too
    pub.publish(query)
    while not got and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_subscription(sub)
    node.destroy_publisher(pub)
    return got[0] if got else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="region-perception-query", description=__doc__.splitlines()[0])
    p.add_argument("task", nargs="?", help="caption | classify | refer | ask (or a task number)")
    p.add_argument("--script", help="queries.yaml: send its queries, print each result as a JSON line")
    p.add_argument("--out", help="--script: write the JSON lines to this new file instead of stdout")
    p.add_argument("--frames", type=int, default=0, help="--script: camera frames to follow for every-N queries")
    p.add_argument("--image-topic", default="image", help="--script: the camera topic every-N queries follow")
    p.add_argument("--min-subscribers", type=int, default=1, help="--script: wait for this many query listeners")
    p.add_argument("--points", action="append", help='"x,y;x,y" pixels (repeat for more regions)')
    p.add_argument("--scribble", action="append")
    p.add_argument("--box", action="append", help="x1,y1,x2,y2 pixels")
    p.add_argument("--mask", action="append", help="mask PNG, nonzero = inside")
    p.add_argument("--text", help="REFER: the sentence; ASK: the question")
    p.add_argument("--labels", help='CLASSIFY candidates "a,b,c" (default: the node\'s vocabulary)')
    p.add_argument("--rank", action="store_true")
    p.add_argument("--max-new-tokens", type=int, default=0)
    p.add_argument("--deadline", type=float, default=0.0, help="seconds; 0 = none")
    p.add_argument("--id", help="query id (default: random)")
    p.add_argument("--service", action="store_true", help="call ~/query instead of the topic")
    p.add_argument("--node", default="/region_perception", help="the node's name, for the service")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the result")
    p.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    if args.script:  # a scripted list of queries (the run-log format)
        return script_main(args, argv, summarize)
    try:
        if args.task is None:
            raise UsageError("give a task (caption | classify | refer | ask) or --script queries.yaml")
        query = build_query(args)
    except (UsageError, RegionParseError, KeyError) as exc:
        print(f"region-perception-query: error: {exc}", file=sys.stderr)
        return 2
    with client_node(argv) as node:
        result = send(node, query, service=args.service, timeout=args.timeout, service_name=f"{args.node}/query")
    if result is None:
        print(
            f"region-perception-query: error: no result for {query.query_id} within {args.timeout:g} s", file=sys.stderr
        )
        return 1
    d = summarize(result)
    if args.json:
        print(json.dumps(d, indent=1))
    else:
        if result.weights_random:
            print("*** RANDOM WEIGHTS: the text below is not a prediction ***")
        print(f"{d['query_id']}: {d['status_name']}" + (f" - {result.error}" if result.error else ""))
        for i, out in enumerate(d["outputs"]):
            what = out["label"] or out["text"]
            print(
                f"  [{i}] {what}  bbox=({out['bbox']['x_offset']},{out['bbox']['y_offset']},"
                f"{out['bbox']['width']}x{out['bbox']['height']}) mask_area={out['mask']['area']}"
            )
        print(f"  model={result.model} latency={result.latency_ms:.0f} ms (inference {result.inference_ms:.0f} ms)")
    return 0 if result.status == RegionResult.OK else 3


if __name__ == "__main__":
    sys.exit(main())
