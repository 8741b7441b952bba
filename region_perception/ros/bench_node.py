"""Node-level figures: overhead per query beside what ROS itself costs, first answers, idle camera, memory.

The node runs as its own process (``region-perception-node`` with config/default.yaml),
fed 640x480 frames at 30 Hz by the camera tool, on loopback in a domain of its own. The
idle camera is measured twice, before the overhead queries and after them: a node whose
executor falls into busy-spinning shows it as CPU near a whole core and frames received
far below the published rate, in either window.

The node's overhead (round trip minus its own inference time) is measured beside a plain
rclpy echo (``python -m region_perception.ros.bench_node --echo RESULT_FILE``): a process
subscribed to the same camera that answers each RegionQuery with the node's own answer
(same message, same size, same QoS, its topics read as the node reads them: on a
SubscriptionReader thread, the camera kept serialized), its queries interleaved with the
node's. The echo's round trip is the floor ROS sets on this machine; the node's overhead is
reported as its difference from and ratio to it.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point32

from region_perception.msg import Region, RegionQuery, RegionResult

from ..bench.engine import Figure
from ..common.ros_env import apply_local_ros_env
from . import qos
from .processes import camera_command, node_command
from .spin import SubscriptionReader, make_executor, spin_in_background

PUBLISHED_HZ = 30.0
IDLE_S = 15.0  # each idle window: received_hz over at least this long
RECEIVED_SHARE = 0.95  # received_hz goal: this share of the published rate
OVERHEAD_GOAL_MS = 3.0  # the node's own overhead for one query, median
OVER_ECHO_GOAL_MS = 2.0  # ... and at most this much above a plain rclpy echo's round trip
IDLE_CPU_GOAL_PCT = 6.0  # the idle 30 Hz camera, % of one core
FIRST_VS_NEXT_GOAL = 1.5  # a task's first answer after activation vs the median of the next ten
ECHO_QUERIES = "echo/region_queries"  # the echo's topics: beside the node's, never mixed with them
ECHO_RESULTS = "echo/region_results"

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Harness:
    """The node process, the 30 Hz camera process and a query client spun by our executor.

    The client waits on conditions (results, diagnostics), never polls in a loop: on a
    2-core machine a polling harness would take CPU from the node it measures.
    """

    def __init__(self, model: str, log: Path, **parameters: object) -> None:
        """``parameters``: node parameters beyond the bench's own (the rest are config/default.yaml's)."""
        self.env = dict(apply_local_ros_env())
        self.log = open(log, "w")
        params = {"queue_size": 32} | parameters
        self.proc = subprocess.Popen(
            node_command(model=model, diagnostics_period_s=0.5, image_reliability="reliable", **params),
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("region_perception_bench", context=self.context)
        self.query_pub = self.node.create_publisher(RegionQuery, "region_queries", 50)
        self.echo_pub = self.node.create_publisher(RegionQuery, ECHO_QUERIES, 50)
        self.results: dict[str, tuple[float, RegionResult]] = {}
        self.diag: dict[str, str] = {}
        # (node clock at publication, frames_received): the received rate between two of them
        self.frame_counts: list[tuple[float, int]] = []
        self.changed = threading.Condition()  # notified on every result and diagnostics message
        self.node.create_subscription(RegionResult, "region_results", self._on_result, 50)
        self.node.create_subscription(RegionResult, ECHO_RESULTS, self._on_result, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = make_executor(self.context)
        self.executor.add_node(self.node)
        self.camera: subprocess.Popen | None = None
        self.echo: subprocess.Popen | None = None
        self._stop, self._thread = spin_in_background(self.executor, "bench-client")

    def start_camera(self, photo: Path, rate: float = PUBLISHED_HZ) -> None:
        """The camera tool, 640x480 at ``rate`` Hz, reliable (on loopback, best-effort frames
        of ~1 MB lose fragments and most never arrive, which would make the idle cost look smaller)."""
        self.camera = subprocess.Popen(
            camera_command(
                "--source", str(photo), "--rate", str(rate), "--reliable", "--width", "640", "--height", "480"
            ),
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def start_echo(self, template: RegionResult, path: Path, log: Path) -> None:
        """The plain rclpy echo in its own process, answering with ``template`` (see the module docstring)."""
        from rclpy.serialization import serialize_message

        path.write_bytes(serialize_message(template))
        with open(log, "w") as out:  # the child keeps its own copy of the descriptor
            self.echo = subprocess.Popen(
                [sys.executable, "-m", "region_perception.ros.bench_node", "--echo", str(path)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_for(lambda: self.echo_pub.get_subscription_count() > 0, 60, "the echo did not come up")
        # the echo's answers reach us once its publisher is matched: ask until one comes back
        for k in range(60):
            qid = f"echo-ping-{k}"
            self.echo_pub.publish(RegionQuery(query_id=qid))
            try:
                self.wait_for(lambda qid=qid: qid in self.results, 1.0, "echo ping")
                return
            except RuntimeError:
                if self.echo.poll() is not None:
                    raise RuntimeError(f"the echo exited (see {log.name})") from None
        raise RuntimeError(f"the echo never answered (see {log.name})")

    def ask_echo(self, qid: str, **fields) -> float:
        """Round-trip seconds of one query through the echo."""
        q = RegionQuery(query_id=qid, task=RegionQuery.CAPTION)
        for k, v in fields.items():
            setattr(q, k, v)
        sent = time.perf_counter()
        self.echo_pub.publish(q)
        self.wait_for(lambda: qid in self.results, 60, f"no echo for {qid}")
        return self.results[qid][0] - sent

    def stop_echo(self) -> None:
        if self.echo is not None:
            self.echo.send_signal(signal.SIGINT)
            try:
                self.echo.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.echo.kill()
            self.echo = None

    def stop_camera(self) -> None:
        if self.camera is not None:
            self.camera.send_signal(signal.SIGINT)
            self.camera.wait(timeout=20)
            self.camera = None

    def _on_result(self, msg: RegionResult) -> None:
        with self.changed:
            self.results[msg.query_id] = (time.perf_counter(), msg)
            self.changed.notify_all()

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name.startswith("region_perception"):
                values = {kv.key: kv.value for kv in st.values} | {"_message": st.message}
                stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
                with self.changed:
                    self.diag = values
                    self.frame_counts.append((stamp, int(values.get("frames_received", 0))))
                    self.changed.notify_all()

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        """Until ``predicate()`` holds (re-checked on each result or diagnostics message)."""
        end = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"{what} (see {self.log.name})")
                self.changed.wait(min(left, 1.0))

    def wait_active(self, timeout: float = 600) -> None:
        """Until the node says "ok" (loaded and warmed up), receives frames, and hears our queries."""
        self.wait_for(
            lambda: self.diag.get("_message") == "ok"
            and int(self.diag.get("frames_received", 0)) > 0
            and self.query_pub.get_subscription_count() > 0,
            timeout,
            "node did not become active",
        )

    def ask(self, qid: str, task: int = RegionQuery.CAPTION, **fields) -> tuple[float, RegionResult]:
        q = RegionQuery(query_id=qid, task=task)
        for k, v in fields.items():
            setattr(q, k, v)
        sent = time.perf_counter()
        self.query_pub.publish(q)
        self.wait_for(lambda: qid in self.results, 300, f"no result for {qid}")
        received, result = self.results[qid]
        return received - sent, result

    def idle_window(self, seconds: float) -> dict[str, float]:
        """The node's CPU (% of one core) and the frames it received per second, over ``seconds``.

        The rate is taken between two diagnostics messages, by their own stamps, so the
        diagnostics period does not blur it.
        """
        with self.changed:
            first = len(self.frame_counts)
        self.wait_for(lambda: len(self.frame_counts) > first, 30, "no diagnostics from the node")
        with self.changed:
            t0, n0 = self.frame_counts[-1]
        cpu0, w0 = cpu_seconds(self.proc.pid), time.monotonic()
        self.wait_for(lambda: self.frame_counts[-1][0] - t0 >= seconds, seconds + 30, "diagnostics stopped")
        cpu1, w1 = cpu_seconds(self.proc.pid), time.monotonic()
        with self.changed:
            t1, n1 = self.frame_counts[-1]
        return {
            "cpu_pct": 100 * (cpu1 - cpu0) / (w1 - w0),
            "received_hz": (n1 - n0) / (t1 - t0),
            "seconds": t1 - t0,
        }

    def close(self) -> None:
        self.stop_echo()
        self.stop_camera()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._stop.set()
        self._thread.join(timeout=10)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.log.close()


def point_region(x: float, y: float) -> Region:
    return Region(kind=Region.POINTS, points=[Point32(x=x, y=y)])


def ten_regions() -> list[Region]:
    return [point_region(50 + 50 * i, 200) for i in range(10)]


def _task_queries() -> dict[str, dict]:
    """One query per task, as a robot's first question might be (640x480 frames)."""
    return {
        "caption": {"task": RegionQuery.CAPTION, "regions": [point_region(320, 240)]},
        "classify": {"task": RegionQuery.CLASSIFY, "regions": [point_region(320, 240)]},  # the default vocabulary
        "refer": {"task": RegionQuery.REFER, "text": "the person in the middle"},
        "ask": {"task": RegionQuery.ASK, "regions": [point_region(320, 240)], "text": "what is this?"},
    }


