"""The package's default segmenter: SAM ViT-B (``facebook/sam-vit-base``) from the hub, through transformers.

On a connected robot it is downloaded on first use, pinned by ``segmenter_revision`` (the loaded commit is
reported) and fetched by ``models --download`` with the model. Where nobody chose a segmenter and the hub cannot be
reached with nothing cached, the engine runs with NO segmenter, loudly (a warning, a banner, and the fallback in
every result's and /diagnostics' ``settings``), never with random weights; a segmenter someone named stays an error.

The hub route talks to a real HTTP hub on loopback (``region_perception.testing.hub``) serving a tiny transformers
SamModel with RANDOM weights (marked so: whatever loads it says ``weights_random``) under ``facebook/sam-vit-base``,
through processes with a fresh HF_HOME and HF_ENDPOINT, as tests/test_hub_download.py does.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from region_perception.common.feature_cache import FeatureCache
from region_perception.common.timing import Timings
from region_perception.engine import RegionEngine, UserSettings
from region_perception.engine.settings import FALLBACK, source_lines
from region_perception.geometry.regions import BoxRegion, PointsRegion, region_mask
from region_perception.models.loading import load_segmenter, load_segmenter_or_none
from region_perception.models.registry import DEFAULT_SEGMENTER
from region_perception.models.sam import SuperpixelProposer, TransformersSamSegmenter, build_tiny_hf_sam
from region_perception.models.sources import ModelLoadError
from region_perception.models.toy import toy_path
from region_perception.testing.hub import DEFAULT_SEGMENTER_REPO, Hub, add_tiny_repos

from .conftest import REPO
from .test_hub_download import hub_env

CPU = torch.device("cpu")
FLORENCE = "florence-community/Florence-2-base"
FALLBACK_LINE = f"segmenter=none ({FALLBACK}: {DEFAULT_SEGMENTER}: no_network)"
SIZE = (96, 128)
CLICK = np.array([[60.0, 50.0]])
BOX = np.array([40.0, 30.0, 90.0, 70.0])


def scene() -> np.ndarray:
    image = np.full((*SIZE, 3), 120, np.uint8)
    image[30:70, 40:90] = (200, 40, 40)
    image[10:30, 95:120] = (40, 60, 220)
    return image


@pytest.fixture(scope="module")
def plain_toy(tmp_path_factory) -> Path:
    """toy-regionvlm (trained weights) without a segmenter of its own: the package default segmenter applies."""
    out = tmp_path_factory.mktemp("plain") / "toy"
    shutil.copytree(toy_path("toy-regionvlm"), out)
    meta = json.loads((out / "region_perception.json").read_text())
    meta["settings"] = {k: v for k, v in meta["settings"].items()
                        if k not in ("segmenter", "proposals") and not k.startswith("proposal_filter")}
    (out / "region_perception.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def tiny_hf_sam(tmp_path_factory) -> Path:
    return build_tiny_hf_sam(tmp_path_factory.mktemp("hfsam") / "sam")


@pytest.fixture()
def nothing_cached(monkeypatch, tmp_path):
    """An empty huggingface_hub cache, whatever this machine has cached (HF_HUB_OFFLINE=1: conftest)."""
    import huggingface_hub.constants

    assert huggingface_hub.constants.HF_HUB_OFFLINE
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))


@pytest.fixture()
def no_sockets(monkeypatch):
    """Any network connection attempt fails the test."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"a network connection was attempted: {args!r}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


# -- offline, nothing cached: no segmenter, said loudly --------------------------------------------------------


