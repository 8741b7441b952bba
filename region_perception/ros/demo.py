"""``make demo``: the node on a camera, a scripted set of queries, overlays saved.

Two demos, chosen by what can be loaded here (``--online`` / ``--offline`` force one):

* **photos** (the configured default model, Florence-2-base, is cached or the hub is
  reachable): the node with ``config/default.yaml`` on the demo camera (bundled
  photographs); a point caption, a referring sentence, a box classification (COCO-80) and a
  box caption about specific frames by stamp.
* **toy** (offline, ``HF_HUB_OFFLINE=1``, CI): the node with ``config/toy.yaml`` runs the toy
  model trained on the synthetic shapes (``toy-regionvlm``; ``--model toy-regiongpt``) on
  ``region-perception-camera --source synthetic``; for a few scenes it asks CAPTION of a
  point and of a box, CLASSIFY of a box over the shapes and REFER with one of the scene's
  referring expressions, and prints each answer beside the scene's published ground truth,
  then a tally. Without trained toy weights it runs the photos demo instead, whose default
  model then falls back to RANDOM weights, and says that ``make train-toy`` would help.

Both start the node and camera as separate processes, on loopback in a domain of their own,
and save the node's overlay for each answer under ``demo_out/``. Exit status 0 when every
question got an answer (wrong answers are reported, not failures); 1 when the node or the
camera failed or a question got no answer.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = REPO / "config" / "default.yaml"
TOY_PARAMS = REPO / "config" / "toy.yaml"
TOY_LABEL = "toy model trained on synthetic shapes"

# Photo (by its size) -> queries; coordinates are pixels of that photo.
SCRIPT = [
    ("astronaut", (512, 512), "caption", {"points": [(255, 120)]}, "caption of a point on the face"),
    ("astronaut", (512, 512), "refer", {"text": "the white helmet on the table"}, "refer with a sentence"),
    ("coffee", (400, 600), "classify", {"box": (140, 20, 480, 330)}, "classify a box (COCO-80)"),
    ("chelsea", (300, 451), "caption", {"box": (100, 20, 330, 290)}, "caption of a box"),
]


# ------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """What the demo will run and why (decided before any process starts; printed first)."""

    mode: str  # "photos" | "toy"
    params: Path
    model: str  # "" = the params file's model
    reason: str
    notices: list[str] = field(default_factory=list)


def released_model_available(name: str) -> bool:
    """Can the photos demo's model load here without a fallback? A hub id: cached, or the hub
    reachable (never true under HF_HUB_OFFLINE unless cached); a path: it exists; a registry
    name built or shipped here: yes."""
    from ..models.sources import hub_cached, hub_reachable, is_hub_id, looks_local

    if looks_local(name):
        return Path(name).expanduser().exists()
    if is_hub_id(name):
        return bool(hub_cached(name)) or hub_reachable()
    return True


def toy_weights(name: str) -> Path | None:
    """The trained directory of a toy model (registry name or directory), None when untrained
    (absent, or still marked random); any other model is taken as the user's choice (its path)."""
    from ..models.registry import TOY_MODELS
    from ..models.tiny import RANDOM_WEIGHTS_MARKER
    from ..models.toy import toy_path

    path = toy_path(name) if name in TOY_MODELS else Path(name).expanduser()
    if name not in TOY_MODELS and not path.is_dir():
        return path  # not a toy: nothing to check here, the node reports what it cannot load
    if not (path / "config.json").is_file() or (path / RANDOM_WEIGHTS_MARKER).exists():
        return None
    return path


def hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def make_plan(
    force: str | None,
    model: str | None,
    params: str | None,
    *,
    offline_env: Callable[[], bool] = hub_offline,
    available: Callable[[str], bool] = released_model_available,
) -> Plan:
    """Photos with the released model where it can load; else the trained toy; else photos
    with the (random-weight) fallback, saying so. ``force``: "online" | "offline" | None."""
    from ..service.config_file import load_parameters

    photos_params = Path(params) if params else DEFAULT_PARAMS
    released = model or str(load_parameters(photos_params).get("model", ""))
    if force == "online":
        return Plan("photos", photos_params, model or "", "--online")
    from ..models.registry import TOY_MODELS

    if force == "offline":
        reason = "--offline"
    elif model in TOY_MODELS:
        reason = f"--model {model}: a toy knows only the synthetic shapes"
    elif offline_env():
        reason = "HF_HUB_OFFLINE is set"
    elif not available(released):
        reason = f"{released} is not cached and the hub cannot be reached"
    else:
        return Plan("photos", photos_params, model or "", f"{released} is cached or the hub is reachable")
    toy_params = Path(params) if params else TOY_PARAMS
    toy = model or str(load_parameters(toy_params).get("model", "toy-regionvlm"))
    if toy_weights(toy) is None:
        notice = (
            f"no trained weights for {toy} ({reason}): running the photos demo instead, whose model falls "
            "back to RANDOM WEIGHTS offline (its words are not predictions). `make train-toy` would give a "
            "trained toy model for this demo."
        )
        return Plan("photos", DEFAULT_PARAMS, "", f"{reason}; no trained toy", [notice])
    return Plan("toy", toy_params, model or "", reason)


