"""``make bench`` writes docs/benchmarks.md from the report: every section the bench measured is on the page."""

from __future__ import annotations

from region_perception.bench.engine import to_markdown


def _section(model: str, title: str | None = None, value: float = 1.0) -> dict:
    figure = {"name": f"{model}_figure", "value": value, "unit": "ms", "goal": "", "met": None, "detail": {"n": 3}}
    return {"model": model, "figures": [figure], **({"title": title} if title else {})}


def test_every_measured_section_is_on_the_page():
    report = {
        "machine": {"cpu": "cpu", "cores": 2, "cuda": False, "torch": "t", "python": "p", "date": "d", "commit": "c"},
        "seconds": 1.0,
        "engine": [_section("eng", value=1.5) | {"load_s": 0.1}],
        "node": [_section("nod", value=2.5)],
        "depth3d": [_section("dep", "3D step")],
        "segmenter": [_section("seg", "Segmenter: toy-sam")],
        "follow": [_section("fol", "Following objects"), _section("fnode", "Node while following 3 objects")],
    }
    page = to_markdown(report)
    for title in ("eng (engine)", "nod (node)", "3D step", "Segmenter: toy-sam", "Following objects",
                  "Node while following 3 objects"):
        assert f"## {title}\n" in page, title
    for name in ("eng", "nod", "dep", "seg", "fol", "fnode"):
        assert f"| {name}_figure |" in page, name
    assert page.index("## Following objects") < page.index("## Node while following")
