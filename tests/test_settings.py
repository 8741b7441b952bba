"""One set of defaults, and models that bring their own settings.

The package defaults are ``EngineConfig``'s; config/default.yaml, the node's parameters and every
command start from them. A model's ``region_perception.json`` "settings" apply only where the user
set nothing: command line > --config / node parameters > the model's own > package defaults.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys

import pytest

from region_perception.engine import EngineConfig, RegionEngine, UserSettings
from region_perception.engine.settings import (
    MODEL_OWN,
    SettingsError,
    model_own_settings,
    package_defaults,
)
from region_perception.models.toy import TOY_MODELS, toy_path
from region_perception.service.config_file import load_parameters

from .conftest import REPO

DEFAULT_YAML = REPO / "config" / "default.yaml"


def documented_unset(path) -> dict[str, object]:
    """The settings a model may bring, as config/default.yaml documents them: commented out, with their default."""
    import yaml

    lines, out, parent = path.read_text().splitlines(), {}, ""
    start = next(i for i, line in enumerate(lines) if "settings a model may bring" in line)
    for line in lines[start + 1:]:
        if not line.strip().startswith("#"):
            break
        m = re.match(r"\s*#(\s+)([a-z_]+):(?:\s+|$)([^#]*)", line)
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3).strip()
        if indent > 1 and parent:
            out[f"{parent}.{key}"] = yaml.safe_load(value)
        elif value == "":
            parent = key
        else:
            parent = ""
            out[key] = yaml.safe_load(value)
    return out


# -- one source of defaults --------------------------------------------------------------------------


def test_default_yaml_repeats_the_package_defaults_key_for_key():
    from region_perception.ros.node import PARAMETERS

    defaults = package_defaults()
    active = load_parameters(DEFAULT_YAML)
    unset = documented_unset(DEFAULT_YAML)
    assert set(unset) == MODEL_OWN, set(unset) ^ MODEL_OWN  # every setting a model may bring is left unset
    assert not set(active) & MODEL_OWN
    assert set(active) | set(unset) == set(PARAMETERS), (set(active) | set(unset)) ^ set(PARAMETERS)
    for key, value in {**active, **unset}.items():
        if key in defaults:  # an engine setting: the YAML says exactly the package default
            assert value == defaults[key], f"config/default.yaml {key}: {value!r} != package default {defaults[key]!r}"
        else:  # a node-only parameter: the YAML says the node's declared default
            assert value == PARAMETERS[key][0], f"config/default.yaml {key}: {value!r} != {PARAMETERS[key][0]!r}"


def test_node_parameters_default_to_the_engine_defaults():
    from region_perception.ros.node import PARAMETERS

    defaults = package_defaults()
    assert set(defaults) - {"max_points", "max_text_chars", "rounding", "score_batch_size"} <= set(PARAMETERS)
    for key, (default, _) in PARAMETERS.items():
        if key in defaults:
            assert default == defaults[key], key


def test_no_random_weight_part_is_a_default():
    from region_perception.models.registry import DEFAULT_SEGMENTER, SEGMENTER_BACKENDS

    defaults = package_defaults()
    for key in ("model", "fallback_model", "segmenter", "snap_model"):
        assert not str(defaults[key]).startswith(("tiny-", "toy-")), (key, defaults[key])
    # the default segmenter is the released SAM ViT-B from the hub, through transformers (auto picks hf-sam for it);
    # offline with nothing cached it gives way to none (tests/test_segmenter_default.py), never to random weights
    assert defaults["segmenter"] == DEFAULT_SEGMENTER == "facebook/sam-vit-base"
    assert defaults["segmenter_backend"] == "auto" and defaults["segmenter_backend"] in SEGMENTER_BACKENDS
    assert defaults["segmenter_revision"] == "" and defaults["proposals"] == "superpixels"


def _parser():
    from region_perception.cli.commands import build_parser

    return build_parser()


COMMANDS = {
    "describe": ["describe", "x.png"],
    "ask": ["ask", "x.png", "--question", "what?"],
    "refer": ["refer", "x.png", "--text", "the cup"],
    "classify": ["classify", "x.png", "--box", "1,1,5,5"],
    "eval": ["eval", "caption", "--dataset", "d"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_starts_from_the_package_defaults(command):
    from region_perception.cli.common import user_settings_from_args

    args = _parser().parse_args(COMMANDS[command])
    user = user_settings_from_args(args)
    assert user.command_line == {} and user.config == {}, (user.command_line, user.config)
    assert user.resolve({})[0] == EngineConfig()


def test_the_trainers_final_evaluation_sets_only_how_to_load(tmp_path):
    from region_perception.training.trainer import final_evaluation_settings

    user = final_evaluation_settings(tmp_path / "out", device="cpu", seed=3)
    assert set(user.command_line) == {"model", "device", "dtype", "seed"} and user.config == {}
    own = {"segmenter": "some-sam", "max_new_tokens": 9}
    config, sources = user.resolve(own)
    assert config.segmenter == "some-sam" and config.max_new_tokens == 9 and sources["segmenter"] == "model"


# -- precedence -----------------------------------------------------------------------------------


def test_the_models_sam_proposals_go_with_its_segmenter():
    own = {"segmenter": "toy-sam", "proposals": "sam", "proposal_filter.min_area_fraction": 0.005}
    config, sources = UserSettings(config={"segmenter": "none"}).resolve(own)
    assert (config.segmenter, config.proposals, sources["proposals"]) == ("none", "superpixels", "default")
    assert config.proposal_filter.min_area_fraction == 0.04  # the filter went with the model's proposals
    config, _ = UserSettings().resolve(own)
    assert (config.segmenter, config.proposals) == ("toy-sam", "sam")


def test_each_level_overrides_the_ones_below():
    own = {"max_new_tokens": 7, "segmenter": "none", "proposal_filter.min_area_fraction": 0.01}
    config, sources = UserSettings().resolve(own)
    assert (config.max_new_tokens, sources["max_new_tokens"]) == (7, "model")
    assert config.proposal_filter.min_area_fraction == 0.01 and config.proposal_filter.max_proposals == 20
    assert sources["num_beams"] == "default"
    config, sources = UserSettings(config={"max_new_tokens": 9}).resolve(own)
    assert (config.max_new_tokens, sources["max_new_tokens"]) == (9, "config")
    config, sources = UserSettings(command_line={"max_new_tokens": 11}, config={"max_new_tokens": 9}).resolve(own)
    assert (config.max_new_tokens, sources["max_new_tokens"]) == (11, "command line")
    # a user's value equal to the package default still wins over the model's own
    config, sources = UserSettings(config={"proposal_filter.min_area_fraction": 0.04}).resolve(own)
    assert config.proposal_filter.min_area_fraction == 0.04 and sources["proposal_filter.min_area_fraction"] == "config"


def test_a_whole_engine_config_ignores_the_models_own():
    config, _ = UserSettings.everything(EngineConfig(model="m")).resolve({"max_new_tokens": 7})
    assert config.max_new_tokens == 30


def test_a_model_may_not_choose_how_it_is_loaded(tmp_path):
    with pytest.raises(SettingsError, match="device"):
        model_own_settings({"settings": {"device": "cuda"}})
    with pytest.raises(SettingsError, match="max_new_tokens"):
        model_own_settings({"settings": {"max_new_tokens": "many"}})
    (tmp_path / "labels.txt").write_text("a\nb\n")
    own = model_own_settings({"settings": {"default_vocabulary": "labels.txt"}}, tmp_path)
    assert own["default_vocabulary"] == str(tmp_path / "labels.txt")


@pytest.fixture(scope="module")
def own_toy(tmp_path_factory):
    """toy-regionvlm copied, with its own settings changed to values nobody else uses."""
    out = tmp_path_factory.mktemp("own") / "toy"
    shutil.copytree(toy_path("toy-regionvlm"), out)
    meta = json.loads((out / "region_perception.json").read_text())
    meta["settings"] = {**meta["settings"], "max_new_tokens": 7, "refer_draws": 2}
    (out / "region_perception.json").write_text(json.dumps(meta))
    return out


def _cli_settings(argv):
    from region_perception.cli.common import user_settings_from_args

    return RegionEngine.load(user_settings_from_args(_parser().parse_args(argv)))


def test_the_command_line_config_and_model_levels_through_real_loading(own_toy, tmp_path):
    base = ["describe", "x.png", "--model", str(own_toy), "--device", "cpu"]
    engine = _cli_settings(base)
    assert engine.config.max_new_tokens == 7 and engine.settings["max_new_tokens"]["from"] == "model"
    assert engine.config.default_vocabulary == str(own_toy / "vocabulary.txt")
    config = tmp_path / "params.yaml"
    config.write_text("region_perception:\n  ros__parameters:\n    max_new_tokens: 9\n    refer_draws: 5\n")
    engine = _cli_settings([*base, "--config", str(config)])
    assert engine.config.max_new_tokens == 9 and engine.settings["max_new_tokens"]["from"] == "config"
    assert engine.config.refer_draws == 5 and engine.settings["refer_draws"]["from"] == "config"
    engine = _cli_settings([*base, "--config", str(config), "--max-new-tokens", "11"])
    assert engine.config.max_new_tokens == 11 and engine.settings["max_new_tokens"]["from"] == "command line"


@pytest.mark.parametrize("name", TOY_MODELS)
def test_a_shipped_toy_named_alone_loads_with_its_own_settings(name):
    engine = RegionEngine.load(UserSettings(command_line={"model": name, "device": "cpu"}))
    assert not engine.weights_random and engine.segmenter.name == "toy-sam"  # its own: the trained toy segmenter
    assert engine.proposer is engine.segmenter
    own = model_own_settings(json.loads((toy_path(name) / "region_perception.json").read_text()), toy_path(name))
    for key, value in own.items():
        assert engine.settings[key] == {"value": value, "from": "model"}
    from region_perception.service.config_file import read_vocabulary

    assert read_vocabulary(engine.config.default_vocabulary) == ["circle", "square", "triangle", "star"]


# -- the model cards' own command ---------------------------------------------------------------


@pytest.mark.parametrize("name", TOY_MODELS)
def test_the_model_cards_load_line_is_a_command_that_runs(name, tmp_path):
    from region_perception.datasets import synthetic

    card = (toy_path(name) / "README.md").read_text()
    line = next(ln for ln in card.splitlines() if ln.startswith("Load it like any checkpoint"))
    command = re.search(r"`(region-perception [^`]+)`", line).group(1)
    assert "IMAGE" in command and "X,Y" in command and f"--model {name}" in command, command
    world = tmp_path / "world"
    synthetic.generate(world, images=4, size=128, seed=11, val_fraction=0.5)
    data = json.loads((world / "instances_val.json").read_text())
    image = data["images"][0]
    objects = [a for a in data["annotations"] if a["image_id"] == image["id"]]
    target = max(objects, key=lambda a: a["area"])  # the largest: a click on it is inside it
    x, y, w, h = target["bbox"]
    argv = command.replace("IMAGE", str(world / "images" / image["file_name"]))
    argv = argv.replace("X,Y", f"{x + w / 2:.0f},{y + h / 2:.0f}").split()[1:]
    env_cmd = [sys.executable, "-m", "region_perception.cli", *argv, "--json", "--device", "cpu"]
    out = subprocess.run(env_cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["weights_random"] is False and result["model"] == name
    assert "RANDOM" not in out.stderr
    assert result["outputs"][0]["text"].strip(), result


# -- the node -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_node_on_the_default_yaml_takes_a_toys_own_settings(tmp_path):
    """``model:=toy-regiongpt`` on config/default.yaml: the toy's vocabulary and filter, said in /diagnostics
    and in every result; a node parameter still wins over the toy's own."""
    import numpy as np

    from region_perception.msg import RegionQuery
    from region_perception.ros.image_conversion import array_to_image_msg
    from region_perception.ros.processes import node_command
    from region_perception.srv import QueryRegions

    from .helpers.ros_client import RosClient

    log = open(tmp_path / "node.log", "w")
    node = subprocess.Popen(node_command(model="toy-regiongpt", device="cpu", refer_draws=3,
                                         diagnostics_period_s=0.5), stdout=log, stderr=subprocess.STDOUT)
    client = RosClient("settings_client")
    try:
        assert client.client.wait_for_service(timeout_sec=120), "node did not come up"
        assert client.wait(lambda: client.diagnostic_values().get("device", "none") != "none", 300), "not active"
        image = np.full((128, 128, 3), 200, np.uint8)
        image[40:80, 40:80] = (220, 30, 30)
        from region_perception.msg import Region

        query = RegionQuery(query_id="c1", task=RegionQuery.CLASSIFY)
        query.regions = [Region(kind=Region.BOX, box=np.array([40, 40, 80, 80], dtype=np.float32))]
        req = QueryRegions.Request(query=query, image=array_to_image_msg(image, "rgb8"))
        result = client.call(req, timeout=300)
        assert result.status == 0, result.error
        assert result.outputs[0].label in ("circle", "square", "triangle", "star")  # the toy's own vocabulary
        lines = set(result.settings)
        from region_perception.training.toys import TOY_SETTINGS

        own_min_area = TOY_SETTINGS["proposal_filter"]["min_area_fraction"]
        assert f"proposal_filter.min_area_fraction={own_min_area} (model)" in lines and "segmenter=toy-sam (model)" \
            in lines
        assert "refer_draws=3 (config)" in lines and "model=toy-regiongpt (config)" in lines, lines
        assert not result.weights_random
        assert client.wait(lambda: "(model)" in client.diagnostic_values().get("settings", ""), timeout=60)
    finally:
        client.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()


