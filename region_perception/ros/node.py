"""The ``region_perception`` ROS 2 node: a thin adapter over the region engine.

Subscribes ``image`` (or ``image/compressed``) and ``region_queries``; serves ``~/query``;
publishes ``region_results``, ``~/overlay``, ``~/markers`` and ``/diagnostics``. It is a
lifecycle node: configure creates the interfaces, activate loads the model, deactivate
frees it (GPU memory included); by default it configures and activates itself at start.
Camera and query callbacks never run the model: a worker thread does, behind a bounded
queue, and every query gets exactly one RegionResult.
"""

from __future__ import annotations

import itertools
import math
import sys
import threading
import time
from collections import deque

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.duration import Duration
from rclpy.exceptions import ParameterUninitializedException
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from visualization_msgs.msg import Marker, MarkerArray

from region_perception.msg import RegionQuery, RegionResult
from region_perception.srv import QueryRegions

from ..common.status import Status
from ..engine import RegionEngine
from ..engine.settings import MODEL_OWN, UserSettings, package_defaults, source_lines
from ..geometry.depth import DepthSettings
from ..geometry.regions import RegionError
from ..service.config_file import read_vocabulary, vocabulary_display_name
from ..service.depth_source import DepthSource
from ..service.frame_buffer import Frame, FrameBuffer
from ..service.overlay import draw_overlay
from ..service.query_processor import Outcome, QueryProcessor, QuerySpec
from . import qos
from .follow_server import FollowServer
from .image_conversion import (
    ImageConversionError,
    array_to_image_msg,
    compressed_msg_to_rgb,
    image_from_cdr,
    image_msg_to_rgb,
)
from .messages import result_msg, spec_from_query
from .spin import (
    Handoff,
    SubscriptionReader,
    close_node,
    make_executor,
    serve_until_signalled,
    stop_requested_by_signals,
)

