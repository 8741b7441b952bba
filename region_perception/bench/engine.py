"""``region-perception bench``: the engine's speed, measured as the node runs it.

Each figure is the median of several runs after a warm-up, compared with its goal. Ratios
are what this CPU can show (absolute times only mean something on the target GPU);
absolute figures are reported too. Every measured path is the engine's own (the node calls
the same methods): nothing here is a benchmark-only fast path.
"""

from __future__ import annotations

import platform
import statistics
import time
import uuid
from dataclasses import asdict
from typing import Any

import numpy as np

from ..engine import EngineConfig, RegionEngine
from ..engine.refer import refer_reference
from ..geometry.regions import PointsRegion
from .batching import bench_batching, refer_bound
from .common import SENTENCES, Figure, synthetic_proposals, timed


def bench_refer(engine: RegionEngine, image: np.ndarray, runs: int) -> Figure:
    """20 proposals x 5 draws x 10 points, one sentence: ours vs RegionVLM's released procedure."""
    masks = synthetic_proposals(image.shape[:2])
    cfg = engine.config
    model = engine.model
    draws = cfg.refer_draws if model.uses_point_draws else 1

    def ours():
        key = f"bench-{uuid.uuid4().hex}"  # a new frame: the image is encoded, once
        engine.cache.put(key, "proposals", masks)
        return engine.refer(image, SENTENCES[0], frame_key=key)

    def reference():
        return refer_reference(
            lambda cue: model.reference_row_loss(image, cue, SENTENCES[0]),
            masks,
            points_per_draw=cfg.points_per_region,
            draws=draws,
            seed=cfg.seed,
            rounding=cfg.rounding,
        )

    t_ours, ours_runs, result = timed(ours, runs)
    t_ref, ref_runs, ref = timed(reference, runs, warmup=lambda: model.reference_row_loss(image, ref_cue(masks), "x"))
    same = result.selected_index == ref.selected_index and np.allclose(result.candidate_scores, ref.scores, atol=1e-3)
    if not same:
        raise AssertionError(
            f"encode-once REFER disagrees with the reference: {result.candidate_scores} vs {ref.scores}"
        )
    ratio = t_ref / t_ours
    return Figure(
        "refer_speedup_vs_reference",
        round(ratio, 2),
        "x",
        ">= 20x",
        ratio >= 20,
        {
            "ours_s": round(t_ours, 3),
            "reference_s": round(t_ref, 3),
            "rows": len(masks) * draws,
            "ours_runs_s": [round(t, 3) for t in ours_runs],
            "reference_runs_s": [round(t, 3) for t in ref_runs],
            "same_selection_and_scores": same,
            "ours_timings_ms": result.timings_ms,
        },
    )


def ref_cue(masks):
    from ..engine.refer import draw_cues

    return draw_cues(masks[:1], draws=1)[0]


def bench_captions(engine: RegionEngine, image: np.ndarray, runs: int) -> list[Figure]:
    """10 caption queries on one frame vs 1 (image encoded once) and vs 10 naive."""
    h, w = image.shape[:2]
    regions = [PointsRegion(np.array([[w * (i + 1) / 11, h / 2]])) for i in range(10)]

    def one():
        return engine.caption(image, regions[:1], frame_key=f"bench-{uuid.uuid4().hex}")

    def ten_queries_same_frame():
        key = f"bench-{uuid.uuid4().hex}"
        return [engine.caption(image, [r], frame_key=key) for r in regions]

    def ten_regions_one_query():
        return engine.caption(image, regions, frame_key=f"bench-{uuid.uuid4().hex}")

    def ten_naive():
        return [engine.caption(image, [r], frame_key=f"bench-{uuid.uuid4().hex}") for r in regions]

    t1, _, _ = timed(one, runs)
    t10, _, _ = timed(ten_queries_same_frame, runs)
    t10b, _, _ = timed(ten_regions_one_query, runs)
    tn, _, _ = timed(ten_naive, runs)
    detail = {
        "one_query_s": round(t1, 3),
        "ten_queries_same_frame_s": round(t10, 3),
        "ten_regions_one_query_s": round(t10b, 3),
        "ten_naive_s": round(tn, 3),
    }
    return [
        Figure("ten_caption_queries_vs_one", round(t10 / t1, 2), "x", "<= 1.5x", t10 / t1 <= 1.5, detail),
        Figure(
            "ten_regions_in_one_query_vs_one", round(t10b / t1, 2), "x", "<= 1.5x (batched)", t10b / t1 <= 1.5, detail
        ),
        Figure("ten_naive_vs_one", round(tn / t1, 2), "x", "", None, detail),
    ]


def bench_second_refer(engine: RegionEngine, image: np.ndarray, runs: int) -> Figure:
    """A second REFER on a frame reuses its proposals, embedding and encoded rows."""
    firsts, seconds = [], []
    # no separate warm-up: the engine is warm from the figures measured before this one
    for _ in range(runs):
        key = f"bench-{uuid.uuid4().hex}"
        start = time.perf_counter()
        engine.refer(image, SENTENCES[0], frame_key=key)
        firsts.append(time.perf_counter() - start)
        start = time.perf_counter()
        second = engine.refer(image, SENTENCES[1], frame_key=key)
        seconds.append(time.perf_counter() - start)
    ratio = statistics.median(firsts) / statistics.median(seconds)
    return Figure(
        "second_refer_speedup",
        round(ratio, 2),
        "x",
        ">= 5x",
        ratio >= 5,
        {
            "first_s": round(statistics.median(firsts), 3),
            "second_s": round(statistics.median(seconds), 3),
            "proposals": engine.config.proposals,
            "second_timings_ms": second.timings_ms,
        },
    )


