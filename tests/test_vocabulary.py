"""Snapping free text onto a vocabulary with the packaged all-MiniLM-L6-v2, offline."""

from __future__ import annotations

import numpy as np
import pytest

from region_perception.engine.vocabulary import VocabularySnapper, softmax
from region_perception.models.backend import labels_hint
from region_perception.service.config_file import read_vocabulary, vocabulary_display_name

COCO = read_vocabulary("coco80")


@pytest.fixture(scope="module")
def snapper():
    return VocabularySnapper()


@pytest.mark.parametrize(
    ("word", "label"),
    [
        ("aircraft", "airplane"),
        ("automobile", "car"),
        ("sofa", "couch"),
        ("television", "tv"),
        ("motorbike", "motorcycle"),
        ("cellphone", "cell phone"),
        ("puppy", "dog"),
        ("ball", "sports ball"),
    ],
)
def test_synonyms_snap_onto_coco80(snapper, word, label):
    snap = snapper.snap(word, COCO)
    assert snap.label == label, snap.labels[:5]
    assert sorted(snap.labels) == sorted(COCO) and snap.similarities == sorted(snap.similarities, reverse=True)


def test_exact_and_empty_answers_stay_in_the_vocabulary(snapper):
    assert snapper.snap("Cell Phone", COCO).label == "cell phone"
    assert snapper.snap("", ["cat", "dog"]).label in {"cat", "dog"}
    assert snapper.snap("wearing wearing wearing", ["cat", "dog"]).label in {"cat", "dog"}


def test_vocabulary_and_prompt_hint():
    assert len(COCO) == 80 and COCO[0] == "person" and "hair drier" in COCO
    assert labels_hint(COCO, vocabulary_display_name("coco80")) == "COCO-80 category names"
    assert labels_hint(["a", "b"]) == "one of these names: a, b"
    probs = softmax(np.array([0.9, 0.5, 0.1]), 0.05)
    assert abs(probs.sum() - 1) < 1e-9 and probs[0] > 0.99