DEFAULTS = package_defaults()  # the engine's settings: one source of defaults (engine/config.py)
# Every parameter is documented in config/default.yaml. Those a model may bring (MODEL_OWN) are declared
# without a value: left unset, each takes the model's own value, else its default here (engine/settings.py).
# the engine's settings: name -> description (their defaults are the engine's own)
ENGINE_PARAMETERS: dict[str, str] = {
    "model": "registry name, Hugging Face id or local directory",
    "fallback_model": "loaded (loudly) when model cannot be; empty = only the default falls back, offline",
    "segmenter": "SAM for box/point -> mask: toy-sam, vit_b:/path.pth, HF id (default facebook/sam-vit-base), or none",
    "segmenter_backend": "auto (hf-sam for a transformers SAM, else sam), sam (segment-anything) or hf-sam",
    "proposals": "REFER proposals: sam or superpixels",
    "refer_route": "REFER: proposals (score masks by LM loss) or native (Florence-2's own)",
    "snap_model": "sentence encoder that snaps CLASSIFY answers onto the labels",
    "model_revision": "hub models: branch, tag or commit to load (empty = main); results name the commit",
    "segmenter_revision": "hub segmenters: branch, tag or commit to load (empty = main)",
    "snap_model_revision": "hub snapping models: branch, tag or commit to load (empty = main)",
    "device": "auto | cuda | cuda:N | cpu",
    "dtype": "auto | float32 | float16 | bfloat16",
    "trust_remote_code": "allow model repositories to run their own code",
    "feature_cache_frames": "frames whose features are kept",
    "default_vocabulary": "CLASSIFY labels when a query gives none: name or file",
    "points_per_region": "RegionVLM's K points per region",
    "refer_draws": "point draws per proposal when scoring REFER",
    "proposal_filter.min_area_fraction": "REFER proposals smaller than this share of the image are dropped",
    "proposal_filter.max_border_fraction": "REFER proposals covering more of one image border are dropped",
    "proposal_filter.max_proposals": "REFER scores at most this many proposals (best proposal scores first)",
    "proposal_filter.max_overlap_iou": "REFER proposals overlapping a better-scored one by more mask IoU are dropped",
    "proposal_filter.max_inside_fraction": "REFER proposals mostly inside a larger, better-scored one are dropped",
    "seed": "point sampling seed",
    "max_new_tokens": "generation length when a query gives 0",
    "num_beams": "beam search width when a query gives 0",
    "max_image_pixels": "larger frames are refused (BAD_IMAGE)",
    "fault_every": "testing aid: every Nth model call fails on purpose (0 = off)",
    "hold_model_s": "testing aid: each model call waits this long or until shutdown (0 = off)",
    "conversation_turns": "ASK dialogue: turns kept per conversation_id",
    "conversation_max": "ASK dialogue: conversations kept (least recently used forgotten first)",
    "conversation_idle_s": "ASK dialogue: a conversation idle this long is forgotten (answered as new)",
}
# the node's own: name -> (default, description)
NODE_PARAMETERS: dict[str, tuple[object, str]] = {
    "frame_buffer_size": (30, "recent camera frames kept for stamped queries"),
    "stamp_tolerance_s": (0.05, "a query stamp matches a frame within this many seconds"),
    "frame_wait_s": (0.5, "a query stamped after the newest frame waits this long for its frame"),
    "query_qos_depth": (1000, "history depth of region_queries and region_results (bursts are not dropped)"),
    "queue_size": (16, "queries waiting for the model; more are answered QUEUE_FULL"),
    "max_batch": (16, "queued queries on one frame answered by one engine call (1 = one at a time)"),
    "batch_window_ms": (0.0, "wait this long for more queries to batch (0 = batch only what is waiting)"),
    "batch_settle_ms": (
        3.0, "a worker woken by a burst (another query already queued) waits this long at a time while more arrive "
        "(0 = off; a lone query never waits)"
    ),
    "default_timeout_s": (0.0, "deadline for queries without one (0 = none)"),
    "service_timeout_s": (120.0, "longest a ~/query call waits"),
    "use_overlay": (True, "publish ~/overlay (only computed while someone subscribes)"),
    "publish_masks": (True, "include masks in RegionResult"),
    "marker_lifetime_s": (5.0, "how long rviz shows a caption marker"),
    "marker_depth_m": (2.0, "a region without a 3D position gets its marker this far along its pixel's ray"),
    "marker_hfov_deg": (60.0, "assumed horizontal field of view for placing markers"),
    "image_reliability": ("best_effort", "QoS of the image subscription: best_effort or reliable"),
    "image_qos_depth": (1, "QoS history depth of the image subscription"),
    "use_compressed": (False, "subscribe image/compressed instead of image"),
    "depth_topic": ("", "depth image aligned to the colour image (16UC1 or 32FC1); empty = no 3D positions"),
    "camera_info_topic": ("depth/camera_info", "CameraInfo of the depth image (K, width, height)"),
    "depth_scale": (0.001, "16UC1 depth units to metres (0.001: millimetres); 32FC1 is metres"),
    "depth_max_stamp_diff_ms": (50.0, "a depth frame matches the colour frame within this many milliseconds"),
    "depth_wait_ms": (100.0, "the 3D step waits this long for a depth frame that lags its colour frame"),
    "depth_min_m": (0.1, "depth below this is invalid"),
    "depth_max_m": (10.0, "depth beyond this is invalid"),
    "depth_erode_px": (3, "the mask is eroded this many depth pixels before the median (edges leak background)"),
    "auto_activate": (True, "configure and activate at start"),
    "warm_up": (True, "at activation, run each task once on a synthetic frame: a first answer is as fast as the next"),
    "diagnostics_period_s": (1.0, "how often /diagnostics is published"),
}
PARAMETERS: dict[str, tuple[object, str]] = {
    **{name: (DEFAULTS[name], text) for name, text in ENGINE_PARAMETERS.items()}, **NODE_PARAMETERS
}


def load_failure(model: str, exc: Exception) -> tuple[str, str]:
    """(reason, one line) for a model that could not be loaded: ModelLoadError says why."""
    from ..models.sources import ModelLoadError, one_line

    if isinstance(exc, ModelLoadError):
        return exc.reason, f"could not load {exc}"
    return "error", f"could not load model {model!r}: {type(exc).__name__}: {one_line(exc)}"


def _percentile(values, q: float) -> float:
    return float(np.percentile(list(values), q)) if values else 0.0


def _stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


