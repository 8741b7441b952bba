"""``region-perception cost``: the released models' FLOPs and memory, and what they mean on a GPU.

Latency is an estimate, stated as such: per stage, the larger of compute time (FLOPs at the
device's published fp16 dense throughput times a stated utilisation) and weight-read time
(fp16 weights at the published memory bandwidth times a stated efficiency; a token-by-token
decode reads them once per token). Anchors are published latencies of segmenters on Orin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .flops import ModelCost, Stage, TaskCost


@dataclass(frozen=True)
class Device:
    name: str
    fp16_tflops: float  # published dense fp16 tensor throughput (fp32 accumulate)
    bandwidth_gbs: float  # published memory bandwidth
    source: str


DEVICES = (
    Device(
        "desktop GPU (RTX 4090)",
        165.2,
        1008.0,
        "NVIDIA Ada Lovelace whitepaper: 165.2 TFLOPS fp16 tensor dense with fp32 accumulate; 1008 GB/s GDDR6X",
    ),
    Device(
        "Jetson AGX Orin 64GB",
        42.5,
        204.8,
        "NVIDIA Jetson AGX Orin datasheet: GPU 170 sparse INT8 TOPS = 85 dense INT8 = 42.5 dense fp16; "
        "204.8 GB/s LPDDR5",
    ),
)
COMPUTE_UTILISATION = 0.4  # of peak, for the large matmuls of a prefill / encoder (stated, not measured)
BANDWIDTH_EFFICIENCY = 0.7  # of peak bandwidth when streaming weights

ANCHORS = (
    (
        "MobileSAM (TensorRT, fp32 encoder) on Jetson AGX Orin",
        "35 ms encoder, 39 ms full pipeline",
        "NVIDIA-AI-IOT/nanosam README",
    ),
    ("NanoSAM (ResNet18, TensorRT fp16) on Jetson AGX Orin", "4.2 ms encoder, 8.1 ms full pipeline", "same table"),
    (
        "Isaac ROS Segment Anything graph (full SAM, 720p in, 1024x1024 network) on Jetson AGX Orin",
        "2.22 fps, 377 ms first-sent-to-received latency",
        "NVIDIA-ISAAC-ROS/isaac_ros_benchmark results/isaac_ros_sam_graph-agx_orin.json",
    ),
    (
        "Isaac ROS Segment Anything graph (Mobile SAM, 720p in, 1024x1024 network) on Jetson AGX Orin",
        "8.75 fps, 573 ms first-sent-to-received latency (2024-12-06 run)",
        "NVIDIA-ISAAC-ROS/isaac_ros_benchmark results/isaac_ros_mobile_sam_graph-agx_orin.json",
    ),
)


def stage_ms(stage: Stage, device: Device) -> float:
    """Estimated milliseconds: compute-bound or weight-read-bound, whichever is slower."""
    compute = stage.flops / (device.fp16_tflops * 1e12 * COMPUTE_UTILISATION)
    reads = max(1, stage.decode_tokens) * stage.weight_bytes / (device.bandwidth_gbs * 1e9 * BANDWIDTH_EFFICIENCY)
    return 1000.0 * max(compute, reads)


def task_ms(task: TaskCost, device: Device, cached_frame: bool = False) -> float:
    """A query's estimate; ``cached_frame``: the frame's vision stage was already run for another query."""
    return sum(stage_ms(s, device) for s in task.stages if not (cached_frame and s.runs_per == "frame"))


def all_costs(models: list[str] | None = None) -> list[ModelCost]:
    from .flops import florence2_cost, regiongpt_cost, regionvlm_cost

    builders = {
        "florence-2-base": lambda: florence2_cost("florence-2-base"),
        "florence-2-large": lambda: florence2_cost("florence-2-large"),
        "regionvlm": regionvlm_cost,
        "regiongpt": regiongpt_cost,
    }
    unknown = [m for m in models or [] if m not in builders]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: expected {', '.join(builders)}")
    return [builders[m]() for m in models or builders]


def to_json(costs: list[ModelCost]) -> dict[str, Any]:
    out = []
    for cost in costs:
        entry = asdict(cost)
        entry["fp16_weights_gib"] = round(cost.fp16_bytes / 2**30, 2)
        entry["tasks"] = [
            {
                "task": t.task,
                "gflops": round(t.flops / 1e9, 1),
                "stages": [asdict(s) for s in t.stages],
                "estimate_ms": {d.name: round(task_ms(t, d), 1) for d in DEVICES},
                "estimate_ms_frame_cached": {d.name: round(task_ms(t, d, True), 1) for d in DEVICES},
            }
            for t in cost.tasks
        ]
        out.append(entry)
    return {
        "models": out,
        "devices": [asdict(d) for d in DEVICES],
        "compute_utilisation": COMPUTE_UTILISATION,
        "bandwidth_efficiency": BANDWIDTH_EFFICIENCY,
        "anchors": [{"what": a, "figure": f, "source": s} for a, f, s in ANCHORS],
    }


def to_markdown(costs: list[ModelCost]) -> str:
    """The section of docs/benchmarks.md: per model, per task, per stage."""
    names = [d.name for d in DEVICES]
    lines = [
        "## Real models' cost (computed, `region-perception cost`)",
        "",
        "FLOPs counted by `torch.utils.flop_counter` on the released configs built on the meta device",
        "(matmul, convolution, attention; 2 FLOPs per multiply-add). Latency is an **estimate**: per stage the",
        f"slower of compute at {COMPUTE_UTILISATION:.0%} of the published fp16 dense throughput and weight reads at",
        f"{BANDWIDTH_EFFICIENCY:.0%} of the published bandwidth (once per generated token when decoding).",
        "",
    ]
    for d in DEVICES:
        lines.append(f"- {d.name}: {d.fp16_tflops} TFLOPS fp16 dense, {d.bandwidth_gbs} GB/s ({d.source})")
    lines.append("")
    for cost in costs:
        lines += [
            f"### {cost.name}: {cost.params / 1e9:.2f} B parameters, {cost.fp16_bytes / 2**30:.2f} GiB in fp16",
            "",
            f"Config: {cost.source}.",
            "",
            "| task | stage | runs per | GFLOP | " + " | ".join(f"{n} ms" for n in names) + " |",
            "|---|---|---|---|" + "---|" * len(names),
        ]
        for task in cost.tasks:
            for s in task.stages:
                est = " | ".join(f"{stage_ms(s, d):.1f}" for d in DEVICES)
                lines.append(f"| {task.task} | {s.name} | {s.runs_per} | {s.flops / 1e9:.1f} | {est} |")
            total = " | ".join(f"**{task_ms(task, d):.1f}** ({task_ms(task, d, True):.1f})" for d in DEVICES)
            lines.append(f"| {task.task} | **total** (frame cached) | | **{task.flops / 1e9:.1f}** | {total} |")
        lines += [""] + [f"- {n}" for n in cost.notes] + [""]
    lines += ["Anchors (published, measured):", ""]
    lines += [f"- {a}: {f} ({s})" for a, f, s in ANCHORS]
    return "\n".join(lines) + "\n"