def test_offline_the_default_runs_without_a_segmenter_and_says_so(plain_toy, nothing_cached, no_sockets, capsys,
                                                                  caplog):
    engine = RegionEngine.load(UserSettings(command_line={"model": str(plain_toy), "device": "cpu"}))
    assert no_sockets == [], "offline, the fallback asks nothing of the network"
    assert engine.segmenter is None and isinstance(engine.proposer, SuperpixelProposer)
    assert engine.config.segmenter == "none" and engine.segmenter_fallback == f"{DEFAULT_SEGMENTER}: no_network"
    assert engine.settings["segmenter"] == {"value": "none", "from": FALLBACK, "instead_of": DEFAULT_SEGMENTER,
                                            "why": f"{DEFAULT_SEGMENTER}: no_network"}
    assert "proposals" not in engine.settings  # superpixels already: nothing else changed
    assert not engine.weights_random, "no random SAM anywhere"
    err = capsys.readouterr().err
    assert "RUNNING WITHOUT A SEGMENTER" in err and "RANDOM" not in err
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "region_perception"]
    assert any("RUNNING WITHOUT A SEGMENTER" in r.getMessage() and "(no_network)" in r.getMessage()
               for r in warnings)

    image = scene()
    result = engine.caption(image, [PointsRegion(CLICK), BoxRegion(BOX)], max_new_tokens=3)
    click, box = result.outputs
    assert np.array_equal(click.mask, region_mask(PointsRegion(CLICK), SIZE)), "a click is a small disk"
    assert np.array_equal(box.mask, region_mask(BoxRegion(BOX), SIZE)), "a box is its own mask"
    assert result.weights_random is False and FALLBACK_LINE in source_lines(result.settings)
    assert result.to_json()["settings"]["segmenter"]["from"] == FALLBACK


def test_offline_sam_proposals_become_superpixels(plain_toy, nothing_cached, no_sockets):
    user = UserSettings(command_line={"model": str(plain_toy), "device": "cpu"}, config={"proposals": "sam"})
    engine = RegionEngine.load(user)
    assert engine.segmenter is None and isinstance(engine.proposer, SuperpixelProposer)
    assert engine.config.proposals == "superpixels"
    assert engine.settings["proposals"] == {"value": "superpixels", "from": FALLBACK, "instead_of": "sam",
                                            "why": f"{DEFAULT_SEGMENTER}: no_network"}
    result = engine.refer(scene(), "the red square")
    assert result.outputs[0].mask.any() and result.selected_index >= 0
    assert no_sockets == []


def test_the_offline_fallback_makes_no_request_and_waits_for_nothing(nothing_cached, no_sockets, monkeypatch):
    from region_perception.models import fetch

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(fetch, "_download", no_download)
    segmenter, fallback = load_segmenter_or_none(DEFAULT_SEGMENTER, "auto", FeatureCache(1), CPU, chosen=False)
    assert segmenter is None and fallback.reason == "no_network" and str(fallback) == f"{DEFAULT_SEGMENTER}: no_network"
    assert no_sockets == []


@pytest.mark.parametrize(
    ("level", "values", "reason"),
    [
        ("command line", {"segmenter": DEFAULT_SEGMENTER}, "no_network"),  # named, even as the default's name
        ("config", {"segmenter": "facebook/sam-vit-large"}, "no_network"),
        ("config", {"segmenter_revision": "v1"}, "no_network"),  # the default pinned: exactly that one was asked for
        ("command line", {"segmenter": "/nonexistent/sam"}, "not_found_local"),
    ],
)
def test_a_segmenter_someone_chose_that_cannot_be_loaded_is_an_error(plain_toy, nothing_cached, capsys, level,
                                                                     values, reason):
    command_line = {"model": str(plain_toy), "device": "cpu", **(values if level == "command line" else {})}
    user = UserSettings(command_line=command_line, config=values if level == "config" else {})
    with pytest.raises(ModelLoadError) as info:
        RegionEngine.load(user)
    assert info.value.what == "segmenter" and info.value.reason == reason
    assert "RUNNING WITHOUT A SEGMENTER" not in capsys.readouterr().err


