"""Splitting an evaluation over ranks (torchrun / accelerate) and merging their per-rank rows.

Why: each rank writes its own ``results.rankR.jsonl`` (no shared file, no locks); the summary is
computed from the union of rows, so a merged run reports exactly what one process would.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def rank_world() -> tuple[int, int]:
    """This process's (rank, world size): torch.distributed if initialised, else RANK/WORLD_SIZE, else (0, 1)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:
        pass
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def shard(samples: Sequence[T], rank: int, world: int) -> list[T]:
    """Rank ``rank``'s share of ``samples`` (every world-th item, so image groups spread evenly)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    return list(samples[rank::world])


def rank_path(out: Path, rank: int, world: int) -> Path:
    """``results.jsonl`` -> ``results.rank1.jsonl`` when sharded; the path itself for one process."""
    out = Path(out)
    return out if world == 1 else out.with_name(f"{out.stem}.rank{rank}{out.suffix}")


def read_rows(path: Path) -> list[dict]:
    """The rows of a jsonl file; a last line cut short by a crash is dropped (it will be redone)."""
    rows = []
    if not Path(path).is_file():
        return rows
    lines = Path(path).read_text().splitlines()
    for k, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {k + 1} is not JSON") from None
    return rows


def merge_shards(out: Path, world: int) -> list[dict]:
    """Concatenate ``out``'s per-rank files into ``out`` (one row per key, first wins) and return the rows."""
    out = Path(out)
    seen: dict[str, dict] = {r["key"]: r for r in read_rows(out)}
    for rank in range(world):
        for row in read_rows(rank_path(out, rank, world)):
            seen.setdefault(row["key"], row)
    rows = list(seen.values())
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")  # every rank merges: one temporary file each
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out)
    return rows
