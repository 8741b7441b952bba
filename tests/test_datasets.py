"""The synthetic region world and the dataset loaders (COCO, refer-toolkit pickles, Visual Genome)."""

from __future__ import annotations

import hashlib
import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from region_perception.datasets import UnsafePickleError, load_dataset, load_refs_pickle, mask_to_rle
from region_perception.datasets import synthetic as syn


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return syn.generate(tmp_path_factory.mktemp("syn") / "world", images=40, seed=3)


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic_for_a_seed(tmp_path, world):
    again = syn.generate(tmp_path / "again", images=40, seed=3)
    other = syn.generate(tmp_path / "other", images=40, seed=4)
    assert _digest(again) == _digest(world)
    assert _digest(other) != _digest(world)


def test_files_load_with_pycocotools_and_match_the_masks(world):
    from pycocotools.coco import COCO

    for split in ("train", "val"):
        coco = COCO(str(world / f"instances_{split}.json"))
        ds = load_dataset(world, split)
        assert len(coco.getImgIds()) == len(ds.images) > 0
        assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == set(syn.SHAPES)
        for s in ds.samples[:20]:
            ann = coco.loadAnns(s.ann_id)[0]
            m = coco.annToMask(ann).astype(bool)
            assert np.array_equal(m, s.mask())
            assert ann["area"] == m.sum() > 0
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(m)
            assert (x, y, x + w - 1, y + h - 1) == (xs.min(), ys.min(), xs.max(), ys.max())
            assert ann["attributes"]["shape"] == s.category == ann_category(coco, ann)
            assert s.attributes["color"] in syn.COLORS and s.attributes["size"] in syn.SIZES
    train, val = load_dataset(world, "train"), load_dataset(world, "val")
    assert not set(train.images) & set(val.images)
    assert len(train.images) + len(val.images) == 40


def ann_category(coco, ann) -> str:
    return coco.loadCats(ann["category_id"])[0]["name"]


def test_every_expression_denotes_exactly_one_object(world):
    meta = json.loads((world / "synthetic.json").read_text())
    for split in ("train", "val"):
        refs = json.loads((world / f"refs_{split}.json").read_text())
        geometry = {a["id"]: a["geometry"]
                    for a in json.loads((world / f"instances_{split}.json").read_text())["annotations"]}
        ds = load_dataset(world, split)
        assert refs and all({"ref_id", "ann_id", "image_id", "split", "sentences", "category_id"} <= set(r)
                            for r in refs)
        for image_id in ds.images:
            samples = ds.samples_of(image_id)
            objects = [_as_object(s, geometry[s.ann_id]) for s in samples]
            for k, s in enumerate(samples):
                for _, sent in s.refs:
                    assert syn.resolve(sent, objects, meta["size"]) == [k], sent
    # the three forms the issue names all occur
    sentences = [sent for s in load_dataset(world, "train").samples for _, sent in s.refs]
    assert any(" of the " in t for t in sentences)
    assert any(t.startswith("the larger ") or t.startswith("the smaller ") for t in sentences)
    assert any(len(t.split()) == 3 and t.split()[1] in syn.COLORS for t in sentences)


def _as_object(sample, geometry: dict) -> syn.SceneObject:
    """The scene object rebuilt from the files alone."""
    a = sample.attributes
    return syn.SceneObject(a["color"], a["shape"], a["size"], tuple(geometry["center"]), geometry["radius"],
                           sample.mask(), sample.bbox)


def test_expressions_on_an_explicit_scene():
    image, objects = syn.scene([("red", "circle", (30, 64), 10), ("red", "circle", (98, 64), 20),
                                ("yellow", "triangle", (64, 30), 12), ("blue", "square", (64, 100), 12)])
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    assert tuple(image[64, 98]) != tuple(image[5, 5])  # the object is drawn
    small = syn.expressions(0, objects)
    assert "the smaller circle" in small and "the red circle" not in small
    assert syn.resolve("the circle left of the yellow triangle", objects) == [0]
    assert syn.resolve("the circle right of the triangle", objects) == [1]
    assert syn.resolve("the circle", objects) == [0, 1]
    assert syn.resolve("the larger circle", objects) == [1]
    assert syn.resolve("the triangle above the blue square", objects) == [2]
    for k in range(len(objects)):
        for sent in syn.expressions(k, objects):
            assert syn.resolve(sent, objects) == [k]
    assert syn.caption(objects[1]) == "a large red circle"
    with pytest.raises(ValueError, match="unknown colour"):
        syn.scene([("pink", "circle", (30, 30), 10)])


def test_vocabulary_lists_every_word(world):
    words = set(syn.VOCABULARY)
    for split in ("train", "val"):
        ds = load_dataset(world, split)
        for s in ds.samples:
            for text in s.captions + [t for _, t in s.refs]:
                assert set(text.split()) <= words, text
    assert set(syn.COLORS) | set(syn.SHAPES) <= words


