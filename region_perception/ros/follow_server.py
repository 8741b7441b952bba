"""The ``~/follow`` action: describe an object once, get its mask (and 3D position) on every frame.

Why: a robot that asks "where is the red mug?" keeps asking while it moves; answering each frame
from scratch pays the whole model every time. A goal names the object once (a region or a
sentence), then a worker thread per goal follows it with :mod:`region_perception.tracking`
(optical flow, the segmenter or a colour model) at the goal's rate and sends one feedback per
followed frame; the region-VLM only re-checks it every ``recheck_every`` frames, when the score
drops, and while it is out of sight. Listeners that do not send goals get ``~/tracks`` (markers).

The server is not the node: :class:`FollowServer` takes the node, a frame source (the node's
FrameBuffer) and a callable giving the engine (None while no model is loaded), so a test can
attach it to a bare node. ``destroy`` ends every goal (result SHUTDOWN) before the action server
goes. Bad goals (no region, rate <= 0, a negative time limit) are rejected before any work; as an
action's REJECT carries no reason, the reason goes to the log, to :attr:`FollowServer.rejections` and to
``/diagnostics`` under the goal's fingerprint (:func:`goal_fingerprint`), where the client finds it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Vector3
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from sensor_msgs.msg import RegionOfInterest
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from region_perception.action import FollowRegion
from region_perception.msg import Region

from ..geometry.regions import RegionError
from ..service.overlay import TrackOutline, draw_tracks
from ..tracking import Track
from ..tracking.follow import FollowError, start_track, trained_segmenter
from ..tracking.follow import initial_mask as tracking_initial_mask
from .image_conversion import array_to_image_msg, mask_to_msg
from .messages import region_from_msg
from .msg_dict import msg_to_dict
from .spin import Handoff

R = FollowRegion.Result


@dataclass
class FollowDefaults:
    """The node's defaults for what a goal leaves at 0."""

    recheck_every: int = 10
    lost_timeout_s: float = 3.0
    first_frame_wait_s: float = 5.0  # a goal waits this long for its first camera frame
    max_goals: int = 8


def goal_fingerprint(goal: Any) -> str:
    """What names one goal's rejection on ``/diagnostics`` (value ``goal``): a hash of the goal's fields
    as they travel (serialised and read back, so a client's float64 rate hashes as the server's float32).
    A client computes it from the goal it sends; the server from the goal it received."""
    from rclpy.serialization import deserialize_message, serialize_message

    wire = deserialize_message(serialize_message(goal), type(goal))
    return hashlib.sha1(json.dumps(msg_to_dict(wire), sort_keys=True).encode()).hexdigest()[:16]


def goal_problem(goal: Any) -> str:
    """Why a goal cannot be followed ("" when it can): checked before any work is done."""
    if not np.isfinite(goal.rate_hz) or goal.rate_hz <= 0:
        return f"rate_hz must be > 0, got {goal.rate_hz:g}"
    if not np.isfinite(goal.time_limit_s) or goal.time_limit_s < 0:
        return f"time_limit_s must be >= 0 (0 = no limit), got {goal.time_limit_s:g}"
    if not np.isfinite(goal.lost_timeout_s) or goal.lost_timeout_s < 0:
        return f"lost_timeout_s must be >= 0, got {goal.lost_timeout_s:g}"
    if goal.text.strip():
        return ""
    r = goal.region
    if r.kind in (Region.POINTS, Region.SCRIBBLE):
        need = 1 if r.kind == Region.POINTS else 2
        if len(r.points) < need:
            kind = "point" if need == 1 else "scribble"
            return f"the region has {len(r.points)} points: a {kind} region needs {need}"
    elif r.kind == Region.BOX:
        x0, y0, x1, y1 = (float(v) for v in r.box)
        if not (np.isfinite([x0, y0, x1, y1]).all() and x1 > x0 and y1 > y0):
            return f"the box {[x0, y0, x1, y1]} is empty (need x_max > x_min and y_max > y_min)"
    elif r.kind == Region.MASK:
        if r.mask.width == 0 or r.mask.height == 0 or not any(r.mask.data):
            return "the mask region is empty"
    elif r.kind == Region.WHOLE_IMAGE:
        return "a whole-image region names no object to follow: give points, a box, a mask or a sentence"
    else:
        return f"unknown region kind {r.kind}"
    return ""