# ------------------------------------------------------------------------------ judging answers


def names_object(text: str, color: str, shape: str) -> bool:
    from ..datasets.synthetic_camera import names_object as names

    return names(text, color, shape)


@dataclass
class Question:
    """One question about one object of a synthetic scene, and how to judge its answer."""

    kind: str  # "caption-point" | "caption-box" | "classify-box" | "refer"
    target: int  # the object asked about (REFER: the object the sentence denotes)
    what: str  # how the question is printed
    spec: dict  # make_query's region / text


def proposal_min_area(params: Path, model: str = "") -> float:
    """The smallest REFER proposal (fraction of the image) the node keeps, resolved as the node resolves it: the
    parameters file's, else the model's own (a toy or a local directory), else the package default."""
    from ..engine.settings import UserSettings, model_own_settings
    from ..models.loading import resolve
    from ..models.registry import kind_of
    from ..service.config_file import engine_values, load_parameters

    user = UserSettings(command_line={"model": model} if model else {},
                        config=engine_values(load_parameters(params)))
    name = user.loading_config().model
    own = {}
    if kind_of(name) in ("toy", "local"):  # never a hub request for this
        resolved = resolve(name)
        own = model_own_settings(resolved.meta, resolved.local)
    return float(user.resolve(own)[0].proposal_filter.min_area_fraction)


def questions_for(truth: dict, round_no: int, min_area_fraction: float = 0.04) -> list[Question]:
    """The four questions about one scene, on different objects where the scene has enough.

    REFER asks about an object of at least ``min_area_fraction`` of the image where the scene
    has one: the node drops smaller mask proposals before it scores the sentence."""
    objects = truth["objects"]
    n = len(objects)

    def obj(offset: int) -> tuple[int, dict]:
        k = (round_no + offset) % n
        return k, objects[k]

    qs = []
    k, o = obj(0)
    qs.append(Question("caption-point", k, f"caption of point {tuple(o['point'])} on object {k}",
                       {"points": [tuple(o["point"])]}))
    k, o = obj(1)
    box = [round(float(v)) for v in o["box"]]
    qs.append(Question("caption-box", k, f"caption of box {box} around object {k}", {"box": tuple(o["box"])}))
    k, o = obj(2)
    box = [round(float(v)) for v in o["box"]]
    qs.append(Question("classify-box", k, f"classify box {box} around object {k}", {"box": tuple(o["box"])}))
    # REFER: an object the scene can name unambiguously, the next in turn large enough for a proposal
    min_area = min_area_fraction * truth["size"] ** 2
    order = [(round_no + 3 + i) % n for i in range(n)]
    named = [j for j in order if objects[j]["expressions"]]
    k = next((j for j in named if objects[j]["area"] >= min_area), named[0] if named else None)
    if k is not None:
        text = objects[k]["expressions"][0]
        qs.append(Question("refer", k, f'refer "{text}"', {"text": text}))
    return qs


def judge(question: Question, truth: dict, answer: str, mask: np.ndarray | None) -> tuple[bool, str]:
    """(right, the line's truth part). CAPTION: names the object's colour and shape; CLASSIFY: its
    shape; REFER: the returned mask overlaps the denoted object more than any other object."""
    from ..datasets.synthetic_camera import iou, mask_from_truth

    target = truth["objects"][question.target]
    if question.kind.startswith("caption"):
        return names_object(answer, target["color"], target["shape"]), f"truth: {target['caption']}"
    if question.kind == "classify-box":
        return answer.strip().lower() == target["shape"], f"truth: {target['shape']}"
    if mask is None or not mask.any():
        return False, f"no mask returned | truth: object {question.target} ({target['caption']})"
    overlaps = [iou(mask, mask_from_truth(o)) for o in truth["objects"]]
    best = int(np.argmax(overlaps))
    right = best == question.target and overlaps[best] > 0
    detail = f"mask IoU {overlaps[question.target]:.2f} with object {question.target}"
    if not right:
        detail += f", best overlap object {best} ({truth['objects'][best]['caption']}, IoU {overlaps[best]:.2f})"
    return right, f"{detail} | truth: object {question.target} ({target['caption']})"