def test_the_cli_json_says_the_segmenter_fell_back(plain_toy, child_env, tmp_path):
    import cv2

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), cv2.cvtColor(scene(), cv2.COLOR_RGB2BGR))
    env = {k: v for k, v in child_env.items() if not k.startswith("HF_")}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "region_perception.cli", "describe", str(image), "--points",
                           "60,50", "--model", str(plain_toy), "--config", str(REPO / "config" / "default.yaml"),
                           "--max-new-tokens", "3", "--json"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["settings"]["segmenter"] == {"value": "none", "from": FALLBACK, "instead_of": DEFAULT_SEGMENTER,
                                            "why": f"{DEFAULT_SEGMENTER}: no_network"}
    assert out["weights_random"] is False and "RANDOM" not in proc.stderr
    assert out["outputs"][0]["mask_area"] == int(region_mask(PointsRegion(CLICK), SIZE).sum())
    assert "WARNING" in proc.stderr and "RUNNING WITHOUT A SEGMENTER" in proc.stderr


# -- the transformers SAM itself: clicks, boxes, proposals -------------------------------------------------------


def test_the_transformers_sam_answers_clicks_boxes_and_proposals_from_one_embedding(tiny_hf_sam):
    seg = load_segmenter(str(tiny_hf_sam), "auto", FeatureCache(2), CPU)  # auto: config.json says model_type sam
    assert isinstance(seg, TransformersSamSegmenter) and seg.weights_random, "random weights, labelled as such"
    encoded, multimask = [], []
    seg.model.vision_encoder.register_forward_hook(lambda *a: encoded.append(1))
    forward = seg.model.forward

    def recording(*args, **kwargs):
        multimask.append(kwargs.get("multimask_output"))
        return forward(*args, **kwargs)

    seg.model.forward = recording
    image = scene()
    click = seg.segment("k", image, points=CLICK)
    clicks = seg.segment("k", image, points=np.array([[60.0, 50.0], [100.0, 20.0]]), labels=np.array([1, 0]))
    box = seg.segment("k", image, box=BOX)
    for mask in (click, clicks, box):
        assert mask.shape == SIZE and mask.dtype == bool
    assert multimask == [True, False, False], "one click: the best of three masks; several prompts: one mask"
    proposals = seg.propose("k", image)
    assert proposals.masks and all(m.shape == SIZE for m in proposals.masks)
    assert len(proposals.scores) == len(proposals.masks)
    assert len(encoded) == 1, "the frame is encoded once for clicks, boxes and proposals"
    with pytest.raises(ModelLoadError, match="hf-sam or auto") as info:
        load_segmenter(str(tiny_hf_sam), "sam", FeatureCache(1), CPU)
    assert info.value.reason == "unknown_architecture"


def test_the_transformers_sam_reads_the_previous_answer_as_its_mask_prompt(tiny_hf_sam):
    seg = load_segmenter(str(tiny_hf_sam), "hf-sam", FeatureCache(2), CPU)
    image = scene()
    mask, logits = seg.segment_interactive("k", image, points=CLICK, labels=np.ones(1), prior=None)
    assert mask.shape == SIZE and logits.ndim == 2
    clicks = np.array([[60.0, 50.0], [100.0, 20.0]])
    _, warm = seg.segment_interactive("k", image, points=clicks, labels=np.array([1, 0]), prior=logits)
    _, cold = seg.segment_interactive("k", image, points=clicks, labels=np.array([1, 0]), prior=None)
    assert warm.shape == logits.shape and not np.allclose(warm, cold)


def test_auto_loads_a_segment_anything_sam_through_segment_anything():
    from region_perception.models.sam import SegmentAnythingSegmenter

    assert isinstance(load_segmenter("tiny-sam", "auto", FeatureCache(1), CPU), SegmentAnythingSegmenter)


