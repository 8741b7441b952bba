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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .engine import EngineConfig, RegionEngine
from .refer import refer_reference
from .regions import PointsRegion

SENTENCES = ("the woman in the white space suit", "the helmet on the right")


@dataclass
class Figure:
    name: str
    value: float
    unit: str
    goal: str = ""
    met: bool | None = None  # None: no goal
    detail: dict[str, Any] = field(default_factory=dict)


def timed(
    fn: Callable[[], Any], runs: int = 3, warmup: Callable[[], Any] | None = None
) -> tuple[float, list[float], Any]:
    """Median seconds of ``runs`` calls, after one warm-up call (``warmup`` or ``fn``)."""
    (warmup or fn)()
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


def synthetic_proposals(size: tuple[int, int], n: int = 20, seed: int = 0) -> list[np.ndarray]:
    """``n`` rectangles of 5-15 % of the image, off the borders: they pass RegionVLM's filter."""
    h, w = size
    rng = np.random.default_rng(seed)
    masks = []
    while len(masks) < n:
        area = rng.uniform(0.05, 0.15) * h * w
        aspect = rng.uniform(0.5, 2.0)
        bh, bw = int(np.sqrt(area / aspect)), int(np.sqrt(area * aspect))
        if bh >= h - 2 or bw >= w - 2:
            continue
        y0, x0 = rng.integers(1, h - bh - 1), rng.integers(1, w - bw - 1)
        m = np.zeros(size, dtype=bool)
        m[y0 : y0 + bh, x0 : x0 + bw] = True
        masks.append(m)
    return masks


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
    from .refer import draw_cues

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
    from .bench_batching import bench_batching, refer_bound

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
    }


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
        f"- machine: {m['cpu']}, {m['cores']} cores, CUDA available: {m['cuda']}",
        f"- torch {m['torch']}, Python {m['python']}",
        f"- date: {m['date']}; whole run: {report['seconds']} s",
        "",
    ]
    for section in report["engine"] + report.get("node", []):
        title = section["model"] + (" (engine)" if "load_s" in section else " (node)")
        lines += [f"## {title}", "", "| figure | value | goal | met | details |", "|---|---|---|---|---|"]
        for f in section["figures"]:
            met = "" if f["met"] is None else ("yes" if f["met"] else "**missed**")
            detail = ", ".join(f"{k}={v}" for k, v in f["detail"].items() if not isinstance(v, (dict, list)))
            lines.append(f"| {f['name']} | {f['value']} {f['unit']} | {f['goal']} | {met} | {detail} |")
        lines.append("")
    lines += report.get("notes", [])
    return "\n".join(lines) + "\n"