# ------------------------------------------------------------------------------ ROS side


def make_query(task: str, spec: dict, header, query_id: str):
    from geometry_msgs.msg import Point32

    from region_perception.msg import Region, RegionQuery

    q = RegionQuery(query_id=query_id, header=header)
    q.task = {"caption": 0, "classify": 1, "refer": 2, "ask": 3}[task]
    if "points" in spec:
        q.regions.append(
            Region(kind=Region.POINTS, points=[Point32(x=float(x), y=float(y)) for x, y in spec["points"]])
        )
    if "box" in spec:
        q.regions.append(Region(kind=Region.BOX, box=np.array(spec["box"], dtype=np.float32)))
    q.text = spec.get("text", "")
    return q


class Failed(Exception):
    """The node or the camera failed: the demo cannot go on (exit status 1)."""


class Session:
    """The demo's ROS client: frames, ground truth, overlays and diagnostics it hears."""

    def __init__(self, procs: dict[str, subprocess.Popen], out: Path) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self.procs, self.out = procs, out
        rclpy.init()
        self.node = rclpy.create_node("region_perception_demo")
        self.frames: dict[int, Image] = {}  # stamp (ns) -> frame, the newest few
        self.truths: dict[int, dict] = {}  # stamp (ns) -> ground truth (synthetic camera)
        self.overlays: list[Image] = []
        self.diagnostics: dict[str, str] = {}
        # node clock when its diagnostics first counted a frame: every frame stamped later was
        # published after the node's subscription matched, so the node (reliable QoS) has it
        self.receiving_since: int | None = None
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Image, "image", self._frame, 5)
        self.node.create_subscription(String, "image/ground_truth", self._truth, reliable)
        self.node.create_subscription(Image, "/region_perception/overlay", self.overlays.append, 10)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diagnostics, 10)

    @staticmethod
    def stamp_ns(msg) -> int:
        return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec

    def _frame(self, msg) -> None:
        self.frames[self.stamp_ns(msg)] = msg
        for old in sorted(self.frames)[:-60]:
            del self.frames[old]

    def _truth(self, msg) -> None:
        truth = json.loads(msg.data)
        self.truths[int(truth["stamp_ns"])] = truth
        for old in sorted(self.truths)[:-120]:
            del self.truths[old]

    def _diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith("region_perception"):
                self.diagnostics = {kv.key: kv.value for kv in status.values} | {"_message": status.message}
                if self.receiving_since is None and int(self.diagnostics.get("frames_received", "0")) > 0:
                    self.receiving_since = self.stamp_ns(msg)

    def spin_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        """Spin until ``predicate()``; Failed when a process exits first or ``timeout`` passes."""
        import rclpy

        deadline = time.monotonic() + timeout
        while not predicate():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise Failed(f"the {name} exited (status {proc.returncode}) while waiting for {what}")
            if time.monotonic() > deadline:
                raise Failed(f"no {what} within {timeout:.0f} s (diagnostics: {self.diagnostics or 'none'})")
            rclpy.spin_once(self.node, timeout_sec=0.1)

    def wait_active(self, timeout: float) -> None:
        """The node's service is up and its diagnostics say the model is loaded ("ok")."""
        from region_perception.srv import QueryRegions

        service = self.node.create_client(QueryRegions, "/region_perception/query")
        self.spin_until(lambda: service.wait_for_service(timeout_sec=0.1), timeout, "node service")
        deadline = time.monotonic() + timeout

        def active() -> bool:
            message = self.diagnostics.get("_message", "")
            if message.startswith("inactive:") and self.diagnostics.get("load_error_reason"):
                raise Failed(f"the node could not load its model: {message}")
            return message == "ok"

        self.spin_until(active, max(1.0, deadline - time.monotonic()), "active node (model loaded)")

    def ask(self, query, timeout: float = 120.0):
        """The query's result (None on timeout); Failed at once if the node or camera has exited."""
        from .query_tool import send

        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise Failed(f"the {name} exited (status {proc.returncode})")
        self.overlays.clear()
        return send(self.node, query, service=False, timeout=timeout)

    def save_overlay(self, name: str) -> str:
        """The node's overlay for the last answer, saved; the path printed, or "" if none came."""
        import cv2

        from .image_conversion import image_msg_to_rgb

        try:
            self.spin_until(lambda: bool(self.overlays), 5.0, "overlay")
        except Failed:
            return ""
        path = self.out / name
        cv2.imwrite(str(path), cv2.cvtColor(image_msg_to_rgb(self.overlays[-1]), cv2.COLOR_RGB2BGR))
        return str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)

    def close(self) -> None:
        import rclpy

        self.node.destroy_node()
        rclpy.shutdown()