# -- the cards' figures come back from the model's name alone --------------------------------------


@pytest.mark.parametrize("name", TOY_MODELS)
def test_eval_with_only_the_model_resolves_what_made_the_card(name):
    """The card's figures came from the trainer's final evaluation; `eval --model NAME` resolves the same
    engine settings (only how to load differs: the device, and float32 which is CPU's auto anyway)."""
    from region_perception.cli.common import user_settings_from_args
    from region_perception.training.trainer import final_evaluation_settings

    own = model_own_settings(json.loads((toy_path(name) / "region_perception.json").read_text()), toy_path(name))
    for task in ("caption", "classify", "refer", "comprehension"):
        args = _parser().parse_args(["eval", task, "--dataset", "d", "--model", str(toy_path(name))])
        cli, _ = user_settings_from_args(args).resolve(own)
        card, _ = final_evaluation_settings(toy_path(name), device="auto").resolve(own)
        cli.dtype = card.dtype = "auto"
        assert cli == card, task


def test_eval_with_only_the_model_answers_with_the_trained_toy(tmp_path):
    from region_perception.datasets import synthetic

    world = tmp_path / "world"
    synthetic.generate(world, images=20, size=128, seed=5, val_fraction=0.5)
    cmd = [sys.executable, "-m", "region_perception.cli", "eval", "classify", "--dataset", str(world),
           "--model", "toy-regiongpt", "--limit", "30", "--no-progress", "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["weights_random"] is False and summary["errors"] == 0
    assert summary["settings"]["segmenter"] == {"value": "toy-sam", "from": "model"}
    assert summary["accuracy"] >= 2 * summary["chance"]["accuracy"], summary  # 93 % on its card; chance 25
