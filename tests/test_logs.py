"""Robot logs: replay MCAP/bag frames into the node, record a run, run-log offline, bad logs.

The node, the log player and the recorder run as separate processes, on loopback, as in
test_node.py; every wait is on a condition with a generous timeout.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import Point32
from sensor_msgs.msg import CompressedImage

from region_perception import cli
from region_perception.logs import LogError
from region_perception.logs.make_log import write_image_log
from region_perception.logs.reader import LogReader, decode_frame
from region_perception.logs.script import load_script
from region_perception.msg import Region, RegionQuery, RegionResult
from region_perception.ros import camera
from region_perception.ros.processes import camera_command, node_command

FRAME_ID = "log_camera"  # not the camera tool's default: proves the log's own frame_id is kept
T0 = 1_700_000_000_000_000_000


def frames_of(astronaut: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """Four stamped frames of distinct sizes, so a result's mask size names its frame."""
    sizes = [(96, 128), (112, 128), (128, 96), (80, 144)]
    return [(T0 + i * 250_000_000 + 7, np.ascontiguousarray(astronaut[: h * 2 : 2, : w * 2 : 2])) for i, (h, w) in
            enumerate(sizes)]  # fmt: skip


def write_script(path: Path, stamps: list[int], every: bool = False) -> Path:
    at = [{"sec": s // 1_000_000_000, "nanosec": s % 1_000_000_000} for s in stamps]
    queries = [
        {"id": "cap", "task": "caption", "at": at[0], "points": [[40, 30]], "max_new_tokens": 4},
        {"id": "cls", "task": "classify", "at": at[1], "box": [10, 10, 60, 50], "labels": ["person", "flag"]},
        {"id": "ref", "task": "refer", "at": at[2], "text": "the white helmet"},
        {
            "id": "ask",
            "task": "ask",
            "at": at[3],
            "regions": [{"points": [[20, 20]]}, {"box": [0, 0, 40, 40], "name": "corner"}],
            "text": "what is this?",
            "max_new_tokens": 3,
        },
    ]
    if every:
        queries.append({"id": "each", "task": "caption", "every": 1, "regions": [{"whole": True}], "max_new_tokens": 2})
    path.write_text(json.dumps({"queries": queries}))  # JSON is YAML
    return path


def stopped(*procs: subprocess.Popen) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


# -- no ROS graph ---------------------------------------------------------------------------------


def test_mcap_and_bag_logs_read_back_with_stamps_frame_ids_and_pixels(tmp_path, astronaut):
    frames = frames_of(astronaut)
    mcap = write_image_log(tmp_path / "a.mcap", frames, frame_id=FRAME_ID)
    bag = write_image_log(tmp_path / "bag", frames, frame_id=FRAME_ID, compressed="png", bag_storage="sqlite3")
    for path, msgtype in ((mcap, "sensor_msgs/msg/Image"), (bag, "sensor_msgs/msg/CompressedImage")):
        reader = LogReader(path)
        assert {t: (i.msgtype, i.count) for t, i in reader.image_topics().items()} == {
            "/camera/image_raw": (msgtype, 4)
        }
        got = [(m, reader.decode(m)) for m in reader.messages()]
        assert [m.log_time_ns for m, _ in got] == [s for s, _ in frames]
        for (m, msg), (stamp, rgb) in zip(got, frames, strict=True):
            assert msg.header.frame_id == FRAME_ID
            assert msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec == stamp
            np.testing.assert_array_equal(decode_frame(msg, m.msgtype), rgb)  # PNG is lossless


def test_written_mcap_is_readable_by_rosbags_with_every_field(tmp_path):
    """Our MCAP writer and schema text, read by an independent reader (rosbags) and by mcap_ros2."""
    from rclpy.serialization import serialize_message
    from rosbags.highlevel import AnyReader

    from region_perception.logs.writer import McapLogWriter
    from region_perception.msg import RegionOutput

    q = RegionQuery(query_id="q", task=RegionQuery.CLASSIFY, labels=["a", "b"], conversation_id="c7", timeout_s=1.5)
    q.regions = [Region(kind=Region.POINTS, points=[Point32(x=1.5, y=2.0)], name="p")]
    r = RegionResult(query_id="q", status=RegionResult.OK, selected_index=2, batch_size=3, notes=["n1", "n2"])
    r.header.stamp.sec, r.header.stamp.nanosec, r.header.frame_id = 12, 34, "cam"
    r.candidate_scores = [0.25, 1.5]
    r.outputs = [RegionOutput(name="p", text="a cat", label="a", score=0.75, labels=["a", "b"], label_scores=[0.75])]
    with McapLogWriter(tmp_path / "r.mcap") as w:
        w.write("/region_queries", "region_perception/msg/RegionQuery", serialize_message(q), 1)
        w.write("/region_results", "region_perception/msg/RegionResult", serialize_message(r), 2)
    with AnyReader([tmp_path / "r.mcap"]) as reader:
        decoded = {c.topic: reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages()}
    dq, dr = decoded["/region_queries"], decoded["/region_results"]
    assert (dq.query_id, dq.task, list(dq.labels), dq.conversation_id) == ("q", 1, ["a", "b"], "c7")
    assert dq.timeout_s == pytest.approx(1.5) and dq.regions[0].name == "p" and dq.regions[0].points[0].x == 1.5
    assert (dr.header.stamp.sec, dr.header.stamp.nanosec, dr.header.frame_id) == (12, 34, "cam")
    assert (dr.selected_index, dr.batch_size, list(dr.notes)) == (2, 3, ["n1", "n2"])
    assert list(dr.candidate_scores) == [0.25, 1.5]
    out = dr.outputs[0]
    assert (out.text, out.label, list(out.labels)) == ("a cat", "a", ["a", "b"]) and out.score == 0.75
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with (tmp_path / "r.mcap").open("rb") as f:
        decoded_msgs = make_reader(f, decoder_factories=[DecoderFactory()]).iter_decoded_messages(["/region_results"])
        texts = [m.outputs[0].text for _, _, _, m in decoded_msgs]
    assert texts == ["a cat"]


def test_queries_yaml_is_validated_with_the_query_named(tmp_path):
    bad = {
        "queries:\n  - {id: a, task: paint, at: 1.0}": "task 'paint'",
        "queries:\n  - {id: a, task: caption}": "either at:",
        "queries:\n  - {id: a, task: caption, every: 0}": "every: 0",
        "queries:\n  - {id: a, task: caption, at: 1, box: [1, 2]}": "box",
        "queries:\n  - {id: a, task: caption, at: 1, colour: red}": "unknown field(s) colour",
        "queries:\n  - {id: a, task: caption, at: 1}\n  - {id: a, task: caption, at: 2}": "duplicate id",
    }
    for text, expected in bad.items():
        path = tmp_path / "q.yaml"
        path.write_text(text)
        with pytest.raises(LogError, match="query") as err:
            load_script(path)
        assert expected in str(err.value)


def test_bad_logs_are_one_line_errors_naming_what_was_found(tmp_path, astronaut, capsys):
    frames = frames_of(astronaut)
    good = write_image_log(tmp_path / "good.mcap", frames)
    truncated = tmp_path / "cut.mcap"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    not_mcap = tmp_path / "photo.mcap"
    not_mcap.write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 64)
    from rclpy.serialization import serialize_message

    from region_perception.logs.writer import McapLogWriter

    for no_images in (tmp_path / "noimg.mcap", tmp_path / "noimg_bag"):  # an MCAP file, a bag directory
        with McapLogWriter(no_images) as w:
            w.write("/region_results", "region_perception/msg/RegionResult", serialize_message(RegionResult()), 1)
    queries = write_script(tmp_path / "q.yaml", [s for s, _ in frames])
    cases = [
        (tmp_path / "missing.mcap", [], "no such file"),
        (truncated, [], "truncated MCAP"),
        (not_mcap, [], "not an MCAP file"),
        (tmp_path / "noimg.mcap", [], "no sensor_msgs/Image or CompressedImage topic (found: /region_results"),
        (tmp_path / "noimg_bag", [], "no sensor_msgs/Image or CompressedImage topic (found: /region_results"),
        (tmp_path, [], "not a ROS 2 bag (no metadata.yaml; found"),
        (good, ["--topic", "/nope"], "no topic '/nope' (found: /camera/image_raw (sensor_msgs/msg/Image, 4))"),
    ]
    for path, extra, expected in cases:
        out = tmp_path / "out.jsonl"
        code = cli.main(["run-log", str(path), "--queries", str(queries), "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and expected in err, err
        assert not out.exists()
        if path == tmp_path:
            continue  # to the camera tool, a folder without metadata.yaml is a folder of photos
        assert camera.main(["--source", str(path), *extra, "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    # an existing output is not overwritten without --force
    (tmp_path / "keep.jsonl").write_text("mine")
    code = cli.main(["run-log", str(good), "--queries", str(queries), "--out", str(tmp_path / "keep.jsonl")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "keep.jsonl").read_text() == "mine"
    assert camera.main(["--source", str(good), "--list"]) == 0
    assert "/camera/image_raw  sensor_msgs/msg/Image  4 messages" in capsys.readouterr().out


# -- the live node --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """Node + recorder + a player of a 4-frame MCAP (looping), and a client."""
    import os

    from skimage import data

    from .helpers.ros_client import RosClient

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    work = tmp_path_factory.mktemp("logs")
    frames = frames_of(data.astronaut())
    log = write_image_log(work / "run.mcap", frames, frame_id=FRAME_ID)
    node_log = open(work / "node.log", "w")
    node = subprocess.Popen(
        node_command(
            model="tiny-regionvlm",
            image_reliability="reliable",
            image_qos_depth=5,
            frame_buffer_size=10,
            diagnostics_period_s=0.5,
        ),
        env=env,
        stdout=node_log,
        stderr=subprocess.STDOUT,
    )
    record_log = open(work / "record.log", "w")
    recorder = subprocess.Popen(
        [sys.executable, "-m", "region_perception.ros.record", "--out", str(work / "rec")],
        env=env,
        stdout=record_log,
        stderr=subprocess.STDOUT,
    )
    player = subprocess.Popen(
        camera_command("--source", str(log), "--rate", "4", "--loop", "--reliable", "--no-progress"),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = RosClient("logs_test_client")
    try:
        assert client.client.wait_for_service(timeout_sec=120), "node did not come up"
        client.wait_active()
        sizes = {rgb.shape[:2] for _, rgb in frames}
        assert client.wait(lambda: sizes <= set(client.frames), 60), f"frames seen: {set(client.frames)}"
        yield {"client": client, "frames": frames, "log": log, "work": work, "recorder": recorder, "env": env}
    finally:
        client.close()
        stopped(player, recorder, node)


@pytest.mark.slow
def test_replayed_frames_answer_stamped_queries_on_exactly_those_frames(live):
    client = live["client"]
    for i, (stamp, rgb) in enumerate(live["frames"]):
        q = RegionQuery(query_id=f"stamped-{i}", task=RegionQuery.CAPTION, max_new_tokens=2)
        q.header.stamp.sec, q.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
        q.regions = [Region(kind=Region.POINTS, points=[Point32(x=5.0, y=5.0)])]
        result = client.ask(q)
        assert result.status == RegionResult.OK, result.error
        assert result.header.stamp.sec * 1_000_000_000 + result.header.stamp.nanosec == stamp
        assert result.header.frame_id == FRAME_ID
        mask = result.outputs[0].mask
        assert (mask.height, mask.width) == rgb.shape[:2]


@pytest.mark.slow
def test_run_log_gives_the_live_nodes_answers(live, python):
    work, env = live["work"], live["env"]
    stamps = [s for s, _ in live["frames"]]
    script = write_script(work / "queries.yaml", stamps, every=True)
    live_out, offline_out = work / "live.jsonl", work / "offline.jsonl"
    query_tool = [python, "-m", "region_perception.ros.query_tool", "--script", str(script), "--frames", "2"]
    query_tool += ["--min-subscribers", "2"]  # the node and the recorder
    done = subprocess.run([*query_tool, "--out", str(live_out)], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    run_log = [python, "-m", "region_perception.cli", "run-log", str(live["log"]), "--queries", str(script)]
    run_log += ["--out", str(offline_out), "--model", "tiny-regionvlm", "--no-progress", "--masks", str(work / "m")]
    done = subprocess.run(run_log, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stderr.strip().splitlines()[-1])
    assert summary["statuses"] == {"OK": 8} and summary["frames"] == 4 and summary["weights_random"]
    online = {r["query_id"]: r for r in map(json.loads, live_out.read_text().splitlines())}
    offline = {r["query_id"]: r for r in map(json.loads, offline_out.read_text().splitlines())}
    assert {"cap", "cls", "ref", "ask"} <= online.keys() and len(online) == 6  # + every-1 over 2 frames
    assert set(offline) == {"cap", "cls", "ref", "ask", "each@0", "each@1", "each@2", "each@3"}
    for qid in ("cap", "cls", "ref", "ask"):
        a, b = online[qid], offline[qid]
        assert a["status_name"] == b["status_name"] == "OK"
        assert a["header"]["stamp"] == b["header"]["stamp"] and a["header"]["frame_id"] == b["header"]["frame_id"]
        assert a["selected_index"] == b["selected_index"]
        np.testing.assert_allclose(a["candidate_scores"], b["candidate_scores"], rtol=1e-4, atol=1e-4)
        for oa, ob in zip(a["outputs"], b["outputs"], strict=True):
            assert (oa["text"], oa["label"], oa["labels"], oa["bbox"], oa["mask"]) == (
                ob["text"],
                ob["label"],
                ob["labels"],
                ob["bbox"],
                ob["mask"],
            )
            np.testing.assert_allclose(oa["label_scores"], ob["label_scores"], rtol=1e-4, atol=1e-5)
    assert len(list((work / "m").glob("*.png"))) >= 4
    for qid in ("each@0", "each@1"):  # live every-N: the frames this tool saw, all from the log
        r = online[qid]
        stamp = r["header"]["stamp"]["sec"] * 1_000_000_000 + r["header"]["stamp"]["nanosec"]
        assert r["status_name"] == "OK" and stamp in stamps


@pytest.mark.slow
def test_recording_holds_every_query_and_result_and_only_answered_frames(live):
    """Last in this module: stops the recorder and reads its MCAP with two readers."""
    from rosbags.highlevel import AnyReader

    client, recorder, work = live["client"], live["recorder"], live["work"]
    sent = {qid for qid in client.results if qid.startswith("stamped-")}
    assert len(sent) == 4
    stopped(recorder)  # SIGINT: the recorder closes the MCAP (summary and footer) and exits 0
    assert recorder.returncode == 0, (work / "record.log").read_text()
    assert "wrote" in (work / "record.log").read_text()
    reader = LogReader(work / "rec" / "rec_0.mcap")  # the MCAP file, read by the mcap library
    topics = reader.topics()
    assert topics["/region_queries"].count >= 4 + 6 and topics["/region_results"].count >= 4 + 6
    results = {}
    with AnyReader([work / "rec"]) as bag:  # the bag directory (metadata.yaml), read by rosbags
        by_topic: dict[str, list] = {}
        for conn, _, raw in bag.messages():
            by_topic.setdefault(conn.topic, []).append(bag.deserialize(raw, conn.msgtype))
    for r in by_topic["/region_results"]:
        results[r.query_id] = r
    queries = {q.query_id: q for q in by_topic["/region_queries"]}
    for qid in sent:
        live_result, recorded = client.results[qid][0], results[qid]
        assert queries[qid].task == RegionQuery.CAPTION and len(queries[qid].regions) == 1
        assert recorded.header.stamp.sec == live_result.header.stamp.sec
        assert recorded.header.stamp.nanosec == live_result.header.stamp.nanosec
        assert recorded.header.frame_id == FRAME_ID and recorded.status == live_result.status
        assert recorded.outputs[0].text == live_result.outputs[0].text
        assert bytes(recorded.outputs[0].mask.data) == bytes(live_result.outputs[0].mask.data)
        assert recorded.model == live_result.model and recorded.weights_random
        assert recorded.latency_ms == pytest.approx(live_result.latency_ms)
    # frames: only answered ones, each once, with the log's stamps
    answered = {(r.header.stamp.sec, r.header.stamp.nanosec) for r in by_topic["/region_results"]}
    images = by_topic["/image"]
    stamps = [(m.header.stamp.sec, m.header.stamp.nanosec) for m in images]
    assert len(stamps) == len(set(stamps)) and set(stamps) <= answered and len(stamps) == 4
    assert all(m.header.frame_id == FRAME_ID for m in images)
    assert by_topic.get("/region_perception/overlay") and by_topic.get("/region_perception/markers")
    layout = json.loads((Path(__file__).resolve().parents[1] / "foxglove" / "region_perception.json").read_text())
    assert layout_topics(layout) <= set(by_topic)  # the Foxglove layout shows what a recording holds


@pytest.mark.slow
def test_compressed_bag_replays_into_a_compressed_node(tmp_path, astronaut, child_env):
    from .helpers.ros_client import RosClient

    frames = frames_of(astronaut)
    bag = write_image_log(tmp_path / "bag", frames, frame_id=FRAME_ID, compressed="png", bag_storage="sqlite3")
    node = subprocess.Popen(
        node_command(model="tiny-regionvlm", use_compressed=True, image_reliability="reliable", image_qos_depth=5),
        env=child_env,
        stdout=open(tmp_path / "node.log", "w"),
        stderr=subprocess.STDOUT,
    )
    player = subprocess.Popen(
        camera_command("--source", str(bag), "--rate", "4", "--loop", "--reliable", "--no-progress"),
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = RosClient("logs_compressed_client")
    seen: set[int] = set()
    client.node.create_subscription(
        CompressedImage, "image/compressed", lambda m: seen.add(m.header.stamp.sec * 10**9 + m.header.stamp.nanosec), 5
    )
    try:
        assert client.client.wait_for_service(timeout_sec=120), "node did not come up"
        client.wait_active()
        assert client.wait(lambda: {s for s, _ in frames} <= seen, 60), f"stamps seen: {seen}"
        for i, (stamp, rgb) in enumerate(frames):
            q = RegionQuery(query_id=f"png-{i}", task=RegionQuery.CAPTION, max_new_tokens=2)
            q.header.stamp.sec, q.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
            q.regions = [Region(kind=Region.WHOLE_IMAGE)]
            result = client.ask(q)
            assert result.status == RegionResult.OK, result.error
            assert result.header.stamp.sec * 1_000_000_000 + result.header.stamp.nanosec == stamp
            assert result.header.frame_id == FRAME_ID
            assert (result.outputs[0].mask.height, result.outputs[0].mask.width) == rgb.shape[:2]
    finally:
        client.close()
        stopped(player, node)


def test_writer_bounds_disk_use_and_writes_a_bag_directory_rosbags_reads(tmp_path, astronaut):
    from region_perception.logs.make_log import image_cdr
    from region_perception.logs.writer import McapLogWriter

    frames = frames_of(astronaut)
    sizes = [len(image_cdr(rgb, s, FRAME_ID)[1]) for s, rgb in frames]
    with McapLogWriter(tmp_path / "bag", max_bytes=sizes[0] + sizes[1] + 10) as writer:  # a directory: a bag
        accepted = [writer.write("/image", *image_cdr(rgb, s, FRAME_ID), s) for s, rgb in frames]
    assert accepted == [True, True, False, False] and "size limit" in writer.full
    reader = LogReader(tmp_path / "bag")  # bag directory: read by rosbags from metadata.yaml
    assert reader.kind == "bag" and reader.topics()["/image"].count == 2
    assert [m.log_time_ns for m in reader.messages()] == [s for s, _ in frames[:2]]
    with McapLogWriter(tmp_path / "d.mcap", max_duration_s=0.3) as writer:
        accepted = [writer.write("/image", *image_cdr(rgb, s, FRAME_ID), s) for s, rgb in frames]  # 0.25 s apart
    assert accepted == [True, True, False, False] and "duration limit" in writer.full
    with pytest.raises(LogError, match="already exists"):
        McapLogWriter(tmp_path / "d.mcap")


def test_foxglove_layout_panels_exist_and_name_the_nodes_topics():
    layout = json.loads((Path(__file__).resolve().parents[1] / "foxglove" / "region_perception.json").read_text())

    def leaves(node) -> list[str]:
        return [node] if isinstance(node, str) else leaves(node["first"]) + leaves(node["second"])

    assert sorted(leaves(layout["layout"])) == sorted(layout["configById"])
    assert layout_topics(layout) == {
        "/image",
        "/region_perception/overlay",
        "/region_results",
        "/region_queries",
        "/region_perception/markers",
    }


def layout_topics(layout: dict) -> set[str]:
    """Topics the layout's panels show (the image panels, tables, plots and the 3D panel)."""
    found = set()
    for config in layout["configById"].values():
        found.add(config.get("imageMode", {}).get("imageTopic"))
        found.add(config.get("topicPath", "").split(".")[0] or None)
        found.update(p["value"].split(".")[0] for p in config.get("paths", []))
        found.update(config.get("topics", {}))
    return found - {None}


def test_log_core_imports_without_rclpy_and_query_script_errors_are_one_line(tmp_path, capsys):
    code = (
        "import sys, importlib, pkgutil; sys.modules['rclpy'] = None\n"
        "import region_perception.logs as logs\n"
        "for m in pkgutil.iter_modules(logs.__path__):\n"
        "    importlib.import_module('region_perception.logs.' + m.name)\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
    from region_perception.ros import query_tool

    assert query_tool.main(["--script", str(tmp_path / "none.yaml")]) == 2
    assert capsys.readouterr().err.strip().endswith("no such file")
    script = write_script(tmp_path / "q.yaml", [T0 + i for i in range(4)], every=True)
    assert query_tool.main(["--script", str(script)]) == 2  # every-N without --frames
    assert "--frames" in capsys.readouterr().err