def run_photos(session: Session) -> tuple[int, int]:
    """The scripted questions about the bundled photos; (answered OK, asked)."""
    from region_perception.msg import RegionQuery, RegionResult

    from ..common.status import Status

    by_size: dict[tuple[int, int], object] = {}
    failures = 0
    for i, (photo, size, task, spec, what) in enumerate(SCRIPT):
        # a frame the node has surely buffered: one stamped from now on (older samples may
        # still sit in our reader's history from before the node subscribed)
        since = session.node.get_clock().now().nanoseconds

        def fresh(size=size, since=since) -> bool:
            for stamp in [s for s in session.frames if s > since]:
                frame = session.frames[stamp]
                by_size[(frame.height, frame.width)] = frame
            f = by_size.get(size)
            return f is not None and session.stamp_ns(f) > since

        try:
            session.spin_until(fresh, 30.0, f"'{photo}' frame from the camera")
        except Failed as exc:
            print(f"[demo] {what}: {exc}", file=sys.stderr)
            failures += 1
            continue
        frame = by_size[size]
        result = session.ask(make_query(task, spec, frame.header, f"demo-{i}-{task}"))
        if result is None:
            print(f"[demo] {what}: no result", file=sys.stderr)
            failures += 1
            continue
        stamp_ok = session.stamp_ns(result) == session.stamp_ns(frame)
        answer = [o.label or o.text for o in result.outputs]
        flag = "  [RANDOM WEIGHTS: not a prediction]" if result.weights_random else ""
        print(f"[demo] {i}: {what} on '{photo}' -> {Status(result.status).name}: {answer}{flag}")
        print(f"         frame stamp matches: {stamp_ok}; latency {result.latency_ms:.0f} ms; model {result.model}")
        if result.task == RegionQuery.REFER:
            print(
                f"         selected proposal {result.selected_index} of {len(result.candidate_scores)}; "
                f"scores {[round(s, 3) for s in result.candidate_scores]}"
            )
        ok = result.status == RegionResult.OK and stamp_ok
        saved = session.save_overlay(f"{i:02d}_{task}_{photo}.png")
        print(f"         overlay saved: {saved}" if saved else "         (no overlay received)")
        failures += int(not (ok and saved))
    print(f"[demo] done: {len(SCRIPT) - failures}/{len(SCRIPT)} queries answered OK on their frame, "
          f"overlays in {session.out}")
    return len(SCRIPT) - failures, len(SCRIPT)


def position_line(out, notes: list[str], target: dict) -> tuple[str, float | None]:
    """The answer's 3D position beside the object's true one (synthetic depth: known geometry);
    (the printed line, the position error in metres or None when the answer has no position)."""
    truth = target.get("position_m")
    if truth is None:
        return "3D: the object has no 3D truth", None
    tx, ty, tz = truth
    shown = f"truth ({tx:+.3f}, {ty:+.3f}, {tz:.3f}) m"
    if out is None or not out.has_position:
        why = next((n for n in notes if "3D position" in n), "no position")
        return f"3D: {why} | {shown}", None
    p, size = out.position, out.size
    err = float(np.linalg.norm([p.x - tx, p.y - ty, p.z - tz]))
    sx, sy = target["size_m"][:2]
    return (f"3D: ({p.x:+.3f}, {p.y:+.3f}, {p.z:.3f}) m, size {size.x:.2f} x {size.y:.2f} m | {shown}, "
            f"size {sx:.2f} x {sy:.2f} m | error {err * 100:.1f} cm"), err


