"""Floor 8: ``region-perception bench`` (``make bench``): the engine's figures, depth and batching.

``bench.engine`` times the engine's tasks and writes the markdown of ``docs/benchmarks.md``;
``bench.batching`` times the query processor's batching; ``bench.common`` holds what both share.
The names below are what callers import from ``region_perception.bench``.
"""

from .batching import bench_batching, refer_bound
from .common import SENTENCES, Figure, synthetic_proposals, timed
from .engine import (
    bench_captions,
    bench_depth3d,
    bench_engine,
    bench_refer,
    bench_second_refer,
    machine,
    ref_cue,
    to_markdown,
)

__all__ = [
    "SENTENCES",
    "Figure",
    "bench_batching",
    "bench_captions",
    "bench_depth3d",
    "bench_engine",
    "bench_refer",
    "bench_second_refer",
    "machine",
    "ref_cue",
    "refer_bound",
    "synthetic_proposals",
    "timed",
    "to_markdown",
]
