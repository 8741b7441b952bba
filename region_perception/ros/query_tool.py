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
    p.add_argument("task", nargs="?", help="caption | classify | refer | ask (or a task number); "
                   "follow: see 'follow --help'")
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


def build_follow_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="region-perception-query follow",
                                description="follow one object: its state, box and position on every frame")
    p.add_argument("text", nargs="?", default="", help="a sentence naming the object (REFER finds it first)")
    p.add_argument("--points", help='"x,y;x,y" pixels of the latest frame (instead of a sentence)')
    p.add_argument("--box", help="x1,y1,x2,y2 pixels of the latest frame")
    p.add_argument("--rate", type=float, default=5.0, help="followed frames per second (default 5)")
    p.add_argument("--seconds", type=float, default=10.0, help="time limit (default 10; 0 = until Ctrl-C)")
    p.add_argument("--recheck-every", dest="recheck_every", type=int, default=0,
                   help="frames between the model's re-checks (0 = the node's default)")
    p.add_argument("--lost-timeout", dest="lost_timeout", type=float, default=0.0,
                   help="seconds out of sight before the follow ends LOST (0 = the node's default)")
    p.add_argument("--node", default="/region_perception", help="the node's name")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the server and the goal")
    p.add_argument("--json", action="store_true", help="one JSON line per feedback, then the result")
    return p


def follow_goal(args: argparse.Namespace):
    """The FollowRegion goal of the ``follow`` sub-command's arguments."""
    from region_perception.action import FollowRegion

    goal = FollowRegion.Goal(rate_hz=float(args.rate), time_limit_s=float(args.seconds),
                             recheck_every=int(args.recheck_every), lost_timeout_s=float(args.lost_timeout))
    goal.text = args.text or ""
    if args.points:
        goal.region = Region(kind=Region.POINTS, points=[Point32(x=x, y=y) for x, y in parse_points(args.points)])
    elif args.box:
        goal.region = Region(kind=Region.BOX, box=np.array(box_from_text(args.box), dtype=np.float32))
    elif not goal.text:
        raise UsageError("follow needs a sentence, --points or --box")
    return goal


class FollowRejections:
    """The node's reasons for the follow goals it rejected, read from ``/diagnostics`` (an action's
    REJECT carries none): each rejection is a WARN status ``<node>: follow`` whose value ``goal`` is
    the goal's fingerprint (``follow_server.goal_fingerprint``) and ``reason`` the reason."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray

        self.reasons: dict[str, str] = {}
        self.sub = node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.endswith(": follow"):
                values = {kv.key: kv.value for kv in status.values}
                if "goal" in values:
                    self.reasons[values["goal"]] = values.get("reason") or status.message

    def wait_reason(self, node, fingerprint: str, timeout_s: float) -> str:
        """The reason for the goal of this fingerprint ("" when none came within ``timeout_s``)."""
        end = time.monotonic() + timeout_s
        while fingerprint not in self.reasons and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        return self.reasons.get(fingerprint, "")


def follow_main(argv: list[str], rest: list[str]) -> int:
    """``region-perception-query follow "the red circle" --seconds 10``: print each followed frame."""
    from rclpy.action import ActionClient

    from region_perception.action import FollowRegion

    from .follow_server import goal_fingerprint

    args = build_follow_parser().parse_args(rest)
    try:
        goal = follow_goal(args)
    except (UsageError, RegionParseError) as exc:
        print(f"region-perception-query: error: {exc}", file=sys.stderr)
        return 2
    reasons = {FollowRegion.Result.CANCELLED: "cancelled", FollowRegion.Result.TIME_LIMIT: "time limit",
               FollowRegion.Result.LOST: "lost", FollowRegion.Result.FAILED: "failed",
               FollowRegion.Result.SHUTDOWN: "shutdown"}

    def show(fb) -> None:
        d = {"track_id": fb.track_id, "frame": fb.frame, "state": fb.state, "score": round(fb.score, 3),
             "rechecked": fb.rechecked, "box": [fb.box.x_offset, fb.box.y_offset, fb.box.width, fb.box.height],
             "stamp": fb.header.stamp.sec + fb.header.stamp.nanosec * 1e-9}
        if fb.has_position:
            d["position_m"] = [round(v, 3) for v in (fb.position.x, fb.position.y, fb.position.z)]
        if args.json:
            print(json.dumps(d), flush=True)
        else:
            where = f" at {d['position_m']} m" if "position_m" in d else ""
            print(f"#{d['track_id']} frame {d['frame']}: {d['state']:<10} score {d['score']:.2f} box {d['box']}{where}",
                  flush=True)

    with client_node(argv) as node:
        client = ActionClient(node, FollowRegion, f"{args.node}/follow")
        rejections = FollowRejections(node)  # listening before the goal goes, so its reason is not missed
        if not client.wait_for_server(timeout_sec=args.timeout):
            print(f"region-perception-query: error: no {args.node}/follow server within {args.timeout:g} s",
                  file=sys.stderr)
            return 1
        end = time.monotonic() + min(args.timeout, 10.0)
        while rejections.sub.get_publisher_count() == 0 and time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
        fut = client.send_goal_async(goal, feedback_callback=lambda m: show(m.feedback))
        rclpy.spin_until_future_complete(node, fut, timeout_sec=args.timeout)
        handle = fut.result() if fut.done() else None
        if handle is None:
            print(f"region-perception-query: error: no answer to the follow goal within {args.timeout:g} s",
                  file=sys.stderr)
            return 1
        if not handle.accepted:
            reason = rejections.wait_reason(node, goal_fingerprint(goal), min(args.timeout, 5.0))
            print("region-perception-query: error: the follow goal was rejected: "
                  + (reason or "no reason reached this tool (the node's log says why)"), file=sys.stderr)
            return 1
        res_fut = handle.get_result_async()
        try:
            while not res_fut.done():
                rclpy.spin_once(node, timeout_sec=0.1)
        except KeyboardInterrupt:  # Ctrl-C: cancel, and still print the one result
            handle.cancel_goal_async()
            while not res_fut.done():
                rclpy.spin_once(node, timeout_sec=0.1)
        r = res_fut.result().result
    summary = {"reason": reasons.get(r.reason, str(r.reason)), "message": r.message, "track_id": r.track_id,
               "frames": r.frames, "rechecks": r.rechecks, "model_calls": r.model_calls,
               "mean_score": round(r.mean_score, 3)}
    print(json.dumps(summary) if args.json else f"ended: {summary['reason']} ({r.message}); {r.frames} frames, "
          f"{r.rechecks} re-checks ({r.model_calls} by the model), mean score {r.mean_score:.2f}")
    return 0 if r.reason in (FollowRegion.Result.TIME_LIMIT, FollowRegion.Result.CANCELLED) else 3


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    rest = remove_ros_args(argv)[1:]
    if rest[:1] == ["follow"]:
        return follow_main(argv, rest[1:])
    args = build_parser().parse_args(rest)
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
