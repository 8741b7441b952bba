"""The live view: the node's topics served to Foxglove viewers, and viewers' queries sent back.

The conversions are tested on plain arrays; the view itself in its own process, between the
synthetic camera and the node (with depth), by a test client that speaks the Foxglove WebSocket
protocol (``websockets``) and decodes the Protobuf messages by the schemas the server advertises.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import struct
import subprocess
import sys
import threading
import time
from collections import defaultdict
from typing import Any, ClassVar

import cv2
import numpy as np
import pytest

from region_perception.common.status import Status, Task
from region_perception.service.view_annotations import (
    CLICK_TOPIC,
    QUERY_TOPIC,
    AnnotationBoard,
    ViewAnswer,
    ViewQueryError,
    ViewRegion,
    answer_annotations,
    answer_boxes_3d,
    answer_log,
    mask_outline,
    parse_view_query,
    polygon_area,
    rasterize,
)

SUBPROTOCOLS = ["foxglove.sdk.v1", "foxglove.websocket.v1"]  # the SDK speaks the first (same wire format)
SIZE = 128  # the synthetic camera's default side


def disk(shape=(64, 80), centre=(30, 40), radius=12) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def fill(polygons: list, shape: tuple[int, int]) -> np.ndarray:
    """Pixels inside outlines that pass through pixel centres (independent of the module's own rasterize)."""
    canvas = np.zeros(shape, np.uint8)
    pts = [np.round(np.asarray(p, float) - 0.5).astype(np.int32).reshape(-1, 1, 2) for p in polygons]
    cv2.fillPoly(canvas, pts, 1)
    cv2.polylines(canvas, pts, True, 1)
    return canvas.astype(bool)


# ---------------------------------------------------------------------------------------------
# Conversions (no ROS, no Foxglove)
# ---------------------------------------------------------------------------------------------


def test_mask_outline_traces_the_mask():
    mask = disk()
    (outline,) = mask_outline(mask)
    assert iou(fill([outline], mask.shape), mask) > 0.97
    assert iou(rasterize([outline], mask.shape), mask) > 0.97
    # through the border pixels' centres: the area misses about half a pixel along the rim
    assert mask.sum() - 0.5 * 2 * np.pi * 12 - 6 < polygon_area(outline) < mask.sum()
    xs, ys = outline[:, 0], outline[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (28.5, 52.5, 18.5, 42.5)


def test_mask_outline_pieces_holes_empty_and_simplified():
    two = disk(centre=(15, 15), radius=8) | disk(centre=(45, 60), radius=14)
    outlines = mask_outline(two)
    assert len(outlines) == 2 and polygon_area(outlines[0]) > polygon_area(outlines[1])  # largest first
    assert iou(fill(outlines, two.shape), two) > 0.95
    ring = disk(radius=14) & ~disk(radius=6)
    assert len(mask_outline(ring)) == 1  # the hole is not traced
    assert mask_outline(np.zeros((10, 10), bool)) == []
    noisy = disk(shape=(200, 200), centre=(100, 100), radius=80)
    noisy[::2, ::3] = False  # a ragged mask: a long outline
    noisy = cv2.morphologyEx(noisy.astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8)).astype(bool)
    for outline in mask_outline(noisy, max_vertices=40):
        assert len(outline) <= 40


def answer(task=Task.CAPTION, status=Status.OK, regions=None, **kw) -> ViewAnswer:
    return ViewAnswer(query_id="q1", task=int(task), status=int(status), stamp_ns=5, frame_id="cam",
                      regions=regions if regions is not None else [], **kw)


def test_answer_annotations_follow_the_mask_box_and_words():
    a = answer(regions=[ViewRegion(text="a red square", box=(10, 10, 50, 50), mask=disk())])
    drawn = answer_annotations(a, click=(40.0, 30.0))
    outlines = [p for p in drawn.polylines if p.kind == "mask"]
    assert len(outlines) == 1 and iou(fill([np.array(outlines[0].points)], (64, 80)), disk()) > 0.97
    assert [p.points for p in drawn.polylines if p.kind == "box"] == [[(10, 10), (50, 10), (50, 50), (10, 50)]]
    assert [t.text for t in drawn.labels] == ["a red square"]
    assert drawn.circles[0].centre == (40.0, 30.0) and drawn.stamp_ns == 5
    # another mask: another outline (the drawing is the mask's, not the box's)
    moved = answer(regions=[ViewRegion(text="x", box=(10, 10, 50, 50), mask=disk(centre=(20, 60), radius=5))])
    other = next(p for p in answer_annotations(moved).polylines if p.kind == "mask")
    assert iou(fill([np.array(other.points)], (64, 80)), disk()) < 0.2
    # no mask: no outline, the box and the words stay
    bare = answer_annotations(answer(regions=[ViewRegion(label="cat", score=0.9, box=(1, 2, 3, 4))]))
    assert [p.kind for p in bare.polylines] == ["box"] and bare.labels[0].text == "cat 0.90"


def test_refer_candidates_errors_scene_and_log():
    refer = answer(Task.REFER, regions=[ViewRegion(mask=disk(), box=(28, 18, 53, 43))], selected_index=1,
                   candidate_boxes=[(0, 0, 5, 5), (28, 18, 53, 43), (6, 6, 9, 9)], weights_random=True)
    drawn = answer_annotations(refer)
    assert sum(p.kind == "candidate" for p in drawn.polylines) == 2
    assert next(p for p in drawn.polylines if p.kind == "mask").fill[3] > 0  # the selected region is filled
    assert drawn.labels[0].text.startswith("refer: [random]")
    failed = answer(status=Status.FRAME_EXPIRED, error="gone")
    drawn = answer_annotations(failed, click=(3.0, 4.0))
    assert not drawn.polylines and "FRAME_EXPIRED: gone" in drawn.labels[0].text
    assert answer_log(failed) == ("warning", "q1 CAPTION: FRAME_EXPIRED (gone)")
    level, line = answer_log(answer(regions=[ViewRegion(text="a cat")], latency_ms=12.0))
    assert level == "info" and line == "q1 CAPTION: a cat in 12 ms"
    deep = answer(regions=[ViewRegion(text="ball", position=(0.1, -0.2, 1.5), size=(0.3, 0.3, 0.1)), ViewRegion()])
    (box,) = answer_boxes_3d(deep)
    assert box.position == (0.1, -0.2, 1.5) and box.frame_id == "cam" and box.text == "ball (1.50 m)"
    assert answer_boxes_3d(answer(regions=[ViewRegion(text="flat")])) == []


def test_board_adds_answers_on_one_frame_and_starts_afresh_on_a_newer_one():
    board = AnnotationBoard(keep=2)
    r = [ViewRegion(text="t", box=(0, 0, 1, 1))]

    def on(qid, stamp):
        a = ViewAnswer(qid, int(Task.CAPTION), int(Status.OK), stamp_ns=stamp, regions=r)
        return board.add(a, answer_annotations(a))

    assert len(on("a", 10).labels) == 1 and len(on("b", 10).labels) == 2
    assert len(on("c", 10).labels) == 2  # at most `keep` answers
    assert len(on("d", 20).labels) == 1  # a newer frame: afresh
    assert len(on("late", 10).labels) == 1  # an older frame's answer: drawn alone, the board kept
    assert len(on("e", 20).labels) == 2


@pytest.mark.parametrize(
    ("topic", "body", "size", "reason"),
    [
        ("/nope", b'{"x": 1, "y": 1}', (10, 10), "not a query channel"),
        (QUERY_TOPIC, b"{x: 1", (10, 10), "not JSON"),
        (QUERY_TOPIC, b"[1, 2]", (10, 10), "JSON object"),
        (QUERY_TOPIC, b'{"x": 10, "y": 2}', (10, 10), "outside the 10x10 image"),
        (QUERY_TOPIC, b'{"x": -0.5, "y": 2}', (10, 10), "outside"),
        (QUERY_TOPIC, b'{"x": "1", "y": 2}', (10, 10), "finite number"),
        (QUERY_TOPIC, b'{"x": 1, "y": NaN}', (10, 10), "finite number"),
        (QUERY_TOPIC, b'{"x": 1, "y": 1}', None, "no camera image"),
        (QUERY_TOPIC, b'{"text": "   "}', (10, 10), "non-empty"),
        (QUERY_TOPIC, b'{"text": "a", "x": 1, "y": 1}', (10, 10), "not both"),
        (QUERY_TOPIC, b'{"what": 1}', (10, 10), "expected"),
        (QUERY_TOPIC, b'\xff\xfe', (10, 10), "not JSON"),
    ],
)
def test_bad_viewer_messages_are_refused_with_a_reason(topic, body, size, reason):
    with pytest.raises(ViewQueryError, match=reason):
        parse_view_query(topic, body, size)


def test_viewer_messages_that_become_queries():
    q = parse_view_query(QUERY_TOPIC, b'{"x": 9.5, "y": 0}', (10, 10))
    assert (q.task, q.point) == (Task.CAPTION, (9.5, 0.0))
    stamped = b'{"header": {"frame_id": "cam"}, "point": {"x": 3, "y": 4, "z": 0}}'
    assert parse_view_query(CLICK_TOPIC, stamped, (10, 10)).point == (3.0, 4.0)
    q = parse_view_query(QUERY_TOPIC, b'{"text": " the  red\\nball "}', None)
    assert (q.task, q.text, q.point) == (Task.REFER, "the red ball", None)


# ---------------------------------------------------------------------------------------------
# A Foxglove WebSocket client (the protocol, and Protobuf decoded by the advertised schemas)
# ---------------------------------------------------------------------------------------------


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, i
        shift += 7


def _fields(buf: bytes) -> list[tuple[int, int, Any]]:
    """(field number, wire type, raw value) of a Protobuf message."""
    out, i = [], 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((number, wire, value))
    return out


def _strings(buf: bytes, number: int) -> list[bytes]:
    return [v for n, w, v in _fields(buf) if n == number and w == 2]


class Schemas:
    """Message types of advertised FileDescriptorSets.

    Full name -> {field number: (name, type, repeated, type name)}."""

    SCALAR: ClassVar[dict[int, str]] = {1: "<d", 2: "<f", 6: "<Q", 7: "<I", 15: "<i", 16: "<q"}

    def __init__(self) -> None:
        self.types: dict[str, dict[int, tuple[str, int, bool, str]]] = {}

    def add(self, descriptor_set: bytes) -> None:
        for file in _strings(descriptor_set, 1):
            fields = _fields(file)
            package = next((v.decode() for n, _, v in fields if n == 2), "")
            for message in _strings(file, 4):
                self._message(message, package)

    def _message(self, message: bytes, scope: str) -> None:
        name = f"{scope}.{_strings(message, 1)[0].decode()}"
        table = {}
        for field in _strings(message, 2):
            f = {n: v for n, _, v in _fields(field)}
            table[f[3]] = (f[1].decode(), f.get(5, 0), f.get(4) == 3, f.get(6, b"").decode().lstrip("."))
        self.types[name] = table
        for nested in _strings(message, 3):
            self._message(nested, name)

    def decode(self, name: str, buf: bytes) -> dict[str, Any]:
        table, out = self.types[name], {}
        for number, wire, raw in _fields(buf):
            if number not in table:
                continue
            fname, ftype, repeated, tname = table[number]
            if ftype in self.SCALAR and wire == 2:  # packed
                fmt = self.SCALAR[ftype]
                values = [v[0] for v in struct.iter_unpack(fmt, raw)]
            elif ftype in self.SCALAR:
                values = [struct.unpack(self.SCALAR[ftype], raw)[0]]
            elif ftype == 11:
                values = [self.decode(tname, raw)]
            elif ftype == 9:
                values = [raw.decode()]
            elif ftype == 12:
                values = [bytes(raw)]
            elif wire == 2:  # packed varints
                values, i = [], 0
                while i < len(raw):
                    v, i = _varint(raw, i)
                    values.append(v)
            else:
                values = [raw]
            if repeated:
                out.setdefault(fname, []).extend(values)
            else:
                out[fname] = values[-1]
        return out


class FoxgloveClient:
    """A viewer: connects, subscribes every advertised channel, keeps what it receives (decoded on demand)."""

    def __init__(self, url: str, read: bool = True) -> None:
        import websockets.asyncio.client as ws_client

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.lock = threading.Lock()
        self.channels: dict[int, dict] = {}
        self.subscriptions: dict[int, int] = {}  # subscription id -> channel id
        self.received: dict[str, list[bytes]] = defaultdict(list)
        self.statuses: list[dict] = []
        self.server_info: dict = {}
        self.schemas = Schemas()
        async def connect():
            return await ws_client.connect(url, subprotocols=SUBPROTOCOLS, max_size=None,
                                           max_queue=None if read else 1)

        self.ws = self._run(connect())
        self.reading = read
        if read:
            asyncio.run_coroutine_threadsafe(self._read(), self.loop)
        else:  # read only what subscribing needs (serverInfo, advertise), then never again
            self._run(self._read_until_advertised())

    def _run(self, coro, timeout: float = 60.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _read_until_advertised(self) -> None:
        while not self.channels:
            await self._handle(await self.ws.recv())
        await self._subscribe_new()

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                await self._handle(message)
        except Exception:  # the connection closed
            pass

    async def _handle(self, message: str | bytes) -> None:
        if isinstance(message, str):
            body = json.loads(message)
            op = body.get("op")
            if op == "serverInfo":
                self.server_info = body
            elif op == "advertise":
                with self.lock:
                    for ch in body["channels"]:
                        self.channels[ch["id"]] = ch
                        if ch.get("schemaEncoding") == "protobuf":
                            import base64

                            self.schemas.add(base64.b64decode(ch["schema"]))
                if self.reading:
                    await self._subscribe_new()
            elif op == "status":
                with self.lock:
                    self.statuses.append(body)
            return
        if message[0] == 1:  # message data: subscription id, receive time, payload
            sub_id, _ = struct.unpack_from("<IQ", message, 1)
            with self.lock:
                topic = self.channels[self.subscriptions[sub_id]]["topic"]
                self.received[topic].append(bytes(message[13:]))

    async def _subscribe_new(self) -> None:
        with self.lock:
            new = [cid for cid in self.channels if cid not in self.subscriptions.values()]
            subs = []
            for cid in new:
                sid = len(self.subscriptions) + 1
                self.subscriptions[sid] = cid
                subs.append({"id": sid, "channelId": cid})
        if subs:
            await self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))

    def advertise(self, channel_id: int, topic: str, encoding: str = "json") -> None:
        channel = {"id": channel_id, "topic": topic, "encoding": encoding, "schemaName": "region_perception_view.Query"}
        self._run(self.ws.send(json.dumps({"op": "advertise", "channels": [channel]})))

    def publish(self, channel_id: int, payload: bytes) -> None:
        self._run(self.ws.send(struct.pack("<BI", 1, channel_id) + payload))

    def decoded(self, topic: str) -> list[dict]:
        with self.lock:
            payloads = list(self.received.get(topic, []))
            schema = next((c["schemaName"] for c in self.channels.values() if c["topic"] == topic), None)
        if schema is None:  # not advertised (yet)
            return []
        return [self.schemas.decode(schema, p) for p in payloads]

    def status_texts(self) -> list[str]:
        with self.lock:
            return [s.get("message", "") for s in self.statuses]

    def abort(self) -> None:
        """Vanish: the TCP connection dropped, no close handshake."""
        self.loop.call_soon_threadsafe(self.ws.transport.abort)

    def close(self) -> None:
        try:
            self._run(self.ws.close(), timeout=10)
        except Exception:
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


