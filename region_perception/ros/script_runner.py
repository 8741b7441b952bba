"""``region-perception-query --script queries.yaml``: the run-log script against a live node.

Stamped queries (``at:``) are sent at once, each naming its frame by stamp; every-N
queries (``every:``) follow the camera topic and name every Nth frame this tool receives,
for ``--frames`` frames. Results are printed (or written with ``--out``) as JSON lines with
the same fields as ``run-log``'s, so the two can be compared line by line.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import numpy as np
import rclpy
from geometry_msgs.msg import Point32
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from region_perception.msg import Region, RegionQuery, RegionResult

from ..logs.cdr import header_stamp_ns
from ..logs.script import ScriptQuery, ScriptRegion
from .image_conversion import array_to_image_msg

KINDS = {
    "points": Region.POINTS,
    "scribble": Region.SCRIBBLE,
    "box": Region.BOX,
    "mask": Region.MASK,
    "whole": Region.WHOLE_IMAGE,
}


def region_msg(region: ScriptRegion) -> Region:
    msg = Region(kind=KINDS[region.kind], name=region.name)
    msg.points = [Point32(x=float(x), y=float(y)) for x, y in region.points]
    if region.box:
        msg.box = np.array(region.box, dtype=np.float32)
    if region.mask is not None:
        msg.mask = array_to_image_msg(region.mask.astype(np.uint8) * 255, "mono8")
    return msg


def query_msg(q: ScriptQuery, query_id: str, stamp_ns: int) -> RegionQuery:
    msg = RegionQuery(query_id=query_id, task=q.task, text=q.text, rank_labels=q.rank)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.regions = [region_msg(r) for r in q.regions]
    msg.labels = list(q.labels)
    msg.max_new_tokens, msg.num_beams, msg.timeout_s = q.max_new_tokens, q.num_beams, q.timeout_s
    return msg


def run_script(
    node,
    queries: list[ScriptQuery],
    out: TextIO,
    summarize,
    *,
    timeout: float,
    frames: int = 0,
    image_topic: str = "image",
    topic: str = "region_queries",
    results_topic: str = "region_results",
    min_subscribers: int = 1,
) -> Counter[str]:
    """Send every scripted query, write each result as a JSON line; counts per status (MISSING too)."""
    got: dict[str, RegionResult] = {}
    sent: list[str] = []
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    node.create_subscription(RegionResult, results_topic, lambda m: got.setdefault(m.query_id, m), reliable)
    pub = node.create_publisher(RegionQuery, topic, reliable)
    deadline = time.monotonic() + timeout

    def matched() -> bool:  # the node, and every other known listener (a recorder), hear our queries
        subs = pub.get_subscription_count()
        return (
            subs >= max(1, min_subscribers, node.count_subscribers(topic)) and node.count_publishers(results_topic) > 0
        )

    while not matched() and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)

    def send(q: ScriptQuery, qid: str, stamp: int) -> None:
        pub.publish(query_msg(q, qid, stamp))
        sent.append(qid)

    for q in queries:
        if not q.every:
            send(q, q.query_id, q.at_ns or 0)
    every = [q for q in queries if q.every]
    if every and frames > 0:
        seen = [0]

        def on_frame(data: bytes) -> None:
            index = seen[0]
            if index >= frames:
                return
            seen[0] += 1
            for q in every:
                if index % q.every == 0:
                    send(q, f"{q.query_id}@{index}", header_stamp_ns(data))

        sensor = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        node.create_subscription(Image, image_topic, on_frame, sensor, raw=True)
        while seen[0] < frames and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
    while any(qid not in got for qid in sent) and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.05)
    counts: Counter[str] = Counter()
    for qid in sent:
        if qid in got:
            record = summarize(got[qid])
            counts[record["status_name"]] += 1
        else:
            record = {"query_id": qid, "status_name": "MISSING", "error": f"no result within {timeout:g} s"}
            counts["MISSING"] += 1
        out.write(json.dumps(record) + "\n")
    return counts


@contextmanager
def client_node(argv: list[str]) -> Iterator:
    """rclpy started with ``argv`` and a uniquely named client node, both gone on leaving (the query tool's)."""
    rclpy.init(args=argv)
    node = rclpy.create_node(f"region_perception_query_{uuid.uuid4().hex[:6]}")
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown()


def script_main(args, argv: list[str], summarize) -> int:
    """The ``--script`` mode of ``region-perception-query``: 0 all OK, 3 some not OK, 1 some missing, 2 bad input."""
    import sys

    from ..logs import LogError
    from ..logs.script import load_script

    try:
        queries = load_script(args.script)
        if any(q.every for q in queries) and args.frames <= 0:
            raise LogError("every-N queries need --frames N (how many camera frames to follow)")
        out = open(args.out, "x") if args.out else sys.stdout
    except (LogError, OSError) as exc:
        print(f"region-perception-query: error: {exc}", file=sys.stderr)
        return 2
    try:
        with client_node(argv) as node:
            counts = run_script(
                node,
                queries,
                out,
                summarize,
                timeout=args.timeout,
                frames=args.frames,
                image_topic=args.image_topic,
                min_subscribers=args.min_subscribers,
            )
    finally:
        if out is not sys.stdout:
            out.close()
    print(f"region-perception-query: {dict(counts)}", file=sys.stderr)
    if counts.get("MISSING"):
        return 1
    return 0 if set(counts) <= {"OK"} else 3