def initial_mask(image: np.ndarray, region: Any, segmenter: Any = None, key: str = "") -> np.ndarray:
    """The object's mask on the first frame from a ``Region`` message (see
    :func:`region_perception.tracking.follow.initial_mask`). Raises ValueError when nothing is found."""
    try:
        core = region_from_msg(region)
    except RegionError as exc:
        raise FollowError(str(exc)) from None
    return tracking_initial_mask(image, core, trained_segmenter(SimpleNamespace(segmenter=segmenter)), key)


class _Goal:
    """One goal's worker-side state."""

    def __init__(self, handle: Any, track_id: int) -> None:
        self.handle = handle
        self.track_id = track_id
        self.stop = threading.Event()  # cancel or shutdown: the worker ends at its next check
        self.stop_reason = (R.CANCELLED, "cancelled")
        self.handoff: Handoff | None = None
        self.thread: threading.Thread | None = None


class FollowServer:
    """``~/follow`` on ``node``. ``frames``: ``latest()`` / ``find(stamp_ns)`` (a FrameBuffer);
    ``engine``: a callable giving the loaded engine or None; ``depth_source``: a DepthSource or None."""

    def __init__(
        self,
        node: Any,
        frames: Any,
        engine: Callable[[], Any] = lambda: None,
        depth_source: Any = None,
        defaults: FollowDefaults | None = None,
        action_name: str = "~/follow",
        tracks_topic: str = "~/tracks",
        overlay_pub: Any = None,
        overlay_enabled: Callable[[], bool] = lambda: True,
    ) -> None:
        self.node = node
        self.frames = frames
        self.engine = engine
        self.depth_source = depth_source
        self.defaults = defaults or FollowDefaults()
        self.rejections: deque[str] = deque(maxlen=50)
        self.overlay_pub = overlay_pub
        self.overlay_enabled = overlay_enabled
        self.overlays_drawn = 0
        self._outlines: dict[int, tuple[int, TrackOutline]] = {}  # track id -> (frame stamp, outline)
        self._goals: dict[int, _Goal] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._closing = False
        self._group = ReentrantCallbackGroup()
        self.tracks_pub = node.create_publisher(MarkerArray, tracks_topic, 10)
        self.diag_pub = node.create_publisher(DiagnosticArray, "/diagnostics", 10)  # rejections, with reasons
        self.server = ActionServer(
            node, FollowRegion, action_name, execute_callback=self._execute, goal_callback=self._on_goal,
            cancel_callback=self._on_cancel, callback_group=self._group,
        )

    # -- goal life ------------------------------------------------------------------------------
    def _on_goal(self, goal: Any) -> GoalResponse:
        problem = goal_problem(goal)
        if not problem and self._closing:
            problem = "the node is shutting down"
        if not problem and len(self._goals) >= self.defaults.max_goals:
            problem = f"already following {len(self._goals)} objects (max {self.defaults.max_goals})"
        if problem:
            self._reject(goal, problem)
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _reject(self, goal: Any, problem: str) -> None:
        """An action's REJECT carries no reason: the reason goes to the log (WARN) and to
        ``/diagnostics`` (a WARN status ``<node>: follow``, values ``goal`` = :func:`goal_fingerprint`,
        ``reason``, ``rejected``), where the client that sent the goal finds it."""
        self.rejections.append(problem)
        fingerprint = goal_fingerprint(goal)
        self.node.get_logger().warning(f"follow goal {fingerprint} rejected: {problem}")
        status = DiagnosticStatus(level=DiagnosticStatus.WARN, name=f"{self.node.get_name()}: follow",
                                  message=f"goal rejected: {problem}", hardware_id="follow")
        status.values = [KeyValue(key="goal", value=fingerprint), KeyValue(key="reason", value=problem),
                         KeyValue(key="rejected", value=str(len(self.rejections)))]
        try:
            self.diag_pub.publish(DiagnosticArray(header=Header(stamp=self.node.get_clock().now().to_msg()),
                                                  status=[status]))
        except Exception as exc:  # the publisher is gone at shutdown: the log still says why
            self.node.get_logger().debug(f"rejection not published: {exc}")

    def _on_cancel(self, handle: Any) -> CancelResponse:
        with self._lock:
            for g in self._goals.values():
                if g.handle is handle:
                    g.stop_reason = (R.CANCELLED, "cancelled by the client")
                    g.stop.set()
        return CancelResponse.ACCEPT

    async def _execute(self, handle: Any) -> Any:
        """Never blocks the executor: the worker thread follows, this awaits its result."""
        g = _Goal(handle, next(self._ids))
        g.handoff = Handoff(self.node.executor)
        with self._lock:
            self._goals[g.track_id] = g
        g.thread = threading.Thread(target=self._work, args=(g,), name=f"follow-{g.track_id}", daemon=True)
        g.thread.start()
        result = await g.handoff
        try:
            if result.reason == R.CANCELLED and handle.is_cancel_requested:
                handle.canceled()
            elif result.reason == R.TIME_LIMIT:
                handle.succeed()
            else:
                handle.abort()
        finally:
            with self._lock:
                self._goals.pop(g.track_id, None)
        return result

    def _work(self, g: _Goal) -> None:
        result = R(track_id=g.track_id)
        try:
            self._follow(g, result)
        except Exception as exc:  # one goal's fault ends that goal, with its one result
            result.reason, result.message = R.FAILED, f"{type(exc).__name__}: {exc}"
            self.node.get_logger().error(f"follow {g.track_id}: {result.message}")
        finally:
            self._publish_end(g.track_id)
            assert g.handoff is not None
            g.handoff.set(result)

    # -- following ------------------------------------------------------------------------------
    def _wait_frame(self, g: _Goal, after_ns: int, timeout_s: float) -> Any:
        """The latest frame newer than ``after_ns`` (None: none within ``timeout_s``, or stopped)."""
        end = time.monotonic() + timeout_s
        while not g.stop.is_set():
            f = self.frames.latest()
            if f is not None and f.stamp_ns > after_ns:
                return f
            if time.monotonic() >= end:
                return None
            g.stop.wait(0.01)
        return None

    def _follow(self, g: _Goal, result: Any) -> None:
        goal = g.handle.request
        d = self.defaults
        lost_timeout = goal.lost_timeout_s or d.lost_timeout_s
        started = time.monotonic()
        deadline = started + goal.time_limit_s if goal.time_limit_s > 0 else None
        period = 1.0 / goal.rate_hz
        stamp = goal.header.stamp.sec * 1_000_000_000 + goal.header.stamp.nanosec

        def stopped() -> bool:
            if g.stop.is_set():
                result.reason, result.message = g.stop_reason
                return True
            return False

        # the first frame: the one the goal names, or the latest
        if stamp:
            try:
                first = self.frames.find(stamp)
            except LookupError as exc:
                result.reason, result.message = R.FAILED, f"unknown frame: {exc}"
                return
        else:
            first = self._wait_frame(g, -1, d.first_frame_wait_s)
            if first is None:
                if not stopped():
                    result.reason, result.message = R.LOST, f"no camera frame within {d.first_frame_wait_s:g} s"
                return
        image = first.image()
        try:
            started_track = start_track(
                g.track_id, image, region=None if goal.text.strip() else region_from_msg(goal.region),
                text=goal.text, engine=self.engine(), key=first.key,
                recheck_every=goal.recheck_every or d.recheck_every,
            )
        except (FollowError, RegionError) as exc:
            result.reason, result.message = R.FAILED, str(exc)
            return
        track, mask, model_calls = started_track.track, started_track.mask, started_track.model_calls
        scores: list[float] = []
        self._send(g, first, track, None, mask, 1.0, "tracking", False, result)
        last_ns, unseen_since = first.stamp_ns, None
        next_tick = time.monotonic() + period
        while True:
            if stopped():
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                result.reason, result.message = R.TIME_LIMIT, f"time limit of {goal.time_limit_s:g} s reached"
                break
            if now < next_tick:
                g.stop.wait(min(next_tick - now, 0.05))
                continue
            next_tick = max(next_tick + period, now)  # a slow frame does not make the next ones burst
            wait = lost_timeout if deadline is None else max(0.0, min(lost_timeout, deadline - now))
            frame = self._wait_frame(g, last_ns, wait)
            if frame is None:
                if stopped() or (deadline is not None and time.monotonic() >= deadline):
                    continue  # the top of the loop says which
                result.reason, result.message = R.LOST, f"no camera frame for {lost_timeout:g} s"
                break
            last_ns = frame.stamp_ns
            u = track.update(frame.image(), image_key=frame.key)
            scores.append(u.score)
            self._send(g, frame, track, u, u.mask, u.score, u.state.value, u.rechecked, result)
            if u.mask is None:
                unseen_since = unseen_since or time.monotonic()
                if time.monotonic() - unseen_since > lost_timeout:
                    result.reason, result.message = R.LOST, f"out of sight for more than {lost_timeout:g} s"
                    break
            else:
                unseen_since = None
        result.rechecks, result.model_calls = track.rechecks, model_calls[0]
        result.mean_score = float(np.mean(scores)) if scores else 0.0

    def _send(self, g: _Goal, frame: Any, track: Track, update: Any, mask: np.ndarray | None, score: float,
              state: str, rechecked: bool, result: Any) -> None:
        fb = FollowRegion.Feedback(track_id=g.track_id, frame=result.frames, state=state, score=float(score),
                                   rechecked=bool(rechecked))
        fb.header.frame_id = frame.frame_id
        fb.header.stamp.sec, fb.header.stamp.nanosec = divmod(int(frame.stamp_ns), 1_000_000_000)
        if mask is not None and mask.any():
            ys, xs = np.nonzero(mask)
            fb.box = RegionOfInterest(x_offset=int(xs.min()), y_offset=int(ys.min()),
                                      width=int(xs.max() - xs.min() + 1), height=int(ys.max() - ys.min() + 1))
            fb.mask = mask_to_msg(mask, fb.header)
            loc = self._locate(frame, mask)
            if loc is not None and loc.has_position:
                fb.has_position = True
                fb.position = Point(x=loc.position[0], y=loc.position[1], z=loc.position[2])
                fb.size = Vector3(x=loc.size[0], y=loc.size[1], z=loc.size[2])
        g.handle.publish_feedback(fb)
        result.frames += 1
        self._publish_marker(fb, mask)
        self._publish_overlay(frame, fb.header, TrackOutline(g.track_id, mask, state, float(score)))

    def _locate(self, frame: Any, mask: np.ndarray) -> Any:
        if self.depth_source is None:
            return None
        out = SimpleNamespace(mask=mask, location=None, name="")
        res = SimpleNamespace(outputs=[out], image_size=mask.shape[:2], notes=[], timings_ms={})
        self.depth_source.locate(res, frame.stamp_ns, frame.frame_id, getattr(frame, "depth", None))
        return out.location

    # -- the overlay ----------------------------------------------------------------------------
    def _publish_overlay(self, frame: Any, header: Any, outline: TrackOutline) -> None:
        """The frame with the outline of every object followed on it (goals that took the same frame;
        each goal's frame is drawn once it has its mask, so a later goal's overlay has the earlier
        ones too), only while someone subscribes to the overlay."""
        with self._lock:
            self._outlines[outline.track_id] = (frame.stamp_ns, outline)
            same = [o for stamp, o in self._outlines.values() if stamp == frame.stamp_ns]
        pub = self.overlay_pub
        if pub is None or not self.overlay_enabled() or pub.get_subscription_count() == 0:
            return
        try:
            pub.publish(array_to_image_msg(draw_tracks(frame.image(), same), "rgb8", header))
            self.overlays_drawn += 1
        except Exception as exc:  # a drawing fault must not end the follow
            self.node.get_logger().warning(f"follow overlay not drawn: {exc}")

    # -- ~/tracks -------------------------------------------------------------------------------
    def _publish_marker(self, fb: Any, mask: np.ndarray | None) -> None:
        """A text marker per track (id = track id): at its 3D position with depth, else on a plane
        1 m in front of the camera at the mask's normalised image position."""
        m = Marker(ns="follow", id=int(fb.track_id), type=Marker.TEXT_VIEW_FACING, action=Marker.ADD)
        m.header = fb.header
        m.text = f"#{fb.track_id} {fb.state} {fb.score:.2f}"
        m.scale.z = 0.08
        m.color.r, m.color.g, m.color.b, m.color.a = (0.2, 1.0, 0.2, 1.0) if mask is not None else (1.0, 0.6, 0.1, 1.0)
        m.pose.orientation.w = 1.0
        if fb.has_position:
            m.pose.position = fb.position
        elif mask is not None and mask.any():
            h, w = mask.shape[:2]
            ys, xs = np.nonzero(mask)
            m.pose.position = Point(x=float(xs.mean() / w - 0.5), y=float(ys.mean() / h - 0.5), z=1.0)
        else:
            m.pose.position = Point(x=0.0, y=0.0, z=1.0)
        self.tracks_pub.publish(MarkerArray(markers=[m]))

    def _publish_end(self, track_id: int) -> None:
        with self._lock:
            self._outlines.pop(track_id, None)
        try:
            self.tracks_pub.publish(MarkerArray(markers=[Marker(ns="follow", id=track_id, action=Marker.DELETE)]))
        except Exception:  # the publisher is gone at shutdown: nothing to delete it from
            pass

    # -- shutdown -------------------------------------------------------------------------------
    @property
    def active_goals(self) -> int:
        return len(self._goals)

    def stop_all(self, message: str = "the node is shutting down", timeout_s: float = 5.0,
                 wait_results: bool = True) -> bool:
        """End every goal in flight with SHUTDOWN; True when every goal has ended in time.

        ``wait_results``: also wait until each goal's result has been handed to the action server,
        which needs the executor spinning on another thread (from an executor callback, pass False:
        the workers still stop, their results go out once the callback returns)."""
        self._closing = True
        with self._lock:
            goals = list(self._goals.values())
        for g in goals:
            g.stop_reason = (R.SHUTDOWN, message)
            g.stop.set()
        end = time.monotonic() + timeout_s
        for g in goals:
            if g.thread is not None:
                g.thread.join(timeout=max(0.0, end - time.monotonic()))
        if not wait_results:
            return all(g.thread is None or not g.thread.is_alive() for g in goals)
        # the executor (still spinning) ends each goal and answers its result requests
        while self._goals and time.monotonic() < end:
            time.sleep(0.01)
        if goals:
            time.sleep(0.2)  # grace for the result responses to leave before the executor stops
        return not self._goals

    def destroy(self, wait_results: bool = False) -> None:
        """Stop every goal, then remove the action server and the ``~/tracks`` publisher. Call
        :meth:`stop_all` first while the executor still spins for the results to reach clients."""
        self.stop_all(wait_results=wait_results)
        self.server.destroy()
        self.node.destroy_publisher(self.tracks_pub)
        self.node.destroy_publisher(self.diag_pub)