class RegionPerceptionNode(LifecycleNode):
    def __init__(self, **kwargs) -> None:
        super().__init__("region_perception", **kwargs)
        for name, (default, description) in PARAMETERS.items():
            if name in MODEL_OWN:  # typed, no value: unset means "the model's own, else the default"
                self.declare_parameter(name, Parameter.Type.from_parameter_value(default), ParameterDescriptor(
                    description=f"{description} (unset: the model's own, else {default!r})"))
            else:
                self.declare_parameter(name, default, ParameterDescriptor(description=description))
        self.engine: RegionEngine | None = None
        self.processor: QueryProcessor | None = None
        self.frames: FrameBuffer | None = None
        self._active = False
        self.load_error = ""  # why the last activate could not load the model ("" = it did, or none yet)
        self.load_error_reason = ""  # ModelLoadError.reason (not_found_local, no_network, ...) or "error"
        self._marker_ids = itertools.count()
        self._service_ids = itertools.count()
        self._fast = MutuallyExclusiveCallbackGroup()
        self._slow = ReentrantCallbackGroup()  # ~/query calls await the worker side by side
        self._service_calls: dict[Handoff, tuple[float, RegionQuery]] = {}  # awaiting: (give up at, query)
        self._watch_lock = threading.Lock()  # the expiry timer's stop (_expire) and restart (_watch)
        self._created = []
        self._image_times: deque[float] = deque(maxlen=30)  # arrival of the last frames (diagnostics image_rate_hz)
        # the camera, depth and query topics are read on a thread of their own (see spin.SubscriptionReader),
        # started once an executor serves the node (as the executor would have served them)
        self._reader: SubscriptionReader | None = None
        self._reader_start = None  # guard condition: an executor that spins the node starts the reader
        self.overlays_drawn = 0  # diagnostics: overlays are drawn only while someone subscribes
        self.depth_source: DepthSource | None = None  # depth_topic set: 3D positions (see _configure_depth)
        self.depth_subs = []
        self._warming = threading.Event()  # set while the loaded model warms up: queries are answered at once
        self._warm_thread: threading.Thread | None = None
        self._served = False  # an executor serves this node (it ran a callback): answers can go out while warming
        self.warmup_ms: float | None = None  # the last warm-up's duration (diagnostics warmup_ms)
        self.activate_ms: float | None = None  # the last activate transition's duration (diagnostics activate_ms)

    def p(self, name: str):
        """A parameter's value; one a model may bring and the user left unset: the loaded engine's, else the
        default."""
        try:
            return self.get_parameter(name).value
        except ParameterUninitializedException:
            flat = self.engine.settings_values() if self.engine is not None else DEFAULTS
            return flat[name]

    def user_settings(self) -> UserSettings:
        """The engine settings the node's parameters set (the params file, -p): the "config" level."""
        given = {}
        for name in ENGINE_PARAMETERS:
            try:
                given[name] = self.get_parameter(name).value
            except ParameterUninitializedException:
                continue
        return UserSettings(config=given)

    # -- lifecycle -----------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.frames = FrameBuffer(int(self.p("frame_buffer_size")), float(self.p("stamp_tolerance_s")))
        vocabulary = self.user_settings().config.get("default_vocabulary")
        if vocabulary is not None:  # the user's own vocabulary: a missing file fails now
            try:
                read_vocabulary(vocabulary)
            except FileNotFoundError as exc:
                self.get_logger().error(str(exc))
                return TransitionCallbackReturn.FAILURE
        self.processor = QueryProcessor(
            None,
            self.frames,
            self._deliver,
            queue_size=int(self.p("queue_size")),
            default_timeout_s=float(self.p("default_timeout_s")),
            frame_wait_s=float(self.p("frame_wait_s")),
            max_batch=int(self.p("max_batch")),
            batch_window_ms=float(self.p("batch_window_ms")),
            batch_settle_ms=float(self.p("batch_settle_ms")),
        )
        # deep histories: a burst of queries must reach the node (to be answered QUEUE_FULL
        # if need be), and a burst of answers must reach the clients, not be overwritten
        depth = int(self.p("query_qos_depth"))
        self.results_pub = self.create_publisher(RegionResult, "region_results", depth)
        self.overlay_pub = self.create_publisher(Image, "~/overlay", 2)
        self.markers_pub = self.create_publisher(MarkerArray, "~/markers", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        image_qos = qos.image_qos(int(self.p("image_qos_depth")), str(self.p("image_reliability")))
        reader = self._reader = SubscriptionReader(self, "region-intake")
        if self.p("use_compressed"):
            self.image_sub = reader.subscribe(CompressedImage, "image/compressed", self._on_compressed, image_qos)
        else:  # kept serialized: a frame's pixels are read in place, and only when a query needs them
            self.image_sub = reader.subscribe(Image, "image", self._on_image_data, image_qos, raw=True)
        self.query_sub = reader.subscribe(RegionQuery, "region_queries", self._on_query, depth)
        self._configure_depth(image_qos)
        self._reader_start = self.create_guard_condition(self._on_served, callback_group=self._fast)
        self._reader_start.trigger()  # seen by the first executor that spins the node
        # ~/follow: a region followed frame to frame (segmenter + optical flow, the model re-checking)
        self.follow = FollowServer(self, self.frames, engine=lambda: self.engine if self._active else None,
                                   depth_source=self.depth_source, overlay_pub=self.overlay_pub,
                                   overlay_enabled=lambda: bool(self.p("use_overlay")))
        self.query_srv = self.create_service(QueryRegions, "~/query", self._on_service, callback_group=self._slow)
        self.expiry_timer = self.create_timer(0.1, self._expire, callback_group=self._fast)
        self.diag_timer = self.create_timer(float(self.p("diagnostics_period_s")), self._publish_diagnostics)
        self.get_logger().info("configured")
        return TransitionCallbackReturn.SUCCESS

    def _configure_depth(self, image_qos: QoSProfile) -> None:
        """Depth and CameraInfo subscriptions when ``depth_topic`` is set: positions on the worker."""
        self.depth_source = None
        self.depth_subs = []
        depth_topic = str(self.p("depth_topic")).strip()
        if not depth_topic:
            return
        info_topic = str(self.p("camera_info_topic")).strip() or "depth/camera_info"
        settings = DepthSettings(
            scale=float(self.p("depth_scale")),
            min_m=float(self.p("depth_min_m")),
            max_m=float(self.p("depth_max_m")),
            erode_px=int(self.p("depth_erode_px")),
            max_stamp_diff_ms=float(self.p("depth_max_stamp_diff_ms")),
            wait_ms=float(self.p("depth_wait_ms")),
            buffer_size=int(self.p("frame_buffer_size")),
        )
        self.depth_source = DepthSource(settings, depth_topic=depth_topic, camera_info_topic=info_topic)
        self.processor.depth_source = self.depth_source
        self.depth_subs = [
            self._reader.subscribe(Image, depth_topic, self._on_depth_data, image_qos, raw=True),
            self._reader.subscribe(CameraInfo, info_topic, self._on_camera_info, image_qos),
        ]
        self.get_logger().info(f"3D positions from depth {depth_topic!r} and CameraInfo {info_topic!r}")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        settings = self.user_settings()
        started = time.monotonic()
        try:
            engine = RegionEngine.load(settings)
            vocabulary = engine.config.default_vocabulary  # the user's, the model's own, or coco80
            labels = read_vocabulary(vocabulary)
        except Exception as exc:  # a bad model name must not kill the node: it stays inactive
            self.load_error_reason, self.load_error = load_failure(settings.loading_config().model, exc)
            self.get_logger().error(f"activate failed, staying inactive: {self.load_error}")
            return TransitionCallbackReturn.FAILURE
        self.engine = engine
        self.processor.default_labels = labels
        self.processor.vocabulary_name = vocabulary_display_name(vocabulary)
        self.load_error = self.load_error_reason = ""
        if engine.settings:
            self.get_logger().info("settings: " + ", ".join(source_lines(engine.settings)))
        self.processor.engine = self.engine
        self.processor.start()
        self.warmup_ms = None
        # a testing aid's model calls are what its test counts (every Nth fails) or holds: never warmed
        testing_aid = engine.config.fault_every > 0 or engine.config.hold_model_s > 0
        if self.p("warm_up") and not testing_aid:
            self._start_warm_up(engine, labels, self.processor.vocabulary_name)
        self._active = True
        flag = " with RANDOM WEIGHTS (outputs are not predictions)" if self.engine.weights_random else ""
        self.activate_ms = (time.monotonic() - started) * 1000.0
        warmed = f", warmed up in {self.warmup_ms / 1000:.1f} s" if self.warmup_ms is not None else ""
        self.get_logger().info(
            f"active: model {self.engine.model.name} on {self.engine.model.device}{flag}, "
            f"activated in {self.activate_ms / 1000:.1f} s{warmed}"
        )
        return super().on_activate(state)

    def _start_warm_up(self, engine: RegionEngine, labels: list[str], vocabulary_name: str) -> None:
        """Warm the model (see :meth:`RegionEngine.warm_up`) at the camera's size.

        Where an executor already serves the node (activated through the lifecycle service), the
        warm-up runs on a thread and queries meanwhile are answered at once, MODEL_ERROR "warming up",
        instead of waiting. Otherwise (activation at start, before the node spins) nothing could be
        answered during it anyway, so activate warms up before it returns and the first query
        finds the model warm.
        """
        size = self._camera_size()
        self._warming.set()

        def run() -> None:
            started = time.monotonic()
            try:
                spent = engine.warm_up(size, labels, vocabulary_name)
                self.get_logger().info(
                    f"warmed up at {size[1]}x{size[0]}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in spent.items())
                )
            except Exception as exc:  # a warm-up that fails must not take the node down: the first query pays
                if self.engine is engine:
                    self.get_logger().warning(f"warm-up failed ({type(exc).__name__}: {exc}); serving cold")
            finally:
                if self.engine is engine:
                    self.warmup_ms = (time.monotonic() - started) * 1000.0
                    self._warming.clear()

        if self._served:
            self._warm_thread = threading.Thread(target=run, name="region-warm-up", daemon=True)
            self._warm_thread.start()
        else:
            run()

    def _camera_size(self) -> tuple[int, int]:
        """(height, width) of the newest buffered frame; 480x640 when none has arrived (or it cannot be read)."""
        frame = self.frames.latest() if self.frames is not None else None
        if frame is not None:
            h, w = getattr(frame.raw, "height", 0), getattr(frame.raw, "width", 0)
            if h > 0 and w > 0:
                return int(h), int(w)
            try:  # a compressed frame: its size is known once decoded
                return tuple(frame.image().shape[:2])
            except Exception:
                pass
        return 480, 640

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload("the node was deactivated")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.follow.destroy()
        self._unload("the node was cleaned up")
        self._close_reader()
        for entity in (self.image_sub, self.query_sub, *self.depth_subs):
            self.destroy_subscription(entity)
        self.destroy_service(self.query_srv)
        for timer in (self.expiry_timer, self.diag_timer):
            self.destroy_timer(timer)
        for pub in (self.results_pub, self.overlay_pub, self.markers_pub, self.diag_pub):
            self.destroy_publisher(pub)
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if getattr(self, "follow", None) is not None:
            self.follow.stop_all(wait_results=False)
        self._unload("the node is shutting down")
        return TransitionCallbackReturn.SUCCESS

    def _unload(self, reason: str) -> None:
        self._active = False
        self._warming.clear()  # a warm-up still running finishes on its own; this engine is no longer served
        if self.processor is not None:
            self.processor.stop(reason)
            self.processor.engine = None
        if self.engine is not None:
            self.engine.unload()  # frees cached features; torch.cuda.empty_cache() on GPU
            self.engine = None

    def _on_served(self) -> None:
        """An executor spins the node: its topics are read from now on (see spin.SubscriptionReader)."""
        self._served = True
        if self._reader is not None:
            self._reader.start()

    def _close_reader(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._reader_start is not None:
            self.destroy_guard_condition(self._reader_start)
            self._reader_start = None

    def destroy_node(self) -> None:
        self._close_reader()  # no handler runs once the node's entities go
        super().destroy_node()

    # -- intake (the reader's thread; tests call these directly) ---------------------------------
    def _on_image_data(self, data: bytes) -> None:
        """A camera frame as serialized: its stamp and frame read in place, nothing decoded or copied."""
        try:
            image = image_from_cdr(data)
        except ImageConversionError:  # not plain CDR: the middleware's own deserialization
            self._on_image(deserialize_message(data, Image))
            return
        self._add_frame(Frame(image.stamp_ns, image.frame_id, image, self._decode_image))

    def _on_image(self, msg: Image) -> None:
        self._add_frame(Frame(_stamp_ns(msg.header), msg.header.frame_id, msg, self._decode_image))

    def _on_compressed(self, msg: CompressedImage) -> None:
        self._add_frame(Frame(_stamp_ns(msg.header), msg.header.frame_id, msg, self._decode_compressed))

    def _decode_image(self, raw) -> np.ndarray:
        return image_msg_to_rgb(raw, int(self.p("max_image_pixels")))

    def _decode_compressed(self, raw) -> np.ndarray:
        return compressed_msg_to_rgb(raw, int(self.p("max_image_pixels")))

    def _add_frame(self, frame: Frame) -> None:
        self.frames.add(frame)  # decoded only when queried
        if self.depth_source is not None:
            self.depth_source.colour_arrived(frame)  # its depth frame travels with it
        self.processor.frame_arrived()
        self._image_times.append(time.monotonic())

    def _on_depth_data(self, data: bytes) -> None:
        """Buffered as received (serialized); decoded (and refused, as a note) only when a query needs it."""
        try:
            image = image_from_cdr(data)
        except ImageConversionError:
            self._on_depth(deserialize_message(data, Image))
            return
        self.depth_source.add_depth(image.stamp_ns, image.frame_id, image)

    def _on_depth(self, msg: Image) -> None:
        self.depth_source.add_depth(_stamp_ns(msg.header), msg.header.frame_id, msg)

    def _on_camera_info(self, msg: CameraInfo) -> None:
        self.depth_source.set_camera_info(msg.k, msg.width, msg.height, msg.header.frame_id)

    def _on_query(self, msg: RegionQuery) -> None:
        """One message from the reader, and those the subscription already holds: submitted as one group.

        The reader hands over one message at a time; the rest of a burst is often already
        received. Taken now, they reach the worker together (one engine call), and the worker
        needs no wait to batch them (see QueryProcessor.submit_group).
        """
        msgs = [msg]
        limit = self.processor.capacity if self.processor is not None else 1  # more would be QUEUE_FULL anyway
        while len(msgs) < limit:
            more = self._take_query()
            if more is None:
                break
            msgs.append(more)
        specs = [spec for spec in (self._spec(m, None) for m in msgs) if spec is not None]
        if len(specs) == 1:
            self.processor.submit(specs[0])
        elif specs:
            self.processor.submit_group(specs)
        if specs:
            self._watch()

    def _take_query(self) -> RegionQuery | None:
        """A message the query subscription holds and has not delivered (None: none), taken as the executor does."""
        sub = getattr(self, "query_sub", None)
        if sub is None:
            return None
        try:
            with sub.handle:
                taken = sub.handle.take_message(sub.msg_type, sub.raw)
        except Exception:  # destroyed meanwhile (cleanup), or a message that cannot be taken: the executor's turn
            return None
        return taken[0] if taken is not None else None

    def _submit(self, msg: RegionQuery, frame: Frame | None, on_done=None) -> None:
        spec = self._spec(msg, frame, on_done)
        if spec is not None:
            self.processor.submit(spec)
        self._watch()

    def _spec(self, msg: RegionQuery, frame: Frame | None, on_done=None) -> QuerySpec | None:
        """The query to submit, or None when it was answered here (malformed, inactive, warming up)."""
        try:
            spec = spec_from_query(msg)
        except RegionError as exc:
            outcome = Outcome(msg.query_id or "unnamed", msg.task, Status.INVALID_QUERY, str(exc))
            outcome.spec = None
            self._send(outcome, on_done, msg)
            return None
        spec.frame = frame
        spec.context = (msg, on_done)
        if not self._active or self._warming.is_set():
            why = (
                "the node is warming up the model (a few seconds after activation): retry shortly"
                if self._active
                else f"the node is inactive: {self.load_error or 'activate it to load the model'}"
            )
            outcome = Outcome(spec.query_id or "unnamed", spec.task, Status.MODEL_ERROR, why)
            outcome.spec = spec
            self._send(outcome, on_done, msg)
            return None
        return spec

    async def _on_service(self, request: QueryRegions.Request, response: QueryRegions.Response):
        """Never blocks the executor: awaits a hand-off the inference worker completes."""
        handoff = Handoff(self.executor)

        def on_done(result: RegionResult) -> None:
            handoff.set(result)  # from the worker thread (or now, for an immediate answer)

        frame = None
        if request.image.width > 0 and request.image.height > 0:
            max_pixels = int(self.p("max_image_pixels"))
            image = request.image
            key = f"service-{next(self._service_ids)}"
            frame = Frame(0, image.header.frame_id or key, image, lambda m: image_msg_to_rgb(m, max_pixels))
        query = request.query
        if query.timeout_s <= 0:
            query.timeout_s = float(self.p("service_timeout_s"))
        self._service_calls[handoff] = (time.monotonic() + query.timeout_s + 60.0, query)  # see _expire
        self._submit(query, frame, on_done)
        try:
            response.result = await handoff
        finally:
            self._service_calls.pop(handoff, None)
        return response

    def _expire(self) -> None:
        """Deadlines, frames that never came, ~/query calls never answered. The timer runs only while one of
        those may be pending (see :meth:`_watch`): an idle node is not woken ten times a second for nothing."""
        self._served = True  # an executor serves the node: a later activation can warm up in the background
        if self.processor is not None:
            self.processor.expire_overdue()
        now = time.monotonic()
        for handoff, (give_up_at, query) in list(self._service_calls.items()):
            if now > give_up_at:  # a model call that never ends must not hold the caller forever
                result = RegionResult(query_id=query.query_id, task=query.task, status=int(Status.TIMEOUT))
                result.error = "the worker did not answer in time"
                handoff.set(result)
        with self._watch_lock:
            if not self._service_calls and (self.processor is None or not self.processor.watching):
                self.expiry_timer.cancel()

    def _watch(self) -> None:
        """After a submit (any thread): the expiry timer runs again if something may now time out."""
        with self._watch_lock:
            timer = getattr(self, "expiry_timer", None)
            if timer is None or not timer.is_canceled():
                return
            if not self._service_calls and (self.processor is None or not self.processor.watching):
                return
            timer.reset()
        executor = self.executor
        if executor is not None:
            executor.wake()  # its wait was computed without the timer

    def wait_for_service_answers(self, timeout_s: float) -> bool:
        """Until every ~/query call in flight has been answered (the executor must be spinning)."""
        end = time.monotonic() + timeout_s
        while self._service_calls and time.monotonic() < end:
            time.sleep(0.01)
        return not self._service_calls

    # -- output --------------------------------------------------------------------------------
    def _deliver(self, outcome: Outcome) -> None:
        """Called once per query, from the worker or a callback."""
        msg, on_done = outcome.spec.context if outcome.spec is not None else (None, None)
        self._send(outcome, on_done, msg)

    def _send(self, outcome: Outcome, on_done, query_msg) -> None:
        engine = self.engine
        model = engine.model_label if engine is not None else str(self.p("model"))
        random_weights = engine.weights_random if engine is not None else False
        result = result_msg(outcome, model, random_weights, include_masks=bool(self.p("publish_masks")))
        if not result.header.frame_id and query_msg is not None:
            result.header = query_msg.header
        if on_done is not None:
            on_done(result)
        else:
            self.results_pub.publish(result)
        if outcome.status == Status.OK:
            self._publish_visuals(outcome, result)
        level = "info" if outcome.status == Status.OK else "warning"
        line = f"query {outcome.query_id}: {Status(outcome.status).name}" + (
            f" ({outcome.error})" if outcome.error else f" in {outcome.latency_ms:.0f} ms"
        )
        if level == "info":
            self.get_logger().info(line)
        else:
            self.get_logger().warning(line)

    def _publish_visuals(self, outcome: Outcome, result: RegionResult) -> None:
        res = outcome.result
        if self.p("use_overlay") and self.overlay_pub.get_subscription_count() > 0 and outcome.frame is not None:
            img = draw_overlay(
                outcome.frame.image(),
                task=res.task,
                outputs=res.outputs,
                regions=outcome.spec.regions if outcome.spec else None,
                candidate_boxes=res.candidate_boxes,
                weights_random=res.weights_random,
            )
            self.overlay_pub.publish(array_to_image_msg(img, "rgb8", result.header))
            self.overlays_drawn += 1
        if self.markers_pub.get_subscription_count() > 0:
            self.markers_pub.publish(self._markers(res, result))

    def _markers(self, res, result: RegionResult) -> MarkerArray:
        """Per region: a 3D box (CUBE) and a label at its position when depth gave one; otherwise
        a label along the region's pixel ray at an assumed depth (``marker_depth_m``)."""
        h, w = res.image_size
        fx = (w / 2) / math.tan(math.radians(float(self.p("marker_hfov_deg"))) / 2)
        depth = float(self.p("marker_depth_m"))
        lifetime = Duration(seconds=float(self.p("marker_lifetime_s"))).to_msg()
        array = MarkerArray()

        def marker(kind: int) -> Marker:
            m = Marker()
            m.header = result.header
            m.ns = "region_perception"
            m.id = next(self._marker_ids) % 10000
            m.type = kind
            m.action = Marker.ADD
            m.pose.orientation.w = 1.0
            m.lifetime = lifetime
            return m

        for out, out_msg in zip(res.outputs, result.outputs, strict=False):
            words = out.label or out.text
            label = ("[random] " if res.weights_random else "") + words[:80]
            if out_msg.has_position:
                p, size = out_msg.position, out_msg.size
                box = marker(Marker.CUBE)
                box.pose.position = p
                box.scale.x, box.scale.y, box.scale.z = (max(0.01, v) for v in (size.x, size.y, size.z))
                box.color.r, box.color.g, box.color.b, box.color.a = 0.2, 0.8, 1.0, 0.4
                array.markers.append(box)
                if words:
                    text = marker(Marker.TEXT_VIEW_FACING)
                    text.pose.position.x, text.pose.position.z = p.x, p.z
                    text.pose.position.y = p.y - size.y / 2 - 0.05  # above the box (optical frame: y down)
                    text.scale.z = max(0.03, 0.04 * p.z)
                    text.color.r, text.color.g, text.color.b, text.color.a = 1.0, 1.0, 0.2, 1.0
                    text.text = f"{label} ({p.z:.2f} m)"
                    array.markers.append(text)
                continue
            if not words:
                continue
            x0, y0, x1, _y1 = out.box or [0, 0, w, h]
            u, v = (x0 + x1) / 2, y0
            m = marker(Marker.TEXT_VIEW_FACING)
            m.pose.position.x = (u - w / 2) / fx * depth  # camera optical frame: x right, y down, z forward
            m.pose.position.y = (v - h / 2) / fx * depth
            m.pose.position.z = depth
            m.scale.z = 0.08 * depth
            m.color.r, m.color.g, m.color.b, m.color.a = 1.0, 1.0, 0.2, 1.0
            m.text = label
            array.markers.append(m)
        return array

    def _publish_diagnostics(self) -> None:
        proc, engine, frames = self.processor, self.engine, self.frames
        if proc is None or frames is None:
            return
        device = str(engine.model.device) if engine is not None else "none"
        status = DiagnosticStatus(name="region_perception: inference", hardware_id=device)
        if not self._active and self.load_error:
            status.level, status.message = DiagnosticStatus.ERROR, f"inactive: {self.load_error}"
        elif not self._active:
            status.level, status.message = DiagnosticStatus.WARN, "inactive: model not loaded"
        elif self._warming.is_set():
            status.level, status.message = DiagnosticStatus.WARN, "warming up: queries are answered MODEL_ERROR"
        elif proc.consecutive_model_errors >= 3:
            status.level = DiagnosticStatus.ERROR
            status.message = f"{proc.consecutive_model_errors} model errors in a row"
        elif proc.depth >= proc._queue.maxsize:
            status.level, status.message = DiagnosticStatus.WARN, "query queue full"
        else:
            status.level, status.message = DiagnosticStatus.OK, "ok"
        times = list(self._image_times)
        rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0
        values = {
            "model": engine.model.name if engine else str(self.p("model")),
            "device": device,
            "weights_random": str(bool(engine and engine.weights_random)).lower(),
            "queue_depth": proc.depth,
            "queue_size": proc._queue.maxsize,
            "frames_received": frames.received,
            "frames_buffered": len(frames),
            "frames_dropped": frames.evicted,
            "image_rate_hz": round(rate, 2),
            "latency_p50_ms": round(_percentile(proc.latencies_ms, 50), 1),
            "latency_p95_ms": round(_percentile(proc.latencies_ms, 95), 1),
            "inference_p50_ms": round(_percentile(proc.inference_ms, 50), 1),
            "runs_regrouped": proc.regrouped,  # queries started alone, then answered with a burst's others
            "feature_cache_hits": engine.cache.hits if engine else 0,
            "overlays_drawn": self.overlays_drawn,
            "overlay_subscribers": self.overlay_pub.get_subscription_count(),
            "model_calls_held": getattr(engine.model, "holding", 0) if engine else 0,  # hold_model_s (testing aid)
            "load_error_reason": self.load_error_reason,
            "fallback_from": getattr(engine.model, "fallback_from", "") if engine else "",
            "model_revision": str(self.p("model_revision")),
            "model_commit": getattr(engine.model, "commit", "") if engine else "",  # what the revision resolved to
            "segmenter_commit": getattr(engine.segmenter, "commit", "") if engine and engine.segmenter else "",
            "segmenter": engine.segmenter.name if engine and engine.segmenter else "none",
            # the settings that are not the package defaults: "name=value (command line|config|model)"
            "settings": "; ".join(source_lines(engine.settings)) if engine else "",
            # the last warm-up and activate transition ("" = none yet); activate includes a warm-up at start
            "warmup_ms": "" if self.warmup_ms is None else round(self.warmup_ms, 1),
            "activate_ms": "" if self.activate_ms is None else round(self.activate_ms, 1),
        }
        if self.depth_source is not None:
            values["depth_frames_received"] = self.depth_source.frames.received
            values["camera_info_received"] = str(self.depth_source.has_camera_info).lower()
        values.update({f"answered_{s.name.lower()}": n for s, n in proc.answered.items()})
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(array)


def main(argv: list[str] | None = None) -> int:
    """``region-perception-node [--ros-args --params-file config/default.yaml ...]``.

    SIGINT/SIGTERM stop the node gracefully: pending queries are answered SHUTTING_DOWN
    (topic and ~/query alike) while the middleware is still up and the executor still
    spins (rclpy's own handler would tear the middleware down first).
    """
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=argv if argv is not None else sys.argv, signal_handler_options=SignalHandlerOptions.NO)
    requested = stop_requested_by_signals()
    node = RegionPerceptionNode()
    executor = make_executor()
    executor.add_node(node)

    def answer_pending() -> None:
        if getattr(node, "follow", None) is not None:
            node.follow.stop_all()  # the executor still spins: each goal's one result reaches its client
        node._unload("the node is shutting down")  # answers SHUTTING_DOWN to what is pending
        node.wait_for_service_answers(timeout_s=5.0)  # the executor sends those responses
        if getattr(node, "results_pub", None) is not None:
            node.results_pub.wait_for_all_acked(Duration(seconds=2.0))  # the results have left

    try:
        if node.p("auto_activate") and not requested.is_set():
            node.trigger_configure()
            node.trigger_activate()
        serve_until_signalled(executor, requested, before_stop=answer_pending)
    except KeyboardInterrupt:
        pass
    finally:
        node._unload("the node is shutting down")  # a no-op when answer_pending ran
        close_node(executor, node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
