"""``~/follow``: an action client in this process follows objects of the moving synthetic camera
through the follow server in another process (the bare runner: no model, colour re-checks)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from region_perception.datasets.synthetic_motion import motion_sequence
from region_perception.ros.processes import camera_command

rclpy = pytest.importorskip("rclpy")
from geometry_msgs.msg import Point32  # noqa: E402

from region_perception.action import FollowRegion  # noqa: E402
from region_perception.msg import Region  # noqa: E402
from region_perception.ros.follow_server import goal_problem, initial_mask  # noqa: E402

R = FollowRegion.Result


# -- without ROS traffic ------------------------------------------------------------------------
def _goal(**kw) -> FollowRegion.Goal:
    g = FollowRegion.Goal(rate_hz=5.0)
    g.region = Region(kind=Region.POINTS, points=[Point32(x=10.0, y=10.0)])
    for k, v in kw.items():
        setattr(g, k, v)
    return g


def test_bad_goals_have_a_reason():
    assert goal_problem(_goal()) == ""
    assert "rate_hz" in goal_problem(_goal(rate_hz=0.0))
    assert "time_limit_s" in goal_problem(_goal(time_limit_s=-1.0))
    assert "points" in goal_problem(_goal(region=Region(kind=Region.POINTS)))
    assert "box" in goal_problem(_goal(region=Region(kind=Region.BOX)))
    assert "mask" in goal_problem(_goal(region=Region(kind=Region.MASK)))
    assert "whole-image" in goal_problem(_goal(region=Region(kind=Region.WHOLE_IMAGE)))
    assert goal_problem(_goal(region=Region(kind=Region.WHOLE_IMAGE), text="the red circle")) == ""


def test_initial_mask_from_a_point_or_a_box_without_a_segmenter():
    seq = motion_sequence(1, 0)
    fr = seq.render(0)
    oid = seq.by_role("crossing_near").object_id
    truth = fr.visible[oid]
    ys, xs = np.nonzero(truth)
    k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
    points = Region(kind=Region.POINTS, points=[Point32(x=float(xs[k]), y=float(ys[k]))])
    box = Region(kind=Region.BOX, box=np.array([xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3], np.float32))
    for region in (points, box):
        got = initial_mask(fr.image, region)
        assert (got & truth).sum() / (got | truth).sum() > 0.9
    background = Region(kind=Region.POINTS, points=[Point32(x=1.0, y=1.0)])
    with pytest.raises(ValueError, match="background"):
        initial_mask(fr.image, background)


# -- a server process, a camera process, this process the client ---------------------------------
class Client:
    """Action client + ground-truth listener, spun on a thread."""

    def __init__(self) -> None:
        from std_msgs.msg import String
        from visualization_msgs.msg import MarkerArray

        from region_perception.ros.spin import make_executor, spin_in_background

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("follow_test_client", context=self.context)
        self.action = rclpy.action.ActionClient(self.node, FollowRegion, "/region_perception/follow")
        self.truths: dict[int, dict] = {}
        self.lock = threading.Lock()

        def on_truth(msg: String) -> None:
            t = json.loads(msg.data)
            with self.lock:
                self.truths[t["stamp_ns"]] = t
                if len(self.truths) > 400:
                    for s in sorted(self.truths)[:100]:
                        del self.truths[s]

        self.node.create_subscription(String, "image/ground_truth", on_truth, 50)
        self.marker_ids: set[tuple[int, int]] = set()  # (track id, action)

        def on_tracks(msg: MarkerArray) -> None:
            with self.lock:
                self.marker_ids.update((m.id, m.action) for m in msg.markers)

        self.node.create_subscription(MarkerArray, "/region_perception/tracks", on_tracks, 50)
        self.executor = make_executor(self.context)
        self.executor.add_node(self.node)
        self.stop, self.thread = spin_in_background(self.executor, "follow-test")

    def wait(self, predicate, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.02)
        return False

    def truth_at_sequence_start(self, timeout: float = 120.0) -> dict | None:
        """The truth of a frame near the start of a sequence (so the crossing and occlusion are ahead)."""
        seen: list[dict] = []

        def found() -> bool:
            with self.lock:
                seen[:] = [t for t in self.truths.values() if t["index"] <= 4]
                return bool(seen)

        with self.lock:
            self.truths.clear()
        return max(seen, key=lambda t: t["stamp_ns"]) if self.wait(found, timeout) else None

    def wait_for_server(self, timeout: float) -> bool:
        """Until the server is discovered *and* a goal's answer comes back.

        ``wait_for_server`` sees the server's endpoints from the client's side; the server may not
        yet have matched the client's response reader, and a goal answered before that is never
        heard. A goal the server rejects by design (rate 0) is asked until one answer arrives.
        """
        end = time.monotonic() + timeout
        if not self.action.wait_for_server(timeout_sec=timeout):
            return False
        while time.monotonic() < end:
            fut = self.action.send_goal_async(_goal(rate_hz=0.0))
            if self.wait(fut.done, min(5.0, max(0.0, end - time.monotonic()))):
                return True
        return False

    def send(self, goal: FollowRegion.Goal, timeout: float = 60.0):
        """(goal handle or None when rejected, feedback list)."""
        feedback: list = []
        fut = self.action.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback))
        assert self.wait(fut.done, timeout), "no goal response"
        handle = fut.result()
        return (handle if handle.accepted else None), feedback

    def result(self, handle, timeout: float = 60.0):
        fut = handle.get_result_async()
        assert self.wait(fut.done, timeout), "no result"
        return fut.result()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


# "lost" is measured in wall time: where a test is not about losing the object, a starved machine (frames
# late, an occlusion taking longer to pass) must not end the goal as LOST
SLOW_MACHINE_S = 600.0


def _stop(proc: subprocess.Popen) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None


def _mask_goal(obj: dict, stamp_ns: int, rate_hz: float, **kw) -> FollowRegion.Goal:
    from region_perception.datasets.synthetic_camera import mask_from_truth
    from region_perception.ros.image_conversion import mask_to_msg

    g = FollowRegion.Goal(rate_hz=rate_hz, **kw)
    g.header.stamp.sec, g.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    g.region = Region(kind=Region.MASK, mask=mask_to_msg(mask_from_truth(obj)))
    return g


def _iou(feedback, truths: dict[int, dict], object_id: int) -> list[float]:
    from region_perception.datasets.synthetic_camera import mask_from_truth
    from region_perception.service.image_decoding import mask_msg_to_bool

    out = []
    for fb in feedback:
        t = truths.get(fb.header.stamp.sec * 1_000_000_000 + fb.header.stamp.nanosec)
        if t is None:
            continue
        truth = mask_from_truth(next(o for o in t["objects"] if o["id"] == object_id))
        pred = mask_msg_to_bool(fb.mask) if fb.mask.width else np.zeros_like(truth)
        union = (pred | truth).sum()
        out.append(float((pred & truth).sum() / union) if union else 1.0)
    return out


@pytest.mark.slow
def test_follow_through_crossing_and_occlusion_cancel_bad_goals_and_shutdown(child_env):
    server = subprocess.Popen([sys.executable, "-m", "region_perception.ros.follow_server", "--depth"],
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    camera = subprocess.Popen(camera_command("--source", "synthetic", "--motion", "--rate", "8", "--reliable"),
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = Client()
    try:
        assert client.wait_for_server(120), "no ~/follow server"
        # bad goals are rejected, before any work
        for bad in (_goal(rate_hz=0.0), _goal(time_limit_s=-2.0), _goal(region=Region(kind=Region.BOX))):
            handle, _ = client.send(bad)
            assert handle is None
        start = client.truth_at_sequence_start()
        assert start is not None, "no ground truth from the camera"
        by_role = {o["role"]: o for o in start["objects"]}
        hidden, near, far = by_role["occluded"], by_role["crossing_near"], by_role["crossing_far"]
        # three goals at once: the object that goes behind the occluder, and both crossing ones
        # the hidden one ends LOST below, once the camera stops
        h_hidden, fb_hidden = client.send(_mask_goal(hidden, start["stamp_ns"], 8.0, lost_timeout_s=20.0))
        h_near, fb_near = client.send(_mask_goal(near, start["stamp_ns"], 4.0, time_limit_s=3.0,
                                                         lost_timeout_s=SLOW_MACHINE_S))
        h_far, fb_far = client.send(_mask_goal(far, start["stamp_ns"], 8.0, lost_timeout_s=SLOW_MACHINE_S))
        assert h_hidden and h_near and h_far
        # an unknown frame is accepted (it may arrive) and ends FAILED with the reason; the others go on
        h_old, _ = client.send(_mask_goal(hidden, 1_000_000_000, 5.0))
        old = client.result(h_old)
        assert old.result.reason == R.FAILED and "unknown frame" in old.result.message

        def states() -> list[str]:
            return [f.state for f in list(fb_hidden)]

        # the hidden object: out of sight, then found again (the camera's sequence lasts 6 s at 8 Hz)
        assert client.wait(lambda: "occluded" in states(), 120), states()
        assert client.wait(lambda: "reacquired" in states()[states().index("occluded"):], 120), states()
        assert client.wait(lambda: len(fb_far) >= 20, 120)
        # a time limit ends a goal by itself, with one result
        near_result = client.result(h_near, 120)
        assert near_result.result.reason == R.TIME_LIMIT and near_result.result.frames == len(fb_near) > 0
        # cancel ends the others at once, each with one result
        cancel_far = h_far.cancel_goal_async()
        assert client.wait(cancel_far.done, 60)
        far_result = client.result(h_far)
        assert far_result.result.reason == R.CANCELLED and far_result.status == 5  # CANCELED
        with client.lock:
            truths = dict(client.truths)
        ious_far = _iou(fb_far, truths, far["id"])
        ious_hidden = _iou(fb_hidden, truths, hidden["id"])
        assert len(ious_far) >= 10 and np.mean(ious_far) > 0.8, ious_far
        assert len(ious_hidden) >= 10 and np.mean(ious_hidden) > 0.7, ious_hidden
        seen = [f for f in fb_hidden if f.state in ("tracking", "reacquired")]
        assert all(f.has_position and 2.5 < f.position.z < 3.5 for f in seen[:5]), "depth: the object at 3 m"
        frames = [f.frame for f in fb_far]
        assert frames == sorted(frames) and len(set(frames)) == len(frames)
        # listeners: a marker per track id on ~/tracks, deleted when its goal ends
        tid = fb_far[0].track_id
        assert client.wait(lambda: {(tid, 0), (tid, 2)} <= client.marker_ids, 60), client.marker_ids
        # the camera stops: a follow ends LOST, not hung; one told to wait longer is still in flight
        h_lost, _ = client.send(_mask_goal(hidden, 0, 8.0, lost_timeout_s=1.0))
        h_long, fb_long = client.send(_mask_goal(hidden, 0, 8.0, lost_timeout_s=600.0))
        assert h_lost is not None and h_long is not None
        assert client.wait(lambda: len(fb_long) >= 1, 60)
        assert _stop(camera) is not None
        for handle in (h_lost, h_hidden):
            lost = client.result(handle, 120)
            assert lost.result.reason == R.LOST and lost.status == 6, lost.result.message  # ABORTED
        # shutdown with a goal in flight: it gets its one result (SHUTDOWN) and the server exits cleanly
        long_result = h_long.get_result_async()  # asked for before the end, as clients do
        server.send_signal(signal.SIGINT)
        assert client.wait(long_result.done, 60), "no result at shutdown"
        last = long_result.result()
        assert last.result.reason == R.SHUTDOWN, last.result.message
        assert server.wait(timeout=60) == 0, server.stderr.read() if server.stderr else ""
    finally:
        client.close()
        _stop(camera)
        _stop(server)


def test_query_tool_builds_follow_goals():
    from region_perception.ros.query_tool import UsageError, build_follow_parser, follow_goal

    g = follow_goal(build_follow_parser().parse_args(["the red circle", "--seconds", "10", "--rate", "4"]))
    assert (g.text, g.time_limit_s, g.rate_hz) == ("the red circle", 10.0, 4.0)
    g = follow_goal(build_follow_parser().parse_args(["--points", "12,30"]))
    assert g.region.kind == Region.POINTS and (g.region.points[0].x, g.region.points[0].y) == (12.0, 30.0)
    g = follow_goal(build_follow_parser().parse_args(["--box", "1,2,30,40"]))
    assert g.region.kind == Region.BOX and list(g.region.box) == [1, 2, 30, 40]
    with pytest.raises(UsageError):
        follow_goal(build_follow_parser().parse_args([]))


@pytest.mark.slow
def test_query_tool_follows_until_its_time_limit(child_env):
    """``region-perception-query follow --points X,Y --seconds 2``: feedback lines, then one result."""
    server = subprocess.Popen([sys.executable, "-m", "region_perception.ros.follow_server"],
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    camera = subprocess.Popen(camera_command("--source", "synthetic", "--motion", "--rate", "8"),
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # every sequence's occluder stands still, nearest, and covers this pixel (see motion_sequence)
        for index in range(4):
            seq = motion_sequence(1, index)
            assert seq.render(0).visible[seq.by_role("occluder").object_id][95, 64]
        proc = subprocess.run(
            [sys.executable, "-m", "region_perception.ros.query_tool", "follow", "--points", "64,95",
             "--seconds", "2", "--rate", "4", "--json", "--timeout", "120",
             "--lost-timeout", str(SLOW_MACHINE_S)],
            env=child_env, capture_output=True, text=True, timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert lines[-1]["reason"] == "time limit" and lines[-1]["frames"] == len(lines) - 1 >= 1
        assert all(ln["state"] == "tracking" for ln in lines[:-1])
    finally:
        _stop(camera)
        _stop(server)


@pytest.mark.slow
def test_the_node_serves_follow_with_its_model_and_segmenter(child_env, tmp_path):
    """The real node (toy-regionvlm, which brings toy-sam) serves ``~/follow`` beside its queries: a click on
    the occluder is followed until the time limit, feedback on every frame, then one result. (How well it
    follows is measured by ``eval track``, not here.)"""
    from region_perception.ros.processes import node_command

    from .conftest import REPO

    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(node_command(REPO / "config" / "toy.yaml", device="cpu"), env=child_env,
                            stdout=log, stderr=subprocess.STDOUT)
    camera = subprocess.Popen(camera_command("--source", "synthetic", "--motion", "--rate", "4", "--reliable"),
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "region_perception.ros.query_tool", "follow", "--points", "64,95",
             "--seconds", "3", "--rate", "2", "--json", "--timeout", "300",
             "--lost-timeout", str(SLOW_MACHINE_S)],
            env=child_env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stderr + (tmp_path / "node.log").read_text()[-3000:]
        lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        assert lines[-1]["reason"] == "time limit" and lines[-1]["frames"] == len(lines) - 1 >= 1, lines
        assert lines[0]["state"] == "tracking" and lines[0]["track_id"] >= 1, lines
        assert all(ln["state"] in ("tracking", "occluded", "lost", "reacquired") for ln in lines[:-1]), lines
    finally:
        _stop(camera)
        _stop(node)


# -- the server attached to a bare node in this process, with a stand-in model --------------------
class _StandInEngine:
    """Answers as a trained region-VLM would on the synthetic world, and counts its calls.

    ``refer`` gives the named object's visible mask on the frame it is shown; ``caption`` names
    what is under the mask. Frames are recognised by their pixels."""

    weights_random = False
    segmenter = None

    def __init__(self, seq) -> None:
        self.seq = seq
        self.frames = {seq.render(t).image.tobytes(): seq.render(t) for t in range(seq.frames)}
        self.calls = {"refer": 0, "caption": 0}

    def refer(self, image, text, frame_key=None):
        from types import SimpleNamespace

        self.calls["refer"] += 1
        fr = self.frames[image.tobytes()]
        obj = next(o for o in self.seq.objects if o.expression == text)
        mask = fr.visible[obj.object_id]
        return SimpleNamespace(outputs=[SimpleNamespace(mask=mask if mask.any() else None)])

    def caption(self, image, regions, frame_key=None):
        from types import SimpleNamespace

        self.calls["caption"] += 1
        fr = self.frames[image.tobytes()]
        ids = [o.object_id for o in self.seq.objects]
        best = max(ids, key=lambda i: (fr.visible[i] & regions[0].mask).sum())
        obj = next(o for o in self.seq.objects if o.object_id == best)
        return SimpleNamespace(outputs=[SimpleNamespace(text=obj.caption)])


def _in_process_follow(goal, engine, seq, fps: float = 40.0):
    """Feed ``seq``'s frames to a FrameBuffer at ``fps`` (then stop, as a camera that ends), follow
    ``goal`` through a FollowServer on a bare node; (feedback, result, frame stamps -> index)."""
    from rclpy.action import ActionClient

    from region_perception.ros.follow_server import FollowDefaults, FollowServer
    from region_perception.ros.spin import make_executor, spin_in_background
    from region_perception.service.frame_buffer import Frame, FrameBuffer

    ctx = rclpy.Context()
    rclpy.init(context=ctx)
    node = rclpy.create_node("follow_in_process", context=ctx)
    client_node = rclpy.create_node("follow_in_process_client", context=ctx)
    executor = make_executor(ctx)
    executor.add_node(node)
    executor.add_node(client_node)
    frames = FrameBuffer(60, 0.05)
    server = FollowServer(node, frames, engine=lambda: engine, defaults=FollowDefaults(lost_timeout_s=1.0))
    stop, thread = spin_in_background(executor, "follow-in-process")
    stamps: dict[int, int] = {}
    try:
        rendered = [seq.render(t) for t in range(seq.frames)]
        first = Frame(1_000_000_000, "cam", rendered[0].image, lambda m: m)
        frames.add(first)
        stamps[first.stamp_ns] = 0
        client = ActionClient(client_node, FollowRegion, "/follow_in_process/follow")
        assert client.wait_for_server(timeout_sec=60)
        goal.header.stamp.sec, goal.header.stamp.nanosec = 1, 0
        feedback: list = []
        fut = client.send_goal_async(goal, feedback_callback=lambda f: feedback.append(f.feedback))
        end = time.monotonic() + 60
        while not fut.done() and time.monotonic() < end:
            time.sleep(0.01)
        handle = fut.result()
        assert handle.accepted
        res = handle.get_result_async()
        for t in range(1, seq.frames):  # each frame waits until the follower has taken the one before
            stamp = 1_000_000_000 + t * int(1e9 / fps)
            frames.add(Frame(stamp, "cam", rendered[t].image, lambda m: m))
            stamps[stamp] = t
            end = time.monotonic() + 60
            while not any(f.header.stamp.sec * 10**9 + f.header.stamp.nanosec == stamp for f in list(feedback)):
                assert time.monotonic() < end, "the follower did not take a frame"
                time.sleep(0.005)
        end = time.monotonic() + 60
        while not res.done() and time.monotonic() < end:
            time.sleep(0.01)
        assert res.done(), "no result once the frames stopped"
        return feedback, res.result(), stamps
    finally:
        server.destroy()
        stop.set()
        thread.join(timeout=10)
        node.destroy_node()
        client_node.destroy_node()
        rclpy.shutdown(context=ctx)


def test_a_sentence_is_followed_with_the_model_rechecking_only_now_and_then():
    seq = motion_sequence(1, 0)
    target = seq.by_role("occluded")
    engine = _StandInEngine(seq)
    goal = FollowRegion.Goal(rate_hz=1000.0, recheck_every=8, text=target.expression)
    feedback, result, stamps = _in_process_follow(goal, engine, seq)
    r = result.result
    assert r.reason == R.LOST and "no camera frame" in r.message  # the frames stopped
    assert r.frames == len(feedback) == seq.frames  # one feedback per frame (rate above the camera's)
    states = [f.state for f in feedback]
    assert "occluded" in states and "reacquired" in states[states.index("occluded"):]
    assert r.model_calls == engine.calls["refer"] >= 2 and engine.calls["caption"] == 0
    assert r.model_calls <= seq.frames // 3, f"the model ran {r.model_calls} times in {seq.frames} frames"
    from region_perception.service.image_decoding import mask_msg_to_bool

    ious = []
    for f in feedback:
        truth = seq.render(stamps[f.header.stamp.sec * 10**9 + f.header.stamp.nanosec]).visible[target.object_id]
        pred = mask_msg_to_bool(f.mask) if f.mask.width else np.zeros_like(truth)
        union = (pred | truth).sum()
        ious.append((pred & truth).sum() / union if union else 1.0)
    assert np.mean(ious) > 0.8, ious


def test_a_clicked_object_is_confirmed_by_its_caption():
    seq = motion_sequence(1, 1)
    target = seq.by_role("crossing_far")
    engine = _StandInEngine(seq)
    m0 = seq.render(0).visible[target.object_id]
    from region_perception.ros.image_conversion import mask_to_msg

    goal = FollowRegion.Goal(rate_hz=1000.0, recheck_every=10)
    goal.region = Region(kind=Region.MASK, mask=mask_to_msg(m0))
    feedback, result, _ = _in_process_follow(goal, engine, seq)
    r = result.result
    assert r.model_calls == engine.calls["caption"] >= 1 + (seq.frames - 1) // 10 - 1
    assert engine.calls["refer"] == 0
    assert sum(f.rechecked for f in feedback) == r.rechecks
    assert r.rechecks <= seq.frames // 4


# -- rejected goals: the reason reaches the client (an action's REJECT carries none) ---------------
def test_a_goals_fingerprint_is_the_same_on_both_sides_of_the_wire():
    from rclpy.serialization import deserialize_message, serialize_message

    from region_perception.ros.follow_server import goal_fingerprint

    g = _goal(rate_hz=0.1, time_limit_s=2.7)  # float64 here, float32 on the wire
    received = deserialize_message(serialize_message(g), FollowRegion.Goal)
    assert goal_fingerprint(g) == goal_fingerprint(received)
    assert goal_fingerprint(g) != goal_fingerprint(_goal(rate_hz=0.2, time_limit_s=2.7))


@pytest.mark.slow
def test_a_rejected_goals_reason_reaches_the_client(child_env):
    from diagnostic_msgs.msg import DiagnosticArray

    from region_perception.ros.follow_server import goal_fingerprint

    server = subprocess.Popen([sys.executable, "-m", "region_perception.ros.follow_server"],
                              env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    client = Client()
    try:
        # the query tool prints the node's reason (no camera: the goal is judged before any frame)
        for args, reason in ((["--points", "10,10", "--rate", "0"], "rate_hz must be > 0, got 0"),
                             (["--points", "10,10", "--lost-timeout", "-1"], "lost_timeout_s must be >= 0")):
            proc = subprocess.run([sys.executable, "-m", "region_perception.ros.query_tool", "follow", *args,
                                   "--timeout", "120"], env=child_env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 1, proc.stdout + proc.stderr
            assert f"the follow goal was rejected: {reason}" in proc.stderr, proc.stderr
        # a client of its own finds the WARN status on /diagnostics under its goal's fingerprint
        statuses: list = []
        client.node.create_subscription(DiagnosticArray, "/diagnostics",
                                        lambda m: statuses.extend(s for s in m.status if s.name.endswith(": follow")),
                                        50)
        assert client.wait_for_server(120)
        client.wait(lambda: client.node.count_publishers("/diagnostics") > 0, 30)
        empty_box = _goal(region=Region(kind=Region.BOX, box=np.array([5, 5, 5, 9], np.float32)))
        handle, _ = client.send(empty_box)
        assert handle is None
        fingerprint = goal_fingerprint(empty_box)

        def reason() -> str:
            for s in list(statuses):
                values = {kv.key: kv.value for kv in s.values}
                if values.get("goal") == fingerprint:
                    assert s.level == s.WARN and s.message == f"goal rejected: {values['reason']}"
                    return values["reason"]
            return ""

        assert client.wait(lambda: bool(reason()), 30), [s.message for s in statuses]
        assert "is empty" in reason() and "box" in reason()
        # nothing else was disturbed: a good goal is still accepted
        handle, _ = client.send(_goal(time_limit_s=0.5))
        assert handle is not None
        assert client.result(handle, 120).result.reason == R.LOST  # no camera here: no first frame in 5 s
    finally:
        client.close()
        _stop(server)