def run_toy(
    session: Session, first_scene: int, scenes: int, model_label: str, min_area_fraction: float,
    depth: bool = False,
) -> tuple[int, int, int, int]:
    """Questions about ``scenes`` synthetic scenes from ``first_scene`` on, each judged against
    the scene's ground truth; (answered, asked, right, judged). With ``depth`` each answer's 3D
    position is printed beside the object's true position (the camera's depth is exact)."""
    from region_perception.msg import RegionResult

    from ..common.status import Status
    from .image_conversion import mask_msg_to_bool

    answered = asked = right = judged = 0
    tally: dict[str, list[int]] = {}
    errors: list[float | None] = []
    wanted = first_scene
    for round_no in range(scenes):
        # the first scene from `wanted` on whose frame and truth have reached us, and the node too
        def available(wanted=wanted) -> list[int]:
            since = session.receiving_since or 0
            return [s for s in session.frames if s in session.truths and s > since
                    and session.truths[s]["index"] >= wanted]

        session.spin_until(lambda: bool(available()), 60.0, f"synthetic scene {wanted} or later with its truth")
        stamp = min(available(), key=lambda s: session.truths[s]["index"])
        frame, truth = session.frames[stamp], session.truths[stamp]
        wanted = truth["index"] + 1
        captions = ", ".join(f"{k}: {o['caption']}" for k, o in enumerate(truth["objects"]))
        print(f"\n[demo] scene {truth['index']} of the synthetic stream (seed {truth['seed']}, "
              f"{truth['size']}x{truth['size']} px), {len(truth['objects'])} objects: {captions}")
        for n, q in enumerate(questions_for(truth, round_no, min_area_fraction)):
            task = q.kind.split("-")[0]
            asked += 1
            result = session.ask(make_query(task, q.spec, frame.header, f"toy-{truth['index']}-{n}-{q.kind}"))
            if result is None:
                print(f"  {q.what}: NO RESULT within 120 s", file=sys.stderr)
                continue
            refused = result.status == RegionResult.INVALID_QUERY and q.kind == "refer"
            if result.status != RegionResult.OK and not refused:
                print(f"  {q.what}: {Status(result.status).name}: {result.error}", file=sys.stderr)
                continue
            answered += 1
            if refused:
                # e.g. no mask proposal survived the node's filter: the pipeline's answer, and a wrong one
                target = truth["objects"][q.target]
                ok = False
                truth_part = (f"no answer (INVALID_QUERY: {result.error}) "
                              f"| truth: object {q.target} ({target['caption']})")
                answer = ""
            elif q.kind == "refer":
                out = result.outputs[0] if result.outputs else None
                mask = mask_msg_to_bool(out.mask) if out is not None and len(out.mask.data) else None
                answer = ""
                ok, truth_part = judge(q, truth, answer, mask)
            else:
                answer = result.outputs[0].label if q.kind == "classify-box" else result.outputs[0].text
                ok, truth_part = judge(q, truth, answer, None)
            right += int(ok)
            judged += 1
            counts = tally.setdefault(task, [0, 0])
            counts[0] += int(ok)
            counts[1] += 1
            shown = "" if q.kind == "refer" else f'"{answer}"  | '
            flag = "  [RANDOM WEIGHTS]" if result.weights_random else ""
            print(f"  {q.what}: {shown}{truth_part}  {'✓' if ok else '✗'}{flag}")
            if refused:
                continue
            saved = session.save_overlay(f"toy_scene{truth['index']:03d}_{n}_{q.kind}.png")
            print(f"      {result.latency_ms:.0f} ms; overlay: {saved or '(none received)'}")
            if depth:
                out = result.outputs[0] if result.outputs else None
                target = q.target
                if q.kind == "refer" and out is not None and len(out.mask.data):
                    # where the selected mask is: compared with the object it covers most (right or wrong)
                    from ..datasets.synthetic_camera import iou, mask_from_truth

                    mask = mask_msg_to_bool(out.mask)
                    target = int(np.argmax([iou(mask, mask_from_truth(o)) for o in truth["objects"]]))
                line, err = position_line(out, list(result.notes), truth["objects"][target])
                errors.append(err)
                print(f"      {line}" + (f" (object {target}, which the selected mask covers most)"
                                         if q.kind == "refer" else ""))
    parts = ", ".join(f"{task} {r}/{n}" for task, (r, n) in tally.items())
    print(f"\n[demo] {TOY_LABEL} ({model_label}): {right}/{judged} right ({parts}); "
          f"{answered}/{asked} questions answered; overlays in {session.out}")
    print("[demo] right = CAPTION names the object's colour and shape, CLASSIFY gives its shape, REFER's mask "
          "overlaps the named object more than any other")
    if depth:
        located = [e for e in errors if e is not None]
        close = sum(e <= 0.05 for e in located)
        median = f", median error {np.median(located) * 100:.1f} cm" if located else ""
        print(f"[demo] 3D: {len(located)}/{len(errors)} answers have a position, {close} within 5 cm of the "
              f"object's true position{median} (a box region's median can be the background behind the object)")
    return answered, asked, right, judged