# -- a bare follower: the server on a node with a camera subscription and no model ---------------
def main(argv: list[str] | None = None) -> int:
    """``python -m region_perception.ros.follow_server [--depth]``: ``/region_perception/follow`` with
    no model (colour re-checks only), for trying the action and testing it; the node offers the
    same server with its model."""
    import argparse
    import sys

    import rclpy
    from rclpy.signals import SignalHandlerOptions
    from rclpy.utilities import remove_ros_args
    from sensor_msgs.msg import CameraInfo, Image

    from ..service.depth_source import DepthSource
    from ..service.frame_buffer import Frame, FrameBuffer
    from ..service.image_decoding import image_msg_to_rgb
    from .qos import image_qos
    from .spin import close_node, make_executor, serve_until_signalled, stop_requested_by_signals

    argv = list(sys.argv if argv is None else [sys.argv[0], *argv])
    ap = argparse.ArgumentParser(prog="follow_server", description=main.__doc__.splitlines()[0])
    ap.add_argument("--depth", action="store_true", help="positions from depth/image_raw + depth/camera_info")
    ap.add_argument("--lost-timeout", type=float, default=3.0, help="default seconds out of sight before LOST")
    args = ap.parse_args(remove_ros_args(argv)[1:])
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    requested = stop_requested_by_signals()
    node = rclpy.create_node("region_perception")
    frames = FrameBuffer(30, 0.05)
    depth = DepthSource(depth_topic="depth/image_raw", camera_info_topic="depth/camera_info") if args.depth else None
    qos = image_qos(2, "best_effort")

    def on_image(msg: Image) -> None:
        frame = Frame(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec, msg.header.frame_id, msg,
                      image_msg_to_rgb)
        frames.add(frame)
        if depth is not None:
            depth.colour_arrived(frame)

    node.create_subscription(Image, "image", on_image, qos)
    if depth is not None:
        node.create_subscription(
            Image, "depth/image_raw",
            lambda m: depth.add_depth(m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec,
                                      m.header.frame_id, m), qos)
        node.create_subscription(CameraInfo, "depth/camera_info",
                                 lambda m: depth.set_camera_info(m.k, m.width, m.height, m.header.frame_id), qos)
    server = FollowServer(node, frames, depth_source=depth, defaults=FollowDefaults(lost_timeout_s=args.lost_timeout),
                          overlay_pub=node.create_publisher(Image, "~/overlay", 2))
    executor = make_executor()
    executor.add_node(node)
    node.get_logger().info("following on ~/follow (no model: colour re-checks)")
    try:
        serve_until_signalled(executor, requested, before_stop=lambda: server.stop_all())
    finally:
        server.destroy()
        close_node(executor, node)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
