"""One engine path: every task runs as a batch, and a query alone is a batch of one."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from region_perception.engine import RegionEngine, TaskError
from region_perception.engine.batch import BatchItem
from region_perception.geometry.regions import BoxRegion, PointsRegion

PACKAGE = Path(__file__).resolve().parents[1] / "region_perception"


def _private_engine_members() -> set[str]:
    return {name for name in vars(RegionEngine) if name.startswith("_") and not name.startswith("__")}


def test_nothing_outside_the_engine_calls_an_engine_private_helper():
    private = _private_engine_members()
    assert {"_features", "_refer_rows"} <= private  # kept for tests/test_batching.py, as thin delegates
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "engine" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in private and "engine" in ast.unparse(node.value):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {ast.unparse(node)}")
    assert found == []


def test_the_batch_path_imports_nothing_from_the_engine():
    tree = ast.parse((PACKAGE / "engine" / "batch.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "engine" not in imported and not any(m and m.endswith(".engine") for m in imported)


@pytest.fixture(scope="module")
def regiongpt_native():
    from region_perception.engine import EngineConfig

    config = EngineConfig(model="tiny-regiongpt", segmenter="none", device="cpu", refer_route="native")
    return RegionEngine.load(config)


def _same(got, alone):
    assert got.task == alone.task and got.selected_index == alone.selected_index
    assert [(o.text, o.box) for o in got.outputs] == [(o.text, o.box) for o in alone.outputs]
    np.testing.assert_allclose(got.candidate_scores, alone.candidate_scores, atol=1e-4)
    assert got.candidate_boxes == alone.candidate_boxes and got.notes == alone.notes


def test_a_batched_native_refer_on_a_comprehension_backend_answers_as_alone(regiongpt_native, astronaut):
    """Before the one engine path, the batch path sent it to ``refer_native`` and answered TaskError ("no referring
    segmentation of its own"), while the same query alone comprehended over the proposals."""
    engine = regiongpt_native
    image = astronaut[::4, ::4].copy()
    items = [
        BatchItem("refer", text="the white helmet"),  # the engine's route: native
        BatchItem("refer", text="the flag on the wall", route="native"),
        BatchItem("refer", text="the woman's face", route="proposals"),
        BatchItem("caption", regions=[PointsRegion(np.array([[40.0, 30.0]]))], max_new_tokens=3),
    ]
    results = engine.run_batch(image, items, frame_key="one-path-refer")
    assert not any(isinstance(r, Exception) for r in results), results
    for item, got in zip(items[:3], results[:3], strict=True):
        alone = engine.refer(image, item.text, frame_key="one-path-refer", route=item.route)
        _same(got, alone)
        assert got.selected_index >= 0 and len(got.candidate_scores) == len(got.candidate_boxes) > 0


def test_comprehend_is_a_batch_task_too(regiongpt_native, astronaut):
    engine = regiongpt_native
    image = astronaut[::4, ::4].copy()
    candidates = [BoxRegion(np.array([10.0, 10.0, 60.0, 60.0])), BoxRegion(np.array([60.0, 40.0, 120.0, 120.0]))]
    got, empty, unknown = engine.run_batch(
        image,
        [BatchItem("comprehend", candidates, "the helmet"), BatchItem("comprehend", [], "x"), BatchItem("dance")],
        frame_key="one-path-comprehend",
    )
    _same(got, engine.comprehend(image, "the helmet", candidates, frame_key="one-path-comprehend"))
    assert str(empty) == "comprehension needs at least one candidate region"
    assert isinstance(unknown, TaskError) and "unknown task 'dance'" in str(unknown)


def test_a_query_alone_is_a_batch_of_one_through_the_same_path(regiongpt_native, astronaut, monkeypatch):
    import region_perception.engine as engine_module

    engine = regiongpt_native
    seen = []
    real = engine_module.run_items

    def spy(eng, image, items, frame_key=None):
        seen.append([it.task for it in items])
        return real(eng, image, items, frame_key)

    monkeypatch.setattr(engine_module, "run_items", spy)
    monkeypatch.setattr(RegionEngine, "run_batch", lambda *a, **k: pytest.fail("a query alone used run_batch"))
    image = astronaut[::4, ::4].copy()
    region = [PointsRegion(np.array([[40.0, 30.0]]))]
    engine.caption(image, region, max_new_tokens=2)
    engine.ask(image, region, "what is it?", max_new_tokens=2, conversation_id="one-path")
    engine.ask(image, [], "and its colour?", max_new_tokens=2, conversation_id="one-path")
    engine.classify(image, region, ["person", "sky"], rank=True)
    engine.refer(image, "the helmet")
    engine.comprehend(image, "the helmet", region)
    assert seen == [["caption"], ["ask"], ["ask"], ["classify"], ["refer"], ["comprehend"]]