def banner(lines: list[str]) -> None:
    bar = "=" * 78
    print("\n".join([bar, *(f"== {line}" for line in lines), bar]), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="region-perception-demo", description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--online", action="store_true", help="the photos demo with the configured model")
    mode.add_argument("--offline", action="store_true", help="the toy model on the synthetic camera")
    parser.add_argument("--params", help="node parameters file (default config/default.yaml, toy: config/toy.yaml)")
    parser.add_argument("--model", help="override the model parameter (toy: toy-regionvlm, toy-regiongpt or a "
                        "trained directory)")
    parser.add_argument("--scenes", type=int, default=2, help="toy: how many synthetic scenes to ask about")
    parser.add_argument("--first-scene", type=int, default=10,
                        help="toy: index of the first scene asked about (the camera starts 10 scenes earlier)")
    parser.add_argument("--seed", type=int, default=1, help="toy: synthetic stream (1: scenes not trained on)")
    parser.add_argument("--out", default=str(REPO / "demo_out"))
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds for the node to come up")
    parser.add_argument("--no-depth", dest="depth", action="store_false",
                        help="toy: no 3D positions (default: the synthetic camera's depth is used)")
    args = parser.parse_args(argv)
    if args.scenes < 1 or args.first_scene < 0:
        parser.error("--scenes must be >= 1 and --first-scene >= 0")

    from ..common.ros_env import apply_local_ros_env
    from .processes import camera_command, node_command

    env = dict(apply_local_ros_env())
    print(f"[demo] ROS_DOMAIN_ID={env['ROS_DOMAIN_ID']} ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST")
    plan = make_plan("online" if args.online else "offline" if args.offline else None, args.model, args.params)
    for notice in plan.notices:
        banner([notice])
    from ..service.config_file import load_parameters

    model_label = plan.model or str(load_parameters(plan.params).get("model", ""))
    if plan.mode == "toy":
        banner([f"OFFLINE DEMO ({plan.reason}): {TOY_LABEL.upper()}: {model_label}",
                "it knows coloured circles, squares, triangles and stars, nothing else;",
                "each answer is printed beside the scene's ground truth"])
    else:
        print(f"[demo] photos demo ({plan.reason}): {plan.params.name}, model {model_label}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # reliable image QoS between camera and node: on loopback, best-effort frames of ~1 MB lose
    # fragments, and the demo asks about specific frames
    overrides: dict[str, object] = {"image_reliability": "reliable", "image_qos_depth": 5}
    if plan.model:
        overrides["model"] = plan.model
    depth = plan.mode == "toy" and args.depth
    if depth:  # the synthetic camera publishes aligned depth and CameraInfo: answers get 3D positions
        overrides.update(depth_topic="depth/image_raw", camera_info_topic="depth/camera_info")
    if plan.mode == "toy":
        # ten scenes (5 s) early: the scenes asked about arrive after discovery has settled, so the
        # same scenes are asked about on every run (a later one only if discovery takes longer)
        camera = camera_command("--source", "synthetic", "--seed", str(args.seed),
                                "--start", str(max(0, args.first_scene - 10)), "--rate", "2", "--reliable")
    else:
        camera = camera_command("--rate", "4", "--reliable")
    procs = {"node": subprocess.Popen(node_command(plan.params, **overrides), env=env)}
    session = Session(procs, out)
    try:
        print("[demo] waiting for the node to load its model ...", flush=True)
        session.wait_active(args.timeout)
        procs["camera"] = subprocess.Popen(camera, env=env)
        session.spin_until(lambda: session.receiving_since is not None, 60.0, "camera frames at the node")
        if plan.mode == "toy":
            answered, asked, _, _ = run_toy(session, args.first_scene, args.scenes, model_label,
                                            proposal_min_area(plan.params, plan.model), depth=depth)
        else:
            answered, asked = run_photos(session)
        status = 0 if answered == asked else 1
    except Failed as exc:
        print(f"[demo] FAILED: {exc}", file=sys.stderr)
        status = 1
    finally:
        session.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return status


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
