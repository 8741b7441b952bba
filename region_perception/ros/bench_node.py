"""Node-level figures: overhead per query, idle camera cost, peak memory per model.

The node runs as its own process (``region-perception-node`` with config/default.yaml),
fed 640x480 frames at 30 Hz by this process, on loopback in a domain of its own.
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
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image

from region_perception.msg import Region, RegionQuery, RegionResult

from ..bench import Figure
from ..ros_env import apply_local_ros_env
from .processes import camera_command, node_command

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
    """The node process, a 30 Hz camera thread and a query client."""

    def __init__(self, model: str, log: Path) -> None:
        self.env = dict(apply_local_ros_env())
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            node_command(model=model, diagnostics_period_s=0.5, queue_size=32, image_reliability="reliable"),
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("region_perception_bench", context=self.context)
        # reliable, depth 1: on loopback, best-effort frames of ~1 MB lose fragments and
        # most never arrive, which would make the idle cost look smaller than it is
        self.image_pub = self.node.create_publisher(Image, "image", 1)
        self.query_pub = self.node.create_publisher(RegionQuery, "region_queries", 50)
        self.results: dict[str, tuple[float, RegionResult]] = {}
        self.diag: dict[str, str] = {}
        self.node.create_subscription(RegionResult, "region_results", self._on_result, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.stop = threading.Event()
        self.camera: subprocess.Popen | None = None
        threading.Thread(target=self._spin, daemon=True).start()

    def _spin(self) -> None:
        while not self.stop.is_set():
            self.executor.spin_once(timeout_sec=0.02)

    def start_camera(self, photo: Path, rate: float = 30.0) -> None:
        """The demo camera tool, 640x480 at ``rate`` Hz (reliable: see the note above)."""
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
        self.results[msg.query_id] = (time.perf_counter(), msg)

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for st in msg.status:
            if st.name.startswith("region_perception"):
                self.diag = {kv.key: kv.value for kv in st.values} | {"_message": st.message}

    def wait_active(self, timeout: float = 600) -> None:
        end = time.monotonic() + timeout
        while not (self.diag.get("_message") == "ok" and int(self.diag.get("frames_received", 0)) > 0):
            if time.monotonic() > end or self.proc.poll() is not None:
                raise RuntimeError(f"node did not become active (see {self.log.name})")
            time.sleep(0.1)

    def ask(self, qid: str, task: int = RegionQuery.CAPTION, **fields) -> tuple[float, RegionResult]:
        q = RegionQuery(query_id=qid, task=task)
        for k, v in fields.items():
            setattr(q, k, v)
        sent = time.perf_counter()
        self.query_pub.publish(q)
        end = time.monotonic() + 300
        while qid not in self.results:
            if time.monotonic() > end:
                raise RuntimeError(f"no result for {qid}")
            time.sleep(0.0005)
        received, result = self.results[qid]
        return received - sent, result

    def close(self) -> None:
        self.stop.set()
        self.stop_camera()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.log.close()


def point_region(x: float, y: float) -> Region:
    return Region(kind=Region.POINTS, points=[Point32(x=x, y=y)])


def bench_node(model: str, out_dir: Path, idle_s: float = 10.0, queries: int = 20) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    photo = out_dir / "frame_640x480.png"
    if not photo.exists():
        import cv2
        from skimage import data

        cv2.imwrite(str(photo), cv2.cvtColor(cv2.resize(data.astronaut(), (640, 480)), cv2.COLOR_RGB2BGR))
    h = Harness(model, out_dir / f"node-{model.replace('/', '_')}.log")
    try:
        h.start_camera(photo)
        h.wait_active()
        time.sleep(1.0)
        # idle camera: 30 Hz of 640x480 and no query
        frames0, cpu0, t0 = int(h.diag.get("frames_received", 0)), cpu_seconds(h.proc.pid), time.monotonic()
        time.sleep(idle_s)
        cpu1, t1 = cpu_seconds(h.proc.pid), time.monotonic()
        time.sleep(0.6)
        idle_pct = 100 * (cpu1 - cpu0) / (t1 - t0)
        rate = (int(h.diag.get("frames_received", 0)) - frames0) / (t1 - t0 + 0.6)
        # overhead: round trip minus the node's own inference time
        overheads, rtts = [], []
        h.ask("warm", regions=[point_region(320, 240)], max_new_tokens=1)
        for i in range(queries):
            rtt, res = h.ask(f"q{i}", regions=[point_region(320, 240)], max_new_tokens=1)
            rtts.append(rtt * 1000)
            overheads.append(rtt * 1000 - res.inference_ms)
        # ten caption queries on one frame, sent together, vs one (camera stopped: one latest frame)
        h.stop_camera()
        time.sleep(0.5)
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
        end = time.monotonic() + 300
        while not all(f"ten{i}" in h.results for i in range(10)) and time.monotonic() < end:
            time.sleep(0.001)
        ten = max(h.results[f"ten{i}"][0] for i in range(10)) - sent
        peak = peak_rss_mib(h.proc.pid)
    finally:
        h.close()
    over = statistics.median(overheads)
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
            "<= 10 %",
            idle_pct <= 10,
            {"seconds": idle_s, "received_hz": round(rate, 1), "published_hz": 30},
        ),
        Figure(
            "node_ten_captions_one_frame_vs_one",
            round(ten / one, 2),
            "x",
            "<= 1.5x",
            ten / one <= 1.5,
            {"one_s": round(one, 3), "ten_s": round(ten, 3)},
        ),
        Figure("node_peak_memory_mib", round(peak, 1), "MiB", "", None, {"model": model}),
    ]
    from dataclasses import asdict

    return {"model": model, "figures": [asdict(f) for f in figures]}