def test_render_scene_objects_and_occlusion():
    rng = np.random.default_rng(0)
    counts = []
    for _ in range(30):
        image, objects = syn.render_scene(rng, 96)
        assert image.shape == (96, 96, 3)
        assert 2 <= len(objects) <= 6
        counts.append(len(objects))
        union = np.zeros((96, 96), dtype=int)
        for o in objects:
            assert o.mask.any() and o["shape"] in syn.SHAPES
            union += o.mask
        assert union.max() == 1  # visible masks never overlap
    assert len(set(counts)) > 2


def test_generate_refuses_to_overwrite(tmp_path, world):
    with pytest.raises(FileExistsError, match="overwrite"):
        syn.generate(world, images=2)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a synthetic"):
        syn.generate(foreign, images=2, overwrite=True)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_cli_writes_and_refuses(tmp_path):
    out = tmp_path / "w"
    cmd = [sys.executable, "-m", "region_perception.cli", "dataset", "synthetic", "--out", str(out), "--images", "3",
           "--json"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["images"] == 3
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert second.returncode == 2
    assert second.stderr.strip().count("\n") == 0 and "overwrite" in second.stderr
    bad = subprocess.run([sys.executable, "-m", "region_perception.cli", "dataset", "info", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no dataset" in bad.stderr


# ---------------------------------------------------------------- real-format fixtures


def _coco_fixture(root: Path) -> dict:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "images" / "a.png")
    mask = np.zeros((20, 30), bool)
    mask[5:10, 2:12] = True
    return {
        "images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20}],
        "annotations": [
            {"id": 70, "image_id": 7, "category_id": 3, "bbox": [2, 5, 10, 5], "area": 50, "iscrowd": 0,
             "segmentation": mask_to_rle(mask)},
            {"id": 71, "image_id": 7, "category_id": 1, "bbox": [15, 2, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[15, 2, 19, 2, 19, 6, 15, 6]]},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}],
    }


def test_coco_2017_layout(tmp_path):
    root = tmp_path / "coco"
    coco = _coco_fixture(root)
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(coco))
    ds = load_dataset(root, "val")  # finds val2017
    assert ds.split == "val2017" and ds.categories == ["cat", "dog"]
    dog, cat = ds.samples
    assert (dog.category, cat.category) == ("dog", "cat")
    assert dog.mask().sum() == 50 and cat.mask()[3, 16]
    assert ds.read_image(7).shape == (20, 30, 3)


def test_refcoco_pickle_and_split(tmp_path):
    root = tmp_path / "refcoco"
    coco = _coco_fixture(root)
    (root / "instances.json").write_text(json.dumps(coco))
    refs = [
        {"ref_id": 1, "ann_id": 70, "image_id": 7, "split": "val", "category_id": 3, "sent_ids": [10, 11],
         "sentences": [{"sent": "left dog", "sent_id": 10, "tokens": ["left", "dog"]},
                       {"sent": "the dog", "sent_id": 11, "tokens": ["the", "dog"]}]},
        {"ref_id": 2, "ann_id": 71, "image_id": 7, "split": "testA", "category_id": 1, "sent_ids": [12],
         "sentences": [{"sent": "small cat", "sent_id": 12, "tokens": ["small", "cat"]}]},
    ]
    (root / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    val = load_dataset(root, "val")
    assert [(s.ann_id, s.refs) for s in val.samples] == [(70, [(1, "left dog"), (1, "the dog")])]
    assert val.samples[0].captions == ["left dog", "the dog"] and val.category_ids == {1: "cat", 3: "dog"}
    assert [s.ann_id for s in load_dataset(root, "testA").samples] == [71]
    with pytest.raises(ValueError, match="splits present"):
        load_dataset(root, "testB")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_refs_pickle_is_refused(tmp_path, capsys):
    path = tmp_path / "refs(unc).p"
    path.write_bytes(pickle.dumps([{"ref_id": 1, "payload": _Evil()}]))
    with pytest.raises(UnsafePickleError, match=r"builtins\.print"):
        load_refs_pickle(path)
    assert "pwned" not in capsys.readouterr().out
    path.write_bytes(pickle.dumps([{"ref_id": np.int64(1)}]))  # numpy scalars are objects too: refused
    with pytest.raises(UnsafePickleError, match="numpy"):
        load_refs_pickle(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a readable refs pickle"):
        load_refs_pickle(path)


def test_visual_genome_regions(tmp_path):
    root = tmp_path / "vg"
    root.mkdir()
    (root / "region_descriptions.json").write_text(json.dumps([
        {"id": 5, "regions": [{"region_id": 50, "image_id": 5, "phrase": "a red kite ", "x": 1, "y": 2,
                               "width": 10, "height": 4}]},
    ]))
    (root / "image_data.json").write_text(json.dumps([{"image_id": 5, "width": 40, "height": 30}]))
    ds = load_dataset(root, "val")
    (s,) = ds.samples
    assert s.captions == ["a red kite"] and s.bbox == (1.0, 2.0, 10.0, 4.0)
    assert s.mask().sum() == pytest.approx(40, abs=15)


def test_unknown_directory_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no dataset for split"):
        load_dataset(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_dataset(tmp_path / "nope")