def test_the_engine_sends_clicks_boxes_and_proposals_through_the_transformers_sam(tiny_hf_sam, plain_toy):
    user = UserSettings(command_line={"model": str(plain_toy), "device": "cpu", "segmenter": str(tiny_hf_sam),
                                      "proposals": "sam"})
    engine = RegionEngine.load(user)
    assert isinstance(engine.segmenter, TransformersSamSegmenter) and engine.proposer is engine.segmenter
    assert engine.weights_random and not engine.segmenter_fallback  # a random SAM someone named: labelled
    image = scene()
    result = engine.caption(image, [PointsRegion(CLICK), BoxRegion(BOX)], max_new_tokens=3, frame_key="f")
    assert np.array_equal(result.outputs[0].mask, engine.segmenter.segment("f", image, points=CLICK))
    assert np.array_equal(result.outputs[1].mask, engine.segmenter.segment("f", image, box=BOX))
    assert not np.array_equal(result.outputs[0].mask, region_mask(PointsRegion(CLICK), SIZE))
    assert result.weights_random and any("RANDOM WEIGHTS" in n for n in result.notes)
    refer = engine.refer(image, "the red square", frame_key="f")
    proposals = engine.proposals(image, "f", Timings())  # the frame's, cached by REFER: the segmenter's masks
    assert len(refer.candidate_scores) == len(proposals) >= 1


# -- the hub: downloaded, pinned, reported, then offline from the cache ----------------------------------------

ENGINE_SCRIPT = r"""
import json, sys
import numpy as np
from region_perception.engine import RegionEngine, UserSettings
from region_perception.geometry.regions import PointsRegion
from region_perception.service.config_file import engine_values, load_parameters

args = json.loads(sys.argv[1])
config = engine_values(load_parameters(args["config_file"])) if args.get("config_file") else {}
engine = RegionEngine.load(UserSettings(command_line=args.get("command_line", {}), config=config))
seg = engine.segmenter
image = np.full((96, 128, 3), 120, np.uint8)
image[30:70, 40:90] = (200, 40, 40)
result = engine.caption(image, [PointsRegion(np.array([[60.0, 50.0]]))], max_new_tokens=2)
print(json.dumps({
    "segmenter": seg.name if seg is not None else "none", "kind": type(seg).__name__,
    "commit": getattr(seg, "commit", ""), "revision": getattr(seg, "revision", ""),
    "segmenter_random": bool(seg is not None and seg.weights_random), "fallback": engine.segmenter_fallback,
    "settings": result.settings, "weights_random": result.weights_random, "model": result.model,
    "mask_area": int(result.outputs[0].mask.sum()),
}))
"""


def run_engine(env: dict[str, str], **args) -> dict:
    proc = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "stderr": proc.stderr}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "region_perception.cli", *args], env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture()
def hub():
    """The loopback hub serving the tiny random SamModel as facebook/sam-vit-base."""
    with Hub() as h:
        add_tiny_repos(h, [DEFAULT_SEGMENTER_REPO])
        yield h


def test_first_run_downloads_the_default_sam_and_reports_its_commit_then_offline_loads_it_with_no_request(
    hub, child_env, tmp_path, plain_toy
):
    assert DEFAULT_SEGMENTER_REPO == DEFAULT_SEGMENTER
    commit = hub.repos[DEFAULT_SEGMENTER].refs["main"]
    model = {"model": str(plain_toy), "device": "cpu"}
    first = run_engine(hub_env(child_env, tmp_path, hub), command_line=model)
    assert (first["segmenter"], first["kind"], first["commit"]) == (DEFAULT_SEGMENTER, "TransformersSamSegmenter",
                                                                    commit)
    assert first["fallback"] == "" and "segmenter" not in first["settings"]
    assert first["segmenter_random"] and first["weights_random"], "the served SAM's random weights are labelled"
    assert f"fetching segmenter {DEFAULT_SEGMENTER}@{commit}" in first["stderr"]
    assert any(r.path.startswith("/cdn/") for r in hub.requests), "the weights came through the hub's CDN"
    assert first["mask_area"] != int(region_mask(PointsRegion(CLICK), SIZE).sum()), "the click went through SAM"

    hub.stop()  # the robot leaves the network: the cached revision loads with no request
    mark = hub.mark()
    second = run_engine(hub_env(child_env, tmp_path, hub, offline=True), command_line=model)
    assert (second["commit"], second["fallback"], second["mask_area"]) == (commit, "", first["mask_area"])
    assert hub.requests_since(mark) == []


