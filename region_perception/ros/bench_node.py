"""Node-level figures: overhead per query, idle camera cost and frames received, peak memory.

The node runs as its own process (``region-perception-node`` with config/default.yaml),
fed 640x480 frames at 30 Hz by the camera tool, on loopback in a domain of its own. The
idle camera is measured twice, before any query and after queries were answered: a node
whose executor falls into busy-spinning shows it as CPU near a whole core and
frames received far below the published rate, in either window.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import threading
import time
from pathlib import Path

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point32

from region_perception.msg import Region, RegionQuery, RegionResult

from ..bench.engine import Figure
from ..common.ros_env import apply_local_ros_env
from .processes import camera_command, node_command
from .spin import make_executor, spin_in_background

PUBLISHED_HZ = 30.0
IDLE_S = 15.0  # each idle window: received_hz over at least this long
RECEIVED_SHARE = 0.95  # received_hz goal: this share of the published rate

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
        self.results: dict[str, tuple[float, RegionResult]] = {}
        self.diag: dict[str, str] = {}
        # (node clock at publication, frames_received): the received rate between two of them
        self.frame_counts: list[tuple[float, int]] = []
        self.changed = threading.Condition()  # notified on every result and diagnostics message
        self.node.create_subscription(RegionResult, "region_results", self._on_result, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = make_executor(self.context)
        self.executor.add_node(self.node)
        self.camera: subprocess.Popen | None = None
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
        self.wait_for(
            lambda: self.diag.get("_message") == "ok" and int(self.diag.get("frames_received", 0)) > 0,
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


def measure_bursts(h: Harness, bursts: int = 3, tag: str = "") -> dict:
    """Ten CAPTION clients on one frame, published one after another, vs one query of the same ten regions.

    Call with the camera stopped (every query reads the one latest frame, its features cached
    after the warm-up). Per burst: the time to the last of the ten answers over one query's
    round trip, and the batch sizes the node reported. A burst that reaches the idle worker
    is what the node's ``batch_settle_ms`` and ``max_batch`` are for (docs/batching.md).
    """
    regions = ten_regions()
    h.ask(f"{tag}warm-ten", regions=regions, max_new_tokens=10)
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
    }


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
    h = Harness(model, out_dir / f"node-{model.replace('/', '_')}.log")
    try:
        h.start_camera(photo)
        h.wait_active()
        # idle camera, before any query: 30 Hz of 640x480 and nothing else
        before = h.idle_window(idle_s)
        # overhead: round trip minus the node's own inference time
        overheads, rtts = [], []
        h.ask("warm", regions=[point_region(320, 240)], max_new_tokens=1)
        for i in range(queries):
            rtt, res = h.ask(f"q{i}", regions=[point_region(320, 240)], max_new_tokens=1)
            rtts.append(rtt * 1000)
            overheads.append(rtt * 1000 - res.inference_ms)
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
    idle_pct = max(before["cpu_pct"], after["cpu_pct"])
    received = min(before["received_hz"], after["received_hz"])
    goal_hz = RECEIVED_SHARE * PUBLISHED_HZ
    windows = {
        "before_query": round(before["cpu_pct"], 1),
        "after_query": round(after["cpu_pct"], 1),
        "seconds": round(min(before["seconds"], after["seconds"]), 1),
    }
    busy = {"load_avg_1min_at_start": round(load_before, 2), "cores": os.cpu_count()}
    figures = [
        Figure(
            "node_overhead_ms",
            round(over, 2),
            "ms",
            "<= 10 ms median",
            over <= 10,
            {"median_round_trip_ms": round(statistics.median(rtts), 2), "queries": queries, "frame": "640x480"},
        ),
        Figure(
            "idle_camera_cpu_pct",
            round(idle_pct, 1),
            "% of one core",
            "<= 10 % (worse of the two windows)",
            idle_pct <= 10,
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
    ]
    from dataclasses import asdict

    return {"model": model, "figures": [asdict(f) for f in figures]}
