"""``queries.yaml``: a scripted list of region queries, for ``run-log`` and a live node alike.

```yaml
queries:
  - id: helmet                # query_id (every-N queries get "@<frame index>" appended)
    task: caption             # caption | classify | refer | ask
    at: 1700000000.25         # the frame's stamp: seconds, {sec: .., nanosec: ..}, or "latest"
    points: [[255, 120]]      # shorthand for one region; or regions: [...] for several
  - id: every-3rd
    task: classify
    every: 3                  # every 3rd frame of the log (frames 0, 3, 6, ...)
    regions:
      - {box: [100, 200, 300, 500], name: torso}
      - {scribble: [[10, 10], [40, 30]]}
      - {mask: mask.png}      # path relative to the YAML file
      - {whole: true}
    labels: [person, rocket, flag]
    rank: false
  - {id: r1, task: refer, at: latest, text: the white helmet, max_new_tokens: 0, num_beams: 0}
```

Regions are kept as plain data (pixel coordinates) here: the ROS query tool turns them into
``Region`` messages, ``run-log`` into the core's region objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..common.status import Task
from ..geometry.regions import BoxRegion, MaskRegion, PointsRegion, Region, ScribbleRegion, WholeImage
from . import LogError

TASK_NAMES = {t.name.lower(): int(t) for t in Task}
REGION_KINDS = ("points", "scribble", "box", "mask", "whole")
QUERY_KEYS = {
    "id", "task", "at", "every", "points", "scribble", "box", "mask", "regions", "text", "labels", "rank",
    "max_new_tokens", "num_beams", "timeout_s",
}  # fmt: skip


@dataclass
class ScriptRegion:
    kind: str  # points | scribble | box | mask | whole
    points: list[list[float]] = field(default_factory=list)
    box: list[float] = field(default_factory=list)
    mask: np.ndarray | None = None  # bool
    name: str = ""

    def to_core(self) -> Region:
        pts = np.array(self.points, dtype=np.float64).reshape(-1, 2)
        if self.kind == "points":
            return PointsRegion(pts, self.name)
        if self.kind == "scribble":
            return ScribbleRegion(pts, self.name)
        if self.kind == "box":
            return BoxRegion(np.array(self.box, dtype=np.float64), self.name)
        if self.kind == "mask":
            return MaskRegion(self.mask, self.name)
        return WholeImage(self.name)


@dataclass
class ScriptQuery:
    query_id: str
    task: int
    at_ns: int | None = None  # 0 = the latest frame; None = scheduled by ``every``
    every: int = 0
    regions: list[ScriptRegion] = field(default_factory=list)
    text: str = ""
    labels: list[str] = field(default_factory=list)
    rank: bool = False
    max_new_tokens: int = 0
    num_beams: int = 0
    timeout_s: float = 0.0


def _stamp(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().lower() == "latest":
        return 0
    if isinstance(value, dict) and set(value) <= {"sec", "nanosec"}:
        return int(value.get("sec", 0)) * 1_000_000_000 + int(value.get("nanosec", 0))
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return int(round(float(value) * 1e9)) if isinstance(value, float) else int(value) * 1_000_000_000
    raise LogError(f"{where}: at: {value!r} is not a stamp (seconds, {{sec, nanosec}} or 'latest')")


def _points(value: Any, where: str, minimum: int = 1) -> list[list[float]]:
    try:
        pts = np.asarray(value, dtype=np.float64).reshape(-1, 2)
    except (TypeError, ValueError):
        raise LogError(f"{where}: {value!r} is not a list of [x, y] points") from None
    if len(pts) < minimum:
        raise LogError(f"{where}: needs at least {minimum} point(s)")
    return pts.tolist()


def _region(spec: Any, where: str, base: Path) -> ScriptRegion:
    if not isinstance(spec, dict):
        raise LogError(f"{where}: a region is a mapping like {{box: [x0, y0, x1, y1]}}, got {spec!r}")
    kinds = [k for k in REGION_KINDS if k in spec]
    unknown = set(spec) - set(REGION_KINDS) - {"name"}
    if len(kinds) != 1 or unknown:
        raise LogError(f"{where}: give exactly one of {', '.join(REGION_KINDS)} (got {', '.join(map(str, spec))})")
    kind, value, name = kinds[0], spec[kinds[0]], str(spec.get("name", ""))
    if kind == "points":
        return ScriptRegion("points", points=_points(value, where), name=name)
    if kind == "scribble":
        return ScriptRegion("scribble", points=_points(value, where, 2), name=name)
    if kind == "box":
        try:
            box = [float(v) for v in value]
        except (TypeError, ValueError):
            box = []
        if len(box) != 4:
            raise LogError(f"{where}: box: expected [x0, y0, x1, y1], got {value!r}")
        return ScriptRegion("box", box=box, name=name)
    if kind == "mask":
        import cv2

        path = (base / str(value)) if not Path(str(value)).is_absolute() else Path(str(value))
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise LogError(f"{where}: mask {str(path)!r}: not an image OpenCV can read")
        return ScriptRegion("mask", mask=mask > 0, name=name)
    return ScriptRegion("whole", name=name)


def parse_script(data: Any, base: Path = Path(".")) -> list[ScriptQuery]:
    """Validated queries from the YAML's data; LogError naming the query and field otherwise."""
    items = data.get("queries") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise LogError("queries file: expected 'queries:' with a list of queries")
    out: list[ScriptQuery] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        where = f"query {i + 1}"
        if not isinstance(item, dict):
            raise LogError(f"{where}: expected a mapping, got {item!r}")
        qid = str(item.get("id") or f"q{i + 1}")
        where = f"query {qid!r}"
        if qid in seen:
            raise LogError(f"{where}: duplicate id")
        seen.add(qid)
        unknown = set(item) - QUERY_KEYS
        if unknown:
            raise LogError(f"{where}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        task_value = str(item.get("task", "")).lower()
        if task_value not in TASK_NAMES:
            raise LogError(f"{where}: task {item.get('task')!r} is not one of {', '.join(TASK_NAMES)}")
        if ("at" in item) == ("every" in item):
            raise LogError(f"{where}: give either at: (a stamp or 'latest') or every: (N frames)")
        every = 0
        if "every" in item:
            every = item["every"]
            if not isinstance(every, int) or isinstance(every, bool) or every < 1:
                raise LogError(f"{where}: every: {every!r} is not a positive whole number of frames")
        regions = [_region({k: item[k]}, where, base) for k in REGION_KINDS[:4] if k in item]
        extra = item.get("regions") or []
        if not isinstance(extra, list):
            raise LogError(f"{where}: regions: expected a list")
        regions += [_region(r, f"{where} region {j + 1}", base) for j, r in enumerate(extra)]
        labels = item.get("labels") or []
        if isinstance(labels, str):
            labels = [v.strip() for v in labels.split(",") if v.strip()]
        out.append(
            ScriptQuery(
                query_id=qid,
                task=TASK_NAMES[task_value],
                at_ns=_stamp(item["at"], where) if "at" in item else None,
                every=every,
                regions=regions,
                text=str(item.get("text") or ""),
                labels=[str(v) for v in labels],
                rank=bool(item.get("rank", False)),
                max_new_tokens=int(item.get("max_new_tokens", 0)),
                num_beams=int(item.get("num_beams", 0)),
                timeout_s=float(item.get("timeout_s", 0.0)),
            )
        )
    return out


def load_script(path: str | Path) -> list[ScriptQuery]:
    path = Path(path)
    if not path.is_file():
        raise LogError(f"queries file {str(path)!r}: no such file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise LogError(f"queries file {str(path)!r}: not YAML ({str(exc).splitlines()[0]})") from None
    return parse_script(data, path.parent)