def wait_for(predicate, timeout: float = 120.0, what: str = "condition"):
    """Until ``predicate()`` is truthy (checked every 50 ms); never a fixed sleep as an assertion."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


# ---------------------------------------------------------------------------------------------
# The view between the synthetic camera and the node
# ---------------------------------------------------------------------------------------------


def _stop(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def system(tmp_path_factory):
    import os

    from region_perception.ros.processes import camera_command, node_command

    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_WAIT_POLICY="PASSIVE")
    logs = tmp_path_factory.mktemp("live_view")
    node = subprocess.Popen(
        node_command(model="tiny-regionvlm", image_reliability="reliable", image_qos_depth=5, frame_buffer_size=20,
                     diagnostics_period_s=0.5, depth_topic="depth/image_raw", camera_info_topic="depth/camera_info",
                     max_new_tokens=3, **{"proposal_filter.min_area_fraction": 0.001,
                                         "proposal_filter.max_border_fraction": 1.0}),
        env=env, stdout=open(logs / "node.log", "w"), stderr=subprocess.STDOUT,
    )
    camera = subprocess.Popen(camera_command("--source", "synthetic", "--rate", "5", "--reliable"), env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    view_log = logs / "view.log"
    view = subprocess.Popen([sys.executable, "-m", "region_perception.ros.live_view", "--port", "0"], env=env,
                            stdout=subprocess.PIPE, stderr=open(view_log, "w"), text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in view.stdout], daemon=True).start()
    from region_perception.msg import RegionQuery

    from .helpers.ros_client import RosClient

    client = RosClient("live_view_test_client")
    client.asked = []  # every RegionQuery on region_queries (the view's among them)
    client.images_heard = [0]
    client.node.create_subscription(RegionQuery, "region_queries", client.asked.append, 1000)
    client.node.create_subscription(_image_type(), "image",
                                    lambda _m: client.images_heard.__setitem__(0, client.images_heard[0] + 1), 10)
    try:
        end = time.monotonic() + 120
        url = None
        while url is None and time.monotonic() < end:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert view.poll() is None, f"the view exited: {view_log.read_text()}"
                continue
            if "serving ws://" in line:
                url = line.split("serving ", 1)[1].strip()
        assert url, "the view did not start serving"
        assert client.client.wait_for_service(timeout_sec=120), "node did not come up"
        client.wait_active()
        client.url, client.view_proc, client.view_log = url, view, view_log
        yield client
    finally:
        client.close()
        _stop(camera, view, node)
        print("view:", view_log.read_text()[-2000:])
        print("view stdout:", "".join(list(lines.queue))[-500:])


def _image_type():
    from sensor_msgs.msg import Image

    return Image


def _published_frame(client):
    """A camera frame the node has (reliable QoS), newly heard."""
    return client.fresh_frame((SIZE, SIZE), timeout=60)


def _mask_of(result) -> np.ndarray:
    from region_perception.service.image_decoding import mask_msg_to_bool

    return mask_msg_to_bool(result.outputs[0].mask)


def _outline_of(annotations: list[dict], query_id: str) -> list[np.ndarray] | None:
    """The mask outlines drawn for ``query_id`` in the newest annotation message that has them."""
    for message in reversed(annotations):
        found = []
        for p in message.get("points", []):
            meta = {kv.get("key"): kv.get("value") for kv in p.get("metadata", [])}
            if meta.get("query_id") == query_id and meta.get("kind") == "mask":
                found.append(np.array([[pt.get("x", 0.0), pt.get("y", 0.0)] for pt in p["points"]]))
        if found:
            return found
    return None


pytest_slow = pytest.mark.slow


@pytest_slow
def test_viewer_gets_images_and_annotations_that_outline_the_answers_mask_and_a_scene(system):
    from region_perception.msg import Region, RegionQuery, RegionResult

    client = system
    viewer = FoxgloveClient(system.url)
    try:
        assert "clientPublish" in viewer.server_info.get("capabilities", []) or wait_for(
            lambda: "clientPublish" in viewer.server_info.get("capabilities", []), 30, "serverInfo")
        wait_for(lambda: {"/image", "/region_perception_view/annotations", "/region_perception_view/scene",
                          "/region_perception_view/log", "/tf"} <= {c["topic"] for c in viewer.channels.values()},
                 30, "the channels")
        image = wait_for(lambda: viewer.decoded("/image"), 120, "a camera image")[-1]
        assert image["format"] == "jpeg" and image["frame_id"] == "camera_optical_frame"
        rgb = cv2.imdecode(np.frombuffer(image["data"], np.uint8), cv2.IMREAD_COLOR)
        assert rgb.shape == (SIZE, SIZE, 3)
        frame = _published_frame(client)
        q = RegionQuery(query_id="lv-box", task=RegionQuery.CAPTION, header=frame.header, max_new_tokens=3)
        q.regions = [Region(kind=Region.BOX, box=np.array([30, 30, 90, 90], dtype=np.float32))]
        result = client.ask(q)
        assert result.status == RegionResult.OK, result.error
        mask = _mask_of(result)
        outline = wait_for(lambda: _outline_of(viewer.decoded("/region_perception_view/annotations"), "lv-box"),
                           120, "the answer's annotations")
        assert iou(fill(outline, mask.shape), mask) > 0.9
        assert abs(sum(polygon_area(p) for p in outline) - mask.sum()) <= 2 * np.sqrt(mask.sum()) * 4
        # depth is on: the region's 3D box in the camera frame, and the camera frame's transform
        assert result.outputs[0].has_position
        scene = wait_for(lambda: [e for m in viewer.decoded("/region_perception_view/scene")
                                  for e in m.get("entities", []) if e.get("id", "").startswith("lv-box/")],
                         120, "a scene update")[-1]
        assert scene["frame_id"] == result.header.frame_id
        assert scene["cubes"][0]["pose"]["position"]["z"] == pytest.approx(result.outputs[0].position.z, abs=1e-4)
        tf = wait_for(lambda: viewer.decoded("/tf"), 60, "a frame transform")[-1]["transforms"][0]
        assert tf["child_frame_id"] == "camera_optical_frame" and tf["parent_frame_id"] == "camera_link"
        logs = wait_for(lambda: [m["message"] for m in viewer.decoded("/region_perception_view/log")
                                 if "lv-box" in m.get("message", "")], 60, "the answer's log line")
        assert logs[0].startswith("lv-box CAPTION")
        diagnostics = wait_for(lambda: viewer.decoded("/region_perception_view/diagnostics"), 60, "diagnostics")
        assert diagnostics[-1]["name"].startswith("region_perception") and "frames_received=" in diagnostics[-1][
            "message"]
        assert system.view_proc.poll() is None
    finally:
        viewer.close()


@pytest_slow
def test_a_viewers_click_and_sentence_are_asked_once_answered_once_and_drawn(system):
    from region_perception.msg import RegionQuery, RegionResult

    client = system
    viewer = FoxgloveClient(system.url)
    try:
        wait_for(lambda: viewer.decoded("/image"), 120, "a camera image")
        before = len(client.asked)
        viewer.advertise(7, QUERY_TOPIC)
        viewer.publish(7, json.dumps({"x": 64, "y": 64}).encode())
        asked = wait_for(lambda: [q for q in client.asked[before:] if q.query_id.startswith("view-")], 60,
                         "the view's query")
        click = asked[0]
        assert click.task == RegionQuery.CAPTION and (click.regions[0].points[0].x, click.regions[0].points[0].y) == (
            64.0, 64.0)
        wait_for(lambda: click.query_id in client.results, 120, "the click's answer")
        assert client.results[click.query_id][0].status == RegionResult.OK, client.results[click.query_id][0].error
        outline = wait_for(lambda: _outline_of(viewer.decoded("/region_perception_view/annotations"),
                                               click.query_id), 120, "the click's annotations")
        assert iou(fill(outline, (SIZE, SIZE)), _mask_of(client.results[click.query_id][0])) > 0.9
        circles = [c for m in viewer.decoded("/region_perception_view/annotations") for c in m.get("circles", [])]
        assert any(c["position"]["x"] == 64 and c["position"]["y"] == 64 for c in circles)
        # a sentence: a REFER
        viewer.publish(7, json.dumps({"text": "the red shape"}).encode())
        refer = wait_for(lambda: [q for q in client.asked[before:] if q.query_id.startswith("view-")
                                  and q.task == RegionQuery.REFER], 60, "the REFER")[0]
        assert refer.text == "the red shape"
        wait_for(lambda: refer.query_id in client.results, 120, "the REFER's answer")
        # a later answer has come: the click was asked once and answered once
        assert [q.query_id for q in client.asked].count(click.query_id) == 1
        assert len(client.results[click.query_id]) == 1
        assert len({q.query_id for q in client.asked if q.query_id.startswith("view-")}) == len(
            [q for q in client.asked if q.query_id.startswith("view-")])
    finally:
        viewer.close()


@pytest_slow
def test_bad_viewer_messages_are_refused_and_change_nothing(system):
    from region_perception.msg import RegionQuery

    client = system
    viewer = FoxgloveClient(system.url)
    try:
        wait_for(lambda: viewer.decoded("/image"), 120, "a camera image")
        before = len(client.asked)
        viewer.advertise(1, "/not/a/query/channel")
        wait_for(lambda: any("not a query channel" in s for s in viewer.status_texts()), 30, "refusal: channel")
        viewer.publish(1, b'{"x": 1, "y": 1}')
        viewer.advertise(2, QUERY_TOPIC)
        viewer.publish(2, b"{not json")
        wait_for(lambda: any("not JSON" in s for s in viewer.status_texts()), 30, "refusal: JSON")
        viewer.publish(2, json.dumps({"x": SIZE + 5, "y": 3}).encode())
        wait_for(lambda: any("outside the" in s for s in viewer.status_texts()), 30, "refusal: outside")
        logged = wait_for(lambda: [m for m in viewer.decoded("/region_perception_view/log")
                                   if "outside the" in m.get("message", "")], 30, "the refusal's log line")
        assert logged[0]["level"] == 3  # Warning
        # then a good one: it alone is asked, and the view still answers
        viewer.publish(2, json.dumps({"text": "the blue shape"}).encode())
        good = wait_for(lambda: [q for q in client.asked[before:] if q.query_id.startswith("view-")], 60, "good one")
        assert len(good) == 1 and good[0].task == RegionQuery.REFER
        wait_for(lambda: good[0].query_id in client.results, 120, "its answer")
        assert [q for q in client.asked[before:] if q.query_id.startswith("view-")] == good
        assert system.view_proc.poll() is None
    finally:
        viewer.close()


@pytest_slow
def test_two_viewers_a_vanishing_one_and_one_that_never_reads_cost_the_node_nothing(system):
    from region_perception.msg import Region, RegionQuery, RegionResult

    client = system
    watching = [FoxgloveClient(system.url), FoxgloveClient(system.url)]
    stalled = FoxgloveClient(system.url, read=False)
    vanishing = FoxgloveClient(system.url)
    try:
        for v in [*watching, vanishing]:
            wait_for(lambda v=v: v.decoded("/image"), 120, "a camera image")
        vanishing.abort()

        def node_frames() -> int:
            return int(client.diagnostic_values().get("frames_received", "0"))

        start_node, start_heard = node_frames(), client.images_heard[0]
        asked = []
        for i in range(8):
            q = RegionQuery(query_id=f"lv-load-{i}", task=RegionQuery.CAPTION, max_new_tokens=2)
            q.regions = [Region(kind=Region.WHOLE_IMAGE)]
            asked.append(q.query_id)
            client.query_pub.publish(q)
            wait_for(lambda qid=q.query_id: qid in client.results, 120, f"answer {q.query_id}")
        wait_for(lambda: client.images_heard[0] - start_heard >= 40, 120, "40 camera frames")
        # the node's count is from its last diagnostics (every 0.5 s): compare against a fresh one
        heard = client.images_heard[0] - start_heard
        received = wait_for(lambda: node_frames() - start_node >= 0.95 * heard and node_frames() - start_node,
                            60, f"the node to have >= 95 % of {heard} frames")
        print(f"node frames with viewers attached: {received} received / {heard} published")
        assert all(client.results[qid][0].status == RegionResult.OK for qid in asked)
        assert all(len(client.results[qid]) == 1 for qid in asked)
        for v in watching:  # both still served
            n = len(v.received["/image"])
            wait_for(lambda v=v, n=n: len(v.received["/image"]) > n, 60, "more images for a viewer")
        assert system.view_proc.poll() is None
    finally:
        for v in [*watching, stalled]:
            v.close()


def test_live_layout_shows_what_the_view_serves():
    from pathlib import Path

    from region_perception.ros import live_view

    layout = json.loads((Path(__file__).resolve().parents[1] / "foxglove" / "region_perception_live.json").read_text())

    def leaves(node) -> list[str]:
        return [node] if isinstance(node, str) else leaves(node["first"]) + leaves(node["second"])

    assert sorted(leaves(layout["layout"])) == sorted(layout["configById"])
    served = {getattr(live_view, name) for name in dir(live_view) if name.endswith("_TOPIC")}
    shown = set()
    for config in layout["configById"].values():
        mode = config.get("imageMode", {})
        shown |= {mode.get("imageTopic"), *mode.get("annotations", {}), *config.get("topics", {}),
                  config.get("topicToRender")}
        published = {mode.get("publish", {}).get("cursorClickTopic"), config.get("topicName")} - {None}
        assert published <= {QUERY_TOPIC, CLICK_TOPIC}  # what the layout publishes, the view reads
    assert shown - {None} <= served and served - {live_view.TF_TOPIC} <= shown - {None}


def test_ros_messages_to_foxglove_messages():
    """The adapter's conversions: a RegionResult's mask, box and depth reach the view; images become JPEG."""
    from geometry_msgs.msg import Point, Vector3
    from sensor_msgs.msg import CompressedImage, RegionOfInterest

    from region_perception.msg import RegionOutput, RegionResult
    from region_perception.ros.image_conversion import array_to_image_msg, mask_to_msg
    from region_perception.ros.live_view import foxglove_image, image_annotations, scene_update, view_answer

    result = RegionResult(query_id="r", task=int(Task.CAPTION), status=0)
    result.header.frame_id, result.header.stamp.sec, result.header.stamp.nanosec = "cam", 3, 7
    out = RegionOutput(text="a ball", has_position=True, position=Point(x=0.1, y=0.2, z=1.5),
                       size=Vector3(x=0.2, y=0.2, z=0.1))
    out.mask = mask_to_msg(disk().astype(np.uint8) * 255)
    out.bbox = RegionOfInterest(x_offset=28, y_offset=18, width=25, height=25)
    result.outputs = [out]
    a = view_answer(result)
    assert a.stamp_ns == 3_000_000_007 and a.frame_id == "cam" and a.regions[0].box == (28, 18, 53, 43)
    assert np.array_equal(a.regions[0].mask, disk()) and a.regions[0].position == pytest.approx((0.1, 0.2, 1.5))
    schemas = Schemas()

    def decoded(message) -> dict:
        schema = type(message).get_schema()
        schemas.add(schema.data)
        return schemas.decode(schema.name, message.encode())

    drawn = decoded(image_annotations(answer_annotations(a)))
    outline = next(p for p in drawn["points"] if {"key": "kind", "value": "mask"} in p["metadata"])
    assert iou(fill([np.array([[q["x"], q["y"]] for q in outline["points"]])], (64, 80)), disk()) > 0.97
    assert drawn["texts"][0]["text"] == "a ball"
    (entity,) = decoded(scene_update(answer_boxes_3d(a), 5.0))["entities"]
    assert entity["frame_id"] == "cam" and entity["cubes"][0]["pose"]["position"]["z"] == 1.5
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[5:15, 10:20] = (255, 0, 0)
    jpeg = decoded(foxglove_image(array_to_image_msg(rgb, "rgb8")))
    back = cv2.imdecode(np.frombuffer(jpeg["data"], np.uint8), cv2.IMREAD_COLOR)
    assert jpeg["format"] == "jpeg" and back.shape == (20, 30, 3) and back[10, 15, 2] > 200  # red, in BGR
    png = decoded(foxglove_image(CompressedImage(format="rgb8; png compressed bgr8", data=b"\x89PNG...")))
    assert png["format"] == "png" and png["data"] == b"\x89PNG..."