def bench_engine(model: str, runs: int = 3, image: np.ndarray | None = None) -> dict[str, Any]:
    """Every engine figure for one model."""
    if image is None:
        from skimage import data

        image = data.astronaut()
    started = time.perf_counter()
    engine = RegionEngine.load(
        EngineConfig(model=model, segmenter="none", device="cpu", proposals="superpixels", max_new_tokens=10)
    )
    load_s = time.perf_counter() - started
    refer = bench_refer(engine, image, runs)
    figures = [
        refer,
        refer_bound(refer),
        *bench_captions(engine, image, runs),
        bench_second_refer(engine, image, runs),
        *bench_batching(engine, image, runs),
    ]
    return {
        "model": model,
        "weights_random": engine.weights_random,
        "load_s": round(load_s, 2),
        "image": f"{image.shape[1]}x{image.shape[0]}",
        "figures": [asdict(f) for f in figures],
        "seconds": round(time.perf_counter() - started, 1),
    }


def bench_depth3d(runs: int = 20) -> dict[str, Any]:
    """The 3D step (region_perception.geometry.depth) per region at 640x480, goal <= 2 ms per region.

    Regions from a point's disk to the whole image over a synthetic depth scene (objects at
    1-3 m, a wall at 4 m); the figure is the slowest region size's median. Decoding the depth
    frame (16UC1 -> metres) is once per frame, shared by its queries, and reported apart.
    """
    from ..geometry.depth import (
        DepthSettings,
        depth_to_metres,
        locate_mask,
        metres_to_16uc1,
        synthetic_depth,
        synthetic_intrinsics,
    )

    h, w = 480, 640
    k = synthetic_intrinsics(w, h)
    vv, uu = np.mgrid[0:h, 0:w]
    objects = [((uu - 160) ** 2 + (vv - 240) ** 2 <= r**2, z) for r, z in ((40, 1.0), (120, 2.0))]
    objects.append(((uu > 380) & (uu < 620) & (vv > 60) & (vv < 420), 3.0))
    units = metres_to_16uc1(synthetic_depth((h, w), objects, 4.0))
    data = units.tobytes()
    decode_s, _, depth = timed(lambda: depth_to_metres("16UC1", h, w, w * 2, data), runs)
    regions = {
        "point disk (~300 px)": (uu - 160) ** 2 + (vv - 240) ** 2 <= 10**2,
        "object 5% of image": objects[0][0] | ((uu - 160) ** 2 + (vv - 240) ** 2 <= 70**2),
        "object 30% of image": objects[2][0],
        "whole image": np.ones((h, w), bool),
    }
    settings = DepthSettings()
    per_region = {}
    for name, mask in regions.items():
        sec, _, _ = timed(lambda mask=mask: locate_mask(mask, depth, k, settings), runs)
        per_region[name] = round(sec * 1000.0, 3)
    worst = max(per_region.values())
    figure = Figure(
        "3D step per region (640x480 depth)", round(worst, 3), "ms", "<= 2 ms per region", worst <= 2.0,
        {**{f"{n} ms": v for n, v in per_region.items()}, "depth decode per frame ms": round(decode_s * 1000, 3)},
    )
    return {"model": "3D step (depth3d, numpy + OpenCV)", "title": "3D step", "figures": [asdict(figure)]}


def machine() -> dict[str, str]:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": str(torch.cuda.is_available()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": commit(),
        "load_avg_1min": f"{os.getloadavg()[0]:.2f}",
    }


def commit() -> str:
    """The code measured: ``git rev-parse --short HEAD``, and "+ uncommitted changes" when the tree is dirty.

    A page of figures is only true of the code it names; "unknown" outside a git checkout.
    """
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head} + uncommitted changes" if dirty else head


def to_markdown(report: dict[str, Any]) -> str:
    """docs/benchmarks.md: the machine, then one table per model."""
    m = report["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`region-perception bench --out docs/benchmarks.md`). Models with random",
        "weights: weights do not change compute. Ratios are what this CPU shows; absolute times only mean",
        "something on the target GPU. A goal that is missed is reported as missed.",
        "",
        f"- commit: {m.get('commit', 'unknown')}",
        f"- machine: {m['cpu']}, {m['cores']} cores, CUDA available: {m['cuda']}",
        f"- torch {m['torch']}, Python {m['python']}",
        f"- date: {m['date']}; whole run: {report['seconds']} s",
        f"- load average (1 min) at the start: {m.get('load_avg_1min', '?')}: a shared machine's figures are noisy,"
        " and its absolute times are upper bounds",
        "",
    ]
    shown: list[list[str]] = []
    sections = report["engine"] + report.get("node", [])
    for extra in ("depth3d", "segmenter", "follow"):
        sections += report.get(extra, [])
    for section in sections:
        title = section.get("title") or section["model"] + (" (engine)" if "load_s" in section else " (node)")
        lines += [f"## {title}", "", "| figure | value | goal | met | details |", "|---|---|---|---|---|"]
        for f in section["figures"]:
            met = "" if f["met"] is None else ("yes" if f["met"] else "**missed**")
            detail = ", ".join(f"{k}={v}" for k, v in f["detail"].items() if not isinstance(v, (dict, list)))
            lines.append(f"| {f['name']} | {f['value']} {f['unit']} | {f['goal']} | {met} | {detail} |")
        lines.append("")
        notes = section.get("notes", [])
        if notes and notes not in shown:  # the same notes under several models: once, under the first
            shown.append(notes)
            lines += [*notes, ""]
    lines += report.get("notes", [])
    return "\n".join(lines) + "\n"
