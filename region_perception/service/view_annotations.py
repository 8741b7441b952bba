"""What the live view draws and accepts, without ROS or the Foxglove SDK.

``ros/live_view.py`` turns each ``RegionResult`` into a :class:`ViewAnswer` and hands it here:
:func:`mask_outline` traces a region's mask (OpenCV ``findContours``), :func:`answer_annotations`
makes the outlines, boxes and labels of an image panel, :func:`answer_boxes_3d` the 3D boxes
from depth, :func:`answer_log` a log line. :func:`parse_view_query` reads what a viewer
publishes (a click, a sentence) and refuses, with a reason, what it cannot answer. Kept apart
from the adapter so each piece is tested on plain arrays, and so a recorded log could be
annotated the same way.

Pixel coordinates are those of ``RegionQuery``: (0, 0) is the top-left corner of the top-left
pixel, so the centre of pixel (row i, column j) is (j + 0.5, i + 0.5); outlines pass through the
centres of a mask's border pixels.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..common.status import Status, Task

RGBA = tuple[float, float, float, float]
# one colour per region of an answer (cycled), chosen to read on photographs and flat scenes
PALETTE: tuple[RGBA, ...] = (
    (0.10, 0.80, 1.00, 1.0),
    (1.00, 0.60, 0.10, 1.0),
    (0.40, 1.00, 0.30, 1.0),
    (1.00, 0.30, 0.70, 1.0),
    (0.90, 0.90, 0.20, 1.0),
    (0.60, 0.45, 1.00, 1.0),
)
CANDIDATE: RGBA = (0.8, 0.8, 0.8, 0.5)  # REFER proposals that were not chosen
CLICK: RGBA = (1.0, 0.2, 0.2, 1.0)
LABEL_BACKGROUND: RGBA = (0.0, 0.0, 0.0, 0.6)

# Client-publish topics the view answers (JSON): a point or a sentence, see parse_view_query.
QUERY_TOPIC = "/region_perception_view/query"
CLICK_TOPIC = "/clicked_point"  # the Foxglove image/3D panels' default "publish point" topic
QUERY_TOPICS = (QUERY_TOPIC, CLICK_TOPIC)
MAX_TEXT = 500  # characters of a typed sentence
MAX_MESSAGE_BYTES = 64 * 1024  # a query is a few numbers or a sentence


@dataclass
class ViewRegion:
    """One output of an answer, as the view needs it (a RegionOutput without ROS types)."""

    name: str = ""
    text: str = ""
    label: str = ""
    score: float = 0.0
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1 in pixels
    mask: np.ndarray | None = None  # bool, the image's height x width
    position: tuple[float, float, float] | None = None  # metres, in the answer's frame
    size: tuple[float, float, float] | None = None


@dataclass
class ViewAnswer:
    """One RegionResult, as the view needs it."""

    query_id: str
    task: int
    status: int
    error: str = ""
    stamp_ns: int = 0
    frame_id: str = ""
    regions: list[ViewRegion] = field(default_factory=list)
    selected_index: int = -1
    candidate_boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    weights_random: bool = False
    latency_ms: float = 0.0
    model: str = ""
    notes: list[str] = field(default_factory=list)


@dataclass
class Polyline:
    """A closed outline on the image (mask outline, box or candidate box)."""

    points: list[tuple[float, float]]
    color: RGBA
    thickness: float
    kind: str  # "mask", "box" or "candidate"
    fill: RGBA | None = None
    query_id: str = ""


@dataclass
class Label:
    """A text on the image at ``position`` (its top-left)."""

    position: tuple[float, float]
    text: str
    color: RGBA
    background: RGBA = LABEL_BACKGROUND
    font_size: float = 12.0


@dataclass
class Circle:
    """A marked point (a viewer's click)."""

    centre: tuple[float, float]
    diameter: float
    color: RGBA


@dataclass
class AnnotationSet:
    """Everything drawn on one frame: the answers on it so far."""

    stamp_ns: int
    polylines: list[Polyline] = field(default_factory=list)
    labels: list[Label] = field(default_factory=list)
    circles: list[Circle] = field(default_factory=list)

    def extend(self, other: AnnotationSet) -> None:
        self.polylines += other.polylines
        self.labels += other.labels
        self.circles += other.circles


@dataclass
class Box3D:
    """A region's extent from depth, in the answer's frame (the camera's optical frame)."""

    entity_id: str
    frame_id: str
    stamp_ns: int
    position: tuple[float, float, float]
    size: tuple[float, float, float]
    color: RGBA
    text: str


# ---------------------------------------------------------------------------------------------
# Masks and answers -> drawings
# ---------------------------------------------------------------------------------------------


def mask_outline(mask: np.ndarray, max_vertices: int = 256, min_pixels: int = 1) -> list[np.ndarray]:
    """The outer outlines of a mask's pieces, largest first: each an (N, 2) float array of (x, y).

    Holes are not traced (a filled outline covers them); a piece with fewer than ``min_pixels``
    pixels is left out. An outline with more than ``max_vertices`` vertices is simplified
    (Douglas-Peucker, tolerance grown until it fits) so a ragged mask stays cheap to send.
    """
    binary = np.ascontiguousarray(np.asarray(mask) > 0, dtype=np.uint8)
    if binary.ndim != 2 or not binary.any():
        return []
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    pieces = []
    for contour in contours:
        # pixels of the piece: the area inside its border-pixel centres plus the half-pixel rim
        pixels = cv2.contourArea(contour) + cv2.arcLength(contour, True) / 2 + 1
        if pixels < min_pixels:
            continue
        tolerance = 0.5
        while len(contour) > max_vertices:
            contour = cv2.approxPolyDP(contour, tolerance, True)
            tolerance *= 1.5
        pieces.append((pixels, contour.reshape(-1, 2).astype(np.float64) + 0.5))
    pieces.sort(key=lambda p: -p[0])
    return [points for _, points in pieces]


def polygon_area(points: np.ndarray) -> float:
    """Area of a closed polygon (shoelace), in square pixels."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(pts) < 3:
        return 0.0
    x, y = pts[:, 0], pts[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def rasterize(polygons: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """The pixels inside ``polygons`` (outlines through pixel centres): the inverse of :func:`mask_outline`."""
    canvas = np.zeros(shape, dtype=np.uint8)
    pts = [np.round(np.asarray(p, dtype=np.float64) - 0.5).astype(np.int32).reshape(-1, 1, 2) for p in polygons]
    if pts:
        cv2.fillPoly(canvas, pts, 1)
        cv2.polylines(canvas, pts, True, 1)
    return canvas.astype(bool)


def _box_points(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def task_name(task: int) -> str:
    try:
        return Task(task).name
    except ValueError:
        return f"task {task}"


def status_name(status: int) -> str:
    try:
        return Status(status).name
    except ValueError:
        return f"status {status}"


def region_words(answer: ViewAnswer, region: ViewRegion) -> str:
    """What to write beside a region: the label (with its score) or the text, marked when the weights are random."""
    if region.label:
        words = f"{region.label} {region.score:.2f}"
    else:
        words = region.text
    words = " ".join(words.split())[:80]
    return ("[random] " if answer.weights_random else "") + words


def answer_annotations(
    answer: ViewAnswer, click: tuple[float, float] | None = None, thickness: float = 2.0
) -> AnnotationSet:
    """The drawing of one answer: per region its mask outline (the selected one filled), its box and its words;
    REFER's other candidates as faint boxes; the viewer's click, if the query was one. An answer that is not OK
    draws only the click and its reason."""
    out = AnnotationSet(answer.stamp_ns)
    if click is not None:
        out.circles.append(Circle((float(click[0]), float(click[1])), 8.0, CLICK))
    if answer.status != Status.OK:
        at = click or (4.0, 4.0)
        out.labels.append(Label((float(at[0]), float(at[1])), f"{status_name(answer.status)}: {answer.error}"[:120],
                                CLICK))
        return out
    if answer.task == Task.REFER:
        for i, box in enumerate(answer.candidate_boxes):
            if i != answer.selected_index:
                out.polylines.append(Polyline(_box_points(box), CANDIDATE, 1.0, "candidate", query_id=answer.query_id))
    for i, region in enumerate(answer.regions):
        color = PALETTE[i % len(PALETTE)]
        selected = answer.task == Task.REFER
        fill = (color[0], color[1], color[2], 0.25 if selected else 0.12)
        anchor: tuple[float, float] | None = None
        if region.mask is not None:
            for piece in mask_outline(region.mask):
                out.polylines.append(
                    Polyline([(float(x), float(y)) for x, y in piece], color, thickness, "mask", fill, answer.query_id)
                )
                if anchor is None:
                    top = piece[np.argmin(piece[:, 1])]
                    anchor = (float(top[0]), float(top[1]))
        if region.box is not None:
            out.polylines.append(Polyline(_box_points(region.box), color, 1.0, "box", query_id=answer.query_id))
            anchor = (float(region.box[0]), float(region.box[1]))
        words = region_words(answer, region)
        if answer.task == Task.REFER and answer.regions:
            words = f"refer: {words}" if words else "refer"
        if words:
            x, y = anchor or (click if click is not None else (4.0, 4.0))
            out.labels.append(Label((x, max(0.0, y - 14.0)), words, color))
    return out


def answer_boxes_3d(answer: ViewAnswer) -> list[Box3D]:
    """A 3D box per region with a position from depth (none for an answer without depth)."""
    boxes = []
    if answer.status != Status.OK:
        return boxes
    for i, region in enumerate(answer.regions):
        if region.position is None or region.size is None:
            continue
        if not all(math.isfinite(v) for v in (*region.position, *region.size)):
            continue
        r, g, b, _ = PALETTE[i % len(PALETTE)]
        size = tuple(max(0.01, float(v)) for v in region.size)
        words = region_words(answer, region)
        text = f"{words} ({region.position[2]:.2f} m)" if words else f"{region.position[2]:.2f} m"
        boxes.append(Box3D(f"{answer.query_id}/{i}", answer.frame_id, answer.stamp_ns,
                           tuple(float(v) for v in region.position), size, (r, g, b, 0.4), text))
    return boxes


def answer_log(answer: ViewAnswer) -> tuple[str, str]:
    """(level, line) for the log panel: ``info`` for an answer, ``warning`` for a refusal or error."""
    head = f"{answer.query_id} {task_name(answer.task)}"
    if answer.status != Status.OK:
        return "warning", f"{head}: {status_name(answer.status)} ({answer.error})"
    parts = [region_words(answer, r) for r in answer.regions]
    words = "; ".join(p for p in parts if p) or "(no words)"
    extra = f" [{'; '.join(answer.notes)}]" if answer.notes else ""
    return "info", f"{head}: {words} in {answer.latency_ms:.0f} ms{extra}"


class AnnotationBoard:
    """The answers on the frame shown last: answers on one frame add up, a newer frame starts afresh.

    A Foxglove image panel shows the newest annotation message of a topic, so each message carries
    every answer (at most ``keep``) given on its frame. Answers on an older frame than the board's
    are drawn alone, not merged, so a late answer still shows.
    """

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self._stamp = -1
        self._sets: OrderedDict[str, AnnotationSet] = OrderedDict()

    def add(self, answer: ViewAnswer, drawing: AnnotationSet) -> AnnotationSet:
        if answer.stamp_ns < self._stamp:
            return drawing
        if answer.stamp_ns > self._stamp:
            self._stamp = answer.stamp_ns
            self._sets.clear()
        self._sets[answer.query_id] = drawing
        while len(self._sets) > self.keep:
            self._sets.popitem(last=False)
        merged = AnnotationSet(answer.stamp_ns)
        for drawn in self._sets.values():
            merged.extend(drawn)
        return merged


def diagnostics_log(name: str, level: int, message: str, values: dict[str, str]) -> tuple[str, str]:
    """(level, line) for one ``/diagnostics`` status: the node's figures that matter while watching."""
    keys = ("image_rate_hz", "frames_received", "queue_depth", "latency_p50_ms", "latency_p95_ms", "answered_ok")
    figures = ", ".join(f"{k}={values[k]}" for k in keys if k in values)
    kind = {0: "info", 1: "warning", 2: "error"}.get(int(level), "warning")
    return kind, f"{name}: {message}" + (f" ({figures})" if figures else "")


# ---------------------------------------------------------------------------------------------
# Viewer messages -> queries
# ---------------------------------------------------------------------------------------------


class ViewQueryError(ValueError):
    """A viewer's message the view will not turn into a query; the text says why."""


@dataclass
class ViewQuery:
    """What a viewer asked: a point (a CAPTION of it) or a sentence (a REFER)."""

    task: int
    point: tuple[float, float] | None = None
    text: str = ""


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ViewQueryError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_view_query(topic: str, data: bytes, image_size: tuple[int, int] | None) -> ViewQuery:
    """A viewer's JSON message as a query; :class:`ViewQueryError` with the reason for anything else.

    Accepted on :data:`QUERY_TOPICS`: ``{"x": .., "y": ..}`` (a pixel, Point2's shape),
    ``{"point": {"x": .., "y": ..}}`` (PointStamped's shape, as an image panel publishes a click) -> a CAPTION
    of that point; ``{"text": "..."}`` -> a REFER. ``image_size`` is (height, width) of the image the viewer
    sees; a point outside it, or with no image seen yet, is refused.
    """
    if topic not in QUERY_TOPICS:
        raise ViewQueryError(f"channel {topic!r} is not a query channel (use {' or '.join(QUERY_TOPICS)})")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ViewQueryError(f"message of {len(data)} bytes is larger than the limit of {MAX_MESSAGE_BYTES}")
    try:
        body = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ViewQueryError(f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ViewQueryError(f"expected a JSON object, got {type(body).__name__}")
    point = body.get("point") if isinstance(body.get("point"), dict) else body
    has_point = "x" in point or "y" in point
    text = body.get("text")
    if text is not None and has_point:
        raise ViewQueryError("give a point (x, y) or a text, not both")
    if text is not None:
        if not isinstance(text, str) or not text.strip():
            raise ViewQueryError("text must be a non-empty string")
        if len(text) > MAX_TEXT:
            raise ViewQueryError(f"text of {len(text)} characters is longer than the limit of {MAX_TEXT}")
        return ViewQuery(int(Task.REFER), text=" ".join(text.split()))
    if not has_point:
        raise ViewQueryError('expected {"x": .., "y": ..} (a pixel) or {"text": ".."} (a sentence)')
    x, y = _number(point.get("x"), "x"), _number(point.get("y"), "y")
    if image_size is None:
        raise ViewQueryError("no camera image seen yet: a point needs an image to be in")
    height, width = image_size
    if not (0 <= x < width and 0 <= y < height):
        raise ViewQueryError(f"point ({x:g}, {y:g}) is outside the {width}x{height} image")
    return ViewQuery(int(Task.CAPTION), point=(x, y))
