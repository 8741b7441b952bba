"""Warm-up at activation: the first answer of each task is as fast as the next, and warming leaves no trace.

Nothing here times anything: the tests check what was loaded and exercised, that the
feature cache and the processor's counters are untouched, and, with the warm-up held by
the test, that a node served by an executor answers at once ("warming up") while it warms.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from .helpers.in_process_node import InProcessNodes
from .helpers.waiting import wait_until

LONG = 120.0  # generous: loading a tiny model on a busy 2-core machine


@pytest.fixture(scope="module")
def engine():
    from region_perception.engine import EngineConfig, RegionEngine

    return RegionEngine.load(
        EngineConfig(model="tiny-regionvlm", segmenter="tiny-sam", proposals="superpixels", device="cpu")
    )


def test_engine_warm_up_exercises_every_task_and_leaves_no_trace(engine):
    labels = [" person", "cup", "cup", "bottle "]
    hits, misses = engine.cache.hits, engine.cache.misses
    before = len(engine.cache)
    spent = engine.warm_up((120, 160), labels)
    assert {"snap_model", "caption", "classify", "refer", "ask", "total"} <= set(spent)
    assert all(spent[k] >= 0 for k in ("snap_model", "caption", "classify", "ask", "total"))
    assert len(engine.cache) == before and (engine.cache.hits, engine.cache.misses) == (hits, misses)
    # the vocabulary's embeddings are ready under the key a CLASSIFY with these labels looks up
    assert ("person", "cup", "bottle") in engine.snapper._labels
    assert not engine.conversations._items


def test_engine_warm_up_skips_ask_for_a_model_that_does_not_answer_questions(engine, monkeypatch):
    monkeypatch.setattr(engine.model, "answers_questions", False, raising=False)
    spent = engine.warm_up((96, 128), ["person"])
    assert "ask" not in spent and "caption" in spent


# -- the node --------------------------------------------------------------------------------


@pytest.fixture()
def make_node():
    """A node in this process (tiny model), its results and diagnostics captured; shut down after the test."""
    nodes = InProcessNodes(model="tiny-regionvlm", max_new_tokens=2)
    yield nodes.make
    nodes.close()


def diagnostics(node) -> tuple[str, dict[str, str]]:
    node._publish_diagnostics()
    status = node.diagnostics[-1].status[0]
    return status.message, {kv.key: kv.value for kv in status.values}


def add_frame(node, h=96, w=128) -> None:
    from region_perception.ros.image_conversion import array_to_image_msg

    msg = array_to_image_msg(np.full((h, w, 3), 120, np.uint8), "rgb8")
    msg.header.stamp = node.get_clock().now().to_msg()
    node._on_image(msg)


def caption_query(qid: str):
    from geometry_msgs.msg import Point32

    from region_perception.msg import Region, RegionQuery

    region = Region(kind=Region.POINTS, points=[Point32(x=20.0, y=20.0)])
    return RegionQuery(query_id=qid, task=RegionQuery.CAPTION, regions=[region])


def test_activation_at_start_warms_up_before_it_returns_at_the_camera_size(make_node, monkeypatch):
    """Not yet served by an executor (the program's own start): activate returns warm."""
    from region_perception.engine import RegionEngine

    sizes = []
    real = RegionEngine.warm_up

    def spy(self, image_size, labels=None, vocabulary_name=""):
        sizes.append((tuple(image_size), len(labels or [])))
        return real(self, image_size, labels, vocabulary_name)

    monkeypatch.setattr(RegionEngine, "warm_up", spy)
    node = make_node()
    add_frame(node, 96, 128)  # the camera's size: the newest buffered frame
    node.trigger_activate()
    assert sizes == [((96, 128), 80)]  # coco80, the default vocabulary
    assert node.warmup_ms is not None and not node._warming.is_set() and node._warm_thread is None
    message, values = diagnostics(node)
    assert message == "ok" and float(values["warmup_ms"]) > 0 and float(values["activate_ms"]) >= node.warmup_ms
    proc = node.processor
    assert sum(proc.answered.values()) == 0 and not proc.latencies_ms and len(node.engine.cache) == 0
    assert values["feature_cache_hits"] == "0"


def test_a_served_node_answers_at_once_while_it_warms_then_normally(make_node, monkeypatch):
    from region_perception.engine import RegionEngine
    from region_perception.msg import RegionResult
    from region_perception.ros.spin import make_executor, spin_in_background

    entered, release = threading.Event(), threading.Event()

    def held(self, image_size, labels=None, vocabulary_name=""):
        entered.set()
        assert release.wait(LONG), "the test never released the warm-up"
        return {"total": 1.0}

    monkeypatch.setattr(RegionEngine, "warm_up", held)
    node = make_node()
    executor = make_executor(node.context)
    executor.add_node(node)
    stop, thread = spin_in_background(executor, "warm-up-test")
    try:
        assert wait_until(lambda: node._served), "the executor never served the node"
        add_frame(node)
        node.trigger_activate()  # returns while the warm-up is held: it runs on its own thread
        assert entered.wait(LONG) and node._warming.is_set() and node._active
        message, values = diagnostics(node)
        assert message.startswith("warming up") and values["warmup_ms"] == ""
        node._on_query(caption_query("early"))
        early = [r for r in node.published if r.query_id == "early"]
        assert len(early) == 1 and early[0].status == RegionResult.MODEL_ERROR and "warming up" in early[0].error
        assert sum(node.processor.answered.values()) == 0  # answered by the node, not counted as the model's
        release.set()
        assert wait_until(lambda: not node._warming.is_set())
        assert node.warmup_ms is not None
        add_frame(node)
        node._on_query(caption_query("later"))
        assert wait_until(lambda: any(r.query_id == "later" for r in node.published))
        later = [r for r in node.published if r.query_id == "later"]
        assert len(later) == 1 and later[0].status == RegionResult.OK, later[0].error
        assert diagnostics(node)[0] == "ok"
    finally:
        release.set()
        stop.set()
        thread.join(timeout=10)
        executor.shutdown(timeout_sec=1.0)


def test_warm_up_false_activates_cold(make_node, monkeypatch):
    from region_perception.engine import RegionEngine

    called = []
    monkeypatch.setattr(RegionEngine, "warm_up", lambda self, *a, **k: called.append(a) or {})
    node = make_node(warm_up=False)
    node.trigger_activate()
    assert node._active and called == [] and node.warmup_ms is None
    message, values = diagnostics(node)
    assert message == "ok" and values["warmup_ms"] == "" and values["activate_ms"] != ""


def test_a_testing_aid_model_is_not_warmed(make_node, monkeypatch):
    """``fault_every`` counts model calls: a warm-up would shift which query fails."""
    from region_perception.engine import RegionEngine

    called = []
    monkeypatch.setattr(RegionEngine, "warm_up", lambda self, *a, **k: called.append(a) or {})
    node = make_node(fault_every=3)
    node.trigger_activate()
    assert node._active and called == [] and node.warmup_ms is None


# -- the node drains its query subscription: a burst reaches the worker as one group -------------


def test_take_query_takes_what_the_subscription_holds(make_node):
    """The rclpy call the drain makes, on a real subscription: each held message once, then None."""
    from region_perception.msg import RegionQuery

    node = make_node(warm_up=False)
    assert node._take_query() is None
    pub = node.create_publisher(RegionQuery, "region_queries", 10)
    for i in range(3):
        pub.publish(RegionQuery(query_id=f"held-{i}"))
    taken = []

    def collect() -> bool:
        msg = node._take_query()
        if msg is not None:
            taken.append(msg.query_id)
        return len(taken) >= 3

    assert wait_until(collect), f"the subscription gave {taken}"
    assert taken == ["held-0", "held-1", "held-2"] and node._take_query() is None


def test_on_query_submits_what_it_drains_as_one_group(make_node, monkeypatch):
    node = make_node(warm_up=False)
    node.trigger_activate()
    add_frame(node)
    held = [caption_query(f"more-{i}") for i in range(4)]
    monkeypatch.setattr(node, "_take_query", lambda: held.pop(0) if held else None)
    groups = []
    real = node.processor.submit_group
    monkeypatch.setattr(node.processor, "submit_group", lambda specs: groups.append(len(specs)) or real(specs))
    node._on_query(caption_query("first"))
    assert groups == [5]
    assert wait_until(lambda: len(node.published) >= 5)
    assert sorted(r.query_id for r in node.published) == ["first", *[f"more-{i}" for i in range(4)]]
