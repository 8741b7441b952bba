"""``make soak``: 30 Hz camera + 2 Hz queries for N minutes; memory growth and result counts.

Not part of CI (it runs for minutes). Every query must get exactly one result; the node's
resident memory is sampled every 30 s, and growth after the first minute is reported.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

from region_perception.msg import RegionQuery

from ..common.status import Status
from .bench_node import Harness, point_region

TASKS = [
    ("caption", {"task": RegionQuery.CAPTION, "regions": [point_region(320, 240)], "max_new_tokens": 5}),
    ("classify", {"task": RegionQuery.CLASSIFY, "regions": [point_region(200, 200)], "labels": ["cat", "dog", "cup"]}),
    ("refer", {"task": RegionQuery.REFER, "text": "the person"}),
    ("no-region", {"task": RegionQuery.CAPTION, "regions": []}),  # malformed on purpose
]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="region-perception-soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--model", default="tiny-regionvlm")
    p.add_argument("--rate", type=float, default=2.0, help="queries per second")
    p.add_argument("--work-dir", default="bench_out")
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    photo = work / "frame_640x480.png"
    if not photo.exists():
        import cv2
        from skimage import data

        cv2.imwrite(str(photo), cv2.cvtColor(cv2.resize(data.astronaut(), (640, 480)), cv2.COLOR_RGB2BGR))
    h = Harness(args.model, work / "soak-node.log")
    sent: list[str] = []
    samples: list[tuple[float, float]] = []
    try:
        h.start_camera(photo)
        h.wait_active()
        start = time.monotonic()
        end = start + args.minutes * 60
        next_query, next_sample, i = start, start, 0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_query:
                name, fields = TASKS[i % len(TASKS)]
                q = RegionQuery(query_id=f"soak-{i}-{name}")
                for k, v in fields.items():
                    setattr(q, k, v)
                h.query_pub.publish(q)
                sent.append(q.query_id)
                i += 1
                next_query += 1.0 / args.rate
            if now >= next_sample:
                samples.append((now - start, rss_mib(h.proc.pid)))
                answered = sum(1 for q in sent if q in h.results)
                print(
                    f"[soak] {samples[-1][0] / 60:5.1f} min  rss {samples[-1][1]:7.1f} MiB  sent {len(sent)}  "
                    f"answered {answered}  frames {h.diag.get('frames_received', '?')}",
                    flush=True,
                )
                next_sample += 30
            time.sleep(max(0.0, min(next_query, next_sample, end) - time.monotonic()))  # until the next event
        try:
            h.wait_for(lambda: all(q in h.results for q in sent), 60, "some queries got no result")
        except RuntimeError:
            pass  # counted below as lost
        samples.append((time.monotonic() - start, rss_mib(h.proc.pid)))
        alive = h.proc.poll() is None
    finally:
        h.close()
    statuses = Counter(Status(h.results[q][1].status).name for q in sent if q in h.results)
    after_1min = [m for t, m in samples if t >= 60] or [samples[-1][1]]
    figures = {
        "minutes": args.minutes,
        "model": args.model,
        "queries_sent": len(sent),
        "results_received": sum(1 for q in sent if q in h.results),
        "by_status": dict(statuses),
        "rss_start_mib": round(samples[0][1], 1),
        "rss_after_1_min_mib": round(after_1min[0], 1),
        "rss_end_mib": round(samples[-1][1], 1),
        "growth_after_1_min_mib": round(samples[-1][1] - after_1min[0], 1),
        "frames_received": h.diag.get("frames_received"),
        "node_alive_at_end": alive,
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1))
    lost = figures["queries_sent"] - figures["results_received"]
    return 0 if lost == 0 and alive else 1


if __name__ == "__main__":
    sys.exit(main())