def test_segmenter_revision_pins_a_commit(hub, child_env, tmp_path, plain_toy):
    from region_perception.testing.hub import tiny_repo_directory

    first = hub.repos[DEFAULT_SEGMENTER].refs["main"]
    directory = tiny_repo_directory("tiny-hf-sam")
    config = json.loads((directory / "config.json").read_text())
    second = hub.add_repo(DEFAULT_SEGMENTER, directory, tags=("v2",),
                          overrides={"config.json": json.dumps({**config, "test_marker": "v2"}).encode()})
    assert second != first and hub.repos[DEFAULT_SEGMENTER].refs["main"] == second
    env = hub_env(child_env, tmp_path, hub)
    model = {"model": str(plain_toy), "device": "cpu"}
    pinned = run_engine(env, command_line={**model, "segmenter_revision": first})
    assert (pinned["commit"], pinned["revision"]) == (first, first)
    assert pinned["settings"]["segmenter_revision"] == {"value": first, "from": "command line"}
    newest = run_engine(env, command_line=model)
    assert newest["commit"] == second
    # offline, a pinned revision that is not cached is an error (the user chose exactly it), never a fallback
    hub.stop()
    proc = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT, json.dumps({"command_line": {
        **model, "segmenter_revision": "v3"}})], env=hub_env(child_env, tmp_path, hub, offline=True),
        capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "(no_network)" in proc.stderr and "RUNNING WITHOUT" not in proc.stderr


def test_models_download_prefetches_the_default_sam_with_the_model(child_env, tmp_path):
    with Hub() as hub:
        add_tiny_repos(hub, [FLORENCE, DEFAULT_SEGMENTER_REPO])
        target = tmp_path / "robot-models"
        default_yaml = str(REPO / "config" / "default.yaml")
        fetched = cli(hub_env(child_env, tmp_path, hub), "models", "--download", "--config", default_yaml,
                      "--to", str(target))
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        sam_commit = hub.repos[DEFAULT_SEGMENTER].refs["main"]
        assert f"model {FLORENCE}@{hub.repos[FLORENCE].refs['main']} (revision main)" in fetched.stdout
        assert f"segmenter {DEFAULT_SEGMENTER}@{sam_commit} (revision main)" in fetched.stdout, fetched.stdout

        # a toy brings its own segmenter: nothing more to fetch, and the hub is not asked about the default SAM
        mark = hub.mark()
        toy = cli(hub_env(child_env, tmp_path / "toy", hub), "models", "--download", "--config",
                  str(REPO / "config" / "toy.yaml"))
        assert toy.returncode == 0, toy.stderr[-3000:]
        assert "segmenter toy-sam: nothing to download" in toy.stdout and DEFAULT_SEGMENTER not in toy.stdout
        assert hub.requests_since(mark) == []

        # the robot, offline on that cache: config/default.yaml loads the prefetched SAM with no request
        mark = hub.mark()
        env = hub_env(child_env, tmp_path / "robot", hub, offline=True) | {"HF_HUB_CACHE": str(target)}
        robot = run_engine(env, config_file=default_yaml, command_line={"device": "cpu"})
        assert (robot["segmenter"], robot["commit"], robot["fallback"]) == (DEFAULT_SEGMENTER, sam_commit, "")
        assert robot["model"] == f"{FLORENCE}@{hub.repos[FLORENCE].refs['main']}"
        assert hub.requests_since(mark) == []