def measure_first_answers(h: Harness, following: int = 10) -> dict[str, dict]:
    """Per task, right after activation: the first answer's round trip vs the median of the next ``following``.

    Called first thing once the node is active, the camera running (each query reads the
    newest frame, encoded anew as in use). A task the model does not answer (ASK on a model
    without free questions) is reported as skipped.
    """
    out: dict[str, dict] = {}
    for task, fields in _task_queries().items():
        first, result = h.ask(f"first-{task}", max_new_tokens=10, **fields)
        if result.status != RegionResult.OK:
            out[task] = {"skipped": result.error}
            continue
        rest = [h.ask(f"next-{task}-{i}", max_new_tokens=10, **fields) for i in range(following)]
        bad = [r.error for _, r in rest if r.status != RegionResult.OK]
        if bad:
            raise RuntimeError(f"{task}: the next answers failed: {bad[:2]}")
        med = statistics.median(t for t, _ in rest)
        out[task] = {
            "ratio": first / med,
            "first_ms": round(first * 1000, 1),
            "next_median_ms": round(med * 1000, 1),
            "first_inference_ms": round(result.inference_ms, 1),
            "next_inference_median_ms": round(statistics.median(r.inference_ms for _, r in rest), 1),
        }
    return out


def measure_bursts(h: Harness, bursts: int = 3, tag: str = "") -> dict:
    """Ten CAPTION clients on one frame, published one after another, vs one query of the same ten regions.

    Call with the camera stopped (every query reads the one latest frame, its features cached
    after the warm-up). Per burst: the time to the last of the ten answers over one query's
    round trip, and the batch sizes the node reported. A burst that reaches the idle worker
    is what the node's ``batch_settle_ms`` and ``max_batch`` are for (docs/batching.md).
    """
    regions = ten_regions()
    h.ask(f"{tag}warm-ten", regions=regions, max_new_tokens=10)
    regrouped_before = _regrouped(h)
    ratios, ones, tens, sizes = [], [], [], []
    for k in range(bursts):
        one, _ = h.ask(f"{tag}ten-regions-{k}", regions=regions, max_new_tokens=10)
        ids = [f"{tag}burst{k}-{i}" for i in range(10)]
        sent = time.perf_counter()
        for qid, region in zip(ids, regions, strict=True):
            h.query_pub.publish(
                RegionQuery(query_id=qid, task=RegionQuery.CAPTION, regions=[region], max_new_tokens=10)
            )
        h.wait_for(lambda ids=ids: all(q in h.results for q in ids), 300, "the ten captions were not answered")
        ten = max(h.results[q][0] for q in ids) - sent
        calls: dict[int, int] = {}  # batch size -> queries answered by a call of that size
        for q in ids:
            size = h.results[q][1].batch_size
            calls[size] = calls.get(size, 0) + 1
        ones.append(one)
        tens.append(ten)
        ratios.append(ten / one)
        sizes.append(sorted((size for size, n in calls.items() for _ in range(n // size)), reverse=True))
    return {
        "ratio": statistics.median(ratios),
        "ratios": [round(r, 2) for r in ratios],
        "one_query_of_ten_regions_s": [round(t, 3) for t in ones],
        "ten_queries_s": [round(t, 3) for t in tens],
        "batches": sizes,
        "regrouped": _regrouped(h) - regrouped_before,
    }


def _regrouped(h: Harness) -> int:
    """The node's ``runs_regrouped`` now (from a diagnostics message published after this call)."""
    with h.changed:
        seen = len(h.frame_counts)
    h.wait_for(lambda: len(h.frame_counts) > seen, 30, "no diagnostics from the node")
    return int(h.diag.get("runs_regrouped", 0))


def bench_node(model: str, out_dir: Path, idle_s: float = IDLE_S, queries: int = 20) -> dict:
    """The node's figures for ``model``: idle camera before and after queries, overhead, batching, memory."""
    out_dir.mkdir(parents=True, exist_ok=True)
    photo = out_dir / "frame_640x480.png"
    if not photo.exists():
        import cv2
        from skimage import data

        cv2.imwrite(str(photo), cv2.cvtColor(cv2.resize(data.astronaut(), (640, 480)), cv2.COLOR_RGB2BGR))
    idle_s = max(idle_s, IDLE_S)
    load_before = os.getloadavg()[0]
    tag = model.replace("/", "_")
    h = Harness(model, out_dir / f"node-{tag}.log")
    try:
        h.start_camera(photo)
        h.wait_active()
        warm_up = {k: h.diag.get(k, "") for k in ("warmup_ms", "activate_ms")}
        # each task's first answer after activation, and the next ten
        firsts = measure_first_answers(h)
        # idle camera, before the overhead queries: 30 Hz of 640x480 and nothing else
        before = h.idle_window(idle_s)
        # overhead: round trip minus the node's own inference time, beside the echo's round trip
        overheads, rtts, echoes = [], [], []
        _, template = h.ask("warm", regions=[point_region(320, 240)], max_new_tokens=1)
        h.start_echo(template, out_dir / f"echo-template-{tag}.cdr", out_dir / f"echo-{tag}.log")
        h.ask_echo("echo-warm", regions=[point_region(320, 240)], max_new_tokens=1)
        for i in range(queries):  # interleaved: both see the same machine
            rtt, res = h.ask(f"q{i}", regions=[point_region(320, 240)], max_new_tokens=1)
            rtts.append(rtt * 1000)
            overheads.append(rtt * 1000 - res.inference_ms)
            echoes.append(h.ask_echo(f"e{i}", regions=[point_region(320, 240)], max_new_tokens=1) * 1000)
        h.stop_echo()
        # idle camera again, now that queries were answered (worker and service paths have run)
        after = h.idle_window(idle_s)
        # ten caption queries on one frame, sent together, vs one (camera stopped: one latest frame)
        h.stop_camera()
        one, _ = h.ask("one", regions=[point_region(100, 100)], max_new_tokens=10)
        sent = time.perf_counter()
        for i in range(10):
            h.query_pub.publish(
                RegionQuery(
                    query_id=f"ten{i}",
                    task=RegionQuery.CAPTION,
                    regions=[point_region(50 + 50 * i, 200)],
                    max_new_tokens=10,
                )
            )
        h.wait_for(lambda: all(f"ten{i}" in h.results for i in range(10)), 300, "the ten captions were not answered")
        ten = max(h.results[f"ten{i}"][0] for i in range(10)) - sent
        bursts = measure_bursts(h)
        peak = peak_rss_mib(h.proc.pid)
    finally:
        h.close()
    over = statistics.median(overheads)
    echo = statistics.median(echoes)
    idle_pct = max(before["cpu_pct"], after["cpu_pct"])
    received = min(before["received_hz"], after["received_hz"])
    goal_hz = RECEIVED_SHARE * PUBLISHED_HZ
    windows = {
        "before_query": round(before["cpu_pct"], 1),
        "after_query": round(after["cpu_pct"], 1),
        "seconds": round(min(before["seconds"], after["seconds"]), 1),
    }
    busy = {"load_avg_1min_at_start": round(load_before, 2), "cores": os.cpu_count()}
    overhead_met = over <= OVERHEAD_GOAL_MS and over <= echo + OVER_ECHO_GOAL_MS
    figures = [
        Figure(
            "node_overhead_ms",
            round(over, 2),
            "ms",
            f"<= {OVERHEAD_GOAL_MS:g} ms median and <= echo floor + {OVER_ECHO_GOAL_MS:g} ms",
            overhead_met,
            {
                "echo_floor_ms": round(echo, 2),
                "minus_echo_ms": round(over - echo, 2),
                "ratio_to_echo": round(over / echo, 2) if echo > 0 else float("nan"),
                "median_round_trip_ms": round(statistics.median(rtts), 2),
                "p90_overhead_ms": round(_p90(overheads), 2),
                "queries": queries,
                "frame": "640x480",
            },
        ),
        Figure(
            "dds_echo_floor_ms",
            round(echo, 2),
            "ms",
            "",
            None,
            {
                "what": "a plain rclpy echo's round trip: the node's own RegionResult, same QoS, same camera",
                "p90_ms": round(_p90(echoes), 2),
                "queries": queries,
            },
        ),
        Figure(
            "idle_camera_cpu_pct",
            round(idle_pct, 1),
            "% of one core",
            f"<= {IDLE_CPU_GOAL_PCT:g} % (worse of the two windows)",
            idle_pct <= IDLE_CPU_GOAL_PCT,
            windows | busy,
        ),
        Figure(
            "idle_camera_received_hz",
            round(received, 1),
            "Hz",
            f">= {goal_hz:g} Hz ({RECEIVED_SHARE:.0%} of {PUBLISHED_HZ:g} published, worse window)",
            received >= goal_hz,
            {
                "before_query": round(before["received_hz"], 1),
                "after_query": round(after["received_hz"], 1),
                "seconds": windows["seconds"],
                "published_hz": PUBLISHED_HZ,
            },
        ),
        Figure(
            "node_ten_captions_one_frame_vs_one",
            round(ten / one, 2),
            "x",
            "<= 1.5x",
            ten / one <= 1.5,
            {"one_s": round(one, 3), "ten_s": round(ten, 3)},
        ),
        Figure(
            "node_ten_captions_vs_one_query_of_ten_regions",
            round(bursts["ratio"], 2),
            "x",
            "<= 1.15x (median of 3 bursts, default batching parameters)",
            bursts["ratio"] <= 1.15,
            {k: v for k, v in bursts.items() if k != "ratio"},
        ),
        Figure("node_peak_memory_mib", round(peak, 1), "MiB", "", None, {"model": model}),
        Figure(
            "warm_up_ms",
            _number(warm_up["warmup_ms"]),
            "ms",
            "",
            None,
            {
                "activate_ms": _number(warm_up["activate_ms"]),
                "includes": "model load and warm-up (activation at start warms before it returns)",
                "image": "640x480 (no frame before activation: the default size)",
            },
        ),
    ]
    for task, first in firsts.items():
        if "skipped" in first:
            figures.append(Figure(f"first_{task}_vs_next_ten", float("nan"), "x", "", None, first))
            continue
        ratio = first.pop("ratio")
        figures.append(
            Figure(
                f"first_{task}_vs_next_ten",
                round(ratio, 2),
                "x",
                f"<= {FIRST_VS_NEXT_GOAL:g}x the median of the next ten (round trips)",
                ratio <= FIRST_VS_NEXT_GOAL,
                first,
            )
        )
    from dataclasses import asdict

    return {"model": model, "figures": [asdict(f) for f in figures], "notes": NODE_NOTES}


NODE_NOTES = [
    "How the node figures are taken (each model's node in its own process, 640x480 camera at 30 Hz):",
    "",
    "- `first_<task>_vs_next_ten`: right after the node says it is active (model loaded and warmed up,",
    "  `warm_up: true`), the first query of each task, then ten more; round trips, each on the newest frame.",
    "  ASK is skipped for a model that does not answer free questions.",
    "- `node_overhead_ms`: a query's round trip minus the node's own `inference_ms`, median of 20.",
    "  `dds_echo_floor_ms`: a plain rclpy echo in another process (subscribed to the same camera, same QoS,",
    "  its topics read as the node reads them: a reader thread, the camera kept serialized) answering each",
    "  query with the node's own RegionResult, its queries interleaved with the node's: what ROS itself costs",
    "  for the same messages on this machine at that moment.",
    "- `idle_camera_cpu_pct`: the node reads the camera, depth and query topics on a thread of its own (not",
    "  through rclpy's executor, whose every wake-up rebuilds a wait set of all the node's entities) and keeps",
    "  frames serialized until a query reads one; its expiry timer runs only while something can time out.",
    "- `node_ten_captions_vs_one_query_of_ten_regions`: the node takes the queries its subscription already",
    "  holds as one group, and its worker settles (`batch_settle_ms`) only when it wakes to find another",
    "  query queued; a query the worker started alone is regrouped with those that arrive while it runs (its",
    "  run given up within one language-model step, one engine call for all). A lone query",
    "  (`node_overhead_ms`) is never delayed. `batches`: the engine calls per burst; `regrouped`: bursts",
    "  whose first query had started alone.",
    "- `warm_up_ms`: the node's warm-up at activation (snapping model, default vocabulary's embeddings,",
    "  segmenter, one forward of each task on a synthetic frame); `activate_ms` includes the model's loading.",
    "- The machine is shared with other work (other agents' training and tests on the same 2 cores): every",
    "  figure is noisy, absolute times are upper bounds, and a run may miss a goal that a quiet one meets.",
]


def _p90(values: list[float]) -> float:
    return float(sorted(values)[int(0.9 * (len(values) - 1))]) if values else float("nan")


def _number(value: str) -> float:
    try:
        return round(float(value), 1)
    except ValueError:
        return float("nan")


def echo_main(template_path: Path) -> int:
    """The plain rclpy echo: every RegionQuery on ``ECHO_QUERIES`` answered with the stored RegionResult.

    What the node does at the least, and nothing more: the same subscriptions read the same way
    (queries, and the camera kept serialized with the bench's image QoS, both on a
    :class:`SubscriptionReader` thread), the same history depths, an executor spinning beside.
    """
    from rclpy.executors import ExternalShutdownException
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    from .node import PARAMETERS

    apply_local_ros_env()
    rclpy.init()
    node = rclpy.create_node("region_perception_echo")
    template = deserialize_message(template_path.read_bytes(), RegionResult)
    depth = int(PARAMETERS["query_qos_depth"][0])
    results = node.create_publisher(RegionResult, ECHO_RESULTS, depth)
    latest: list[bytes] = []

    def on_query(msg: RegionQuery) -> None:
        template.query_id, template.task = msg.query_id, msg.task
        results.publish(template)

    def on_image(data: bytes) -> None:  # as the node's camera callback: keep the frame, nothing else
        latest[:] = [data]

    reader = SubscriptionReader(node, "echo-intake")
    reader.subscribe(RegionQuery, ECHO_QUERIES, on_query, depth)
    reader.subscribe(Image, "image", on_image, qos.image_qos(1, "reliable"), raw=True)
    reader.start()
    executor = make_executor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        reader.close()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m region_perception.ros.bench_node --echo RESULT_FILE``: the bench's echo process."""
    parser = argparse.ArgumentParser(description="the node bench's plain rclpy echo")
    parser.add_argument("--echo", type=Path, required=True, help="a serialized RegionResult to answer with")
    return echo_main(parser.parse_args(argv).echo)


if __name__ == "__main__":
    sys.exit(main())
