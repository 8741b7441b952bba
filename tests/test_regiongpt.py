"""RegionGPT: the split stages against LLaVA's own forward, mask pooling, and every task through
the engine, CLI and node with ``model: tiny-regiongpt`` (random weights: behaviour, not words)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from region_perception.geometry.regions import BoxRegion, MaskRegion, PointsRegion, ScribbleRegion
from region_perception.models.backend import RegionCue
from region_perception.models.regiongpt import RegionGPTForConditionalGeneration, mask_pool
from region_perception.models.regiongpt import processing_regiongpt as prompts

torch.set_num_threads(1)


def ring(size: int = 64, centre=(32, 32), r_in: int = 10, r_out: int = 20) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(xx + 0.5 - centre[0], yy + 0.5 - centre[1])
    return (d >= r_in) & (d < r_out)


def l_shape(h: int = 64, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), dtype=bool)
    m[8:56, 8:20] = True
    m[44:56, 8:56] = True
    return m


def two_shapes(size: int = 128) -> np.ndarray:
    """A flat scene with a red disk on the left and a blue square on the right."""
    img = np.full((size, size, 3), 200, dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    img[np.hypot(xx - 36, yy - 64) < 22] = (220, 30, 30)
    img[40:88, 70:118] = (30, 30, 220)
    return img


@pytest.fixture(scope="module")
def backend():
    from region_perception.models.loading import load_region_model

    return load_region_model("tiny-regiongpt", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="module")
def engine():
    from region_perception.engine import EngineConfig, RegionEngine

    return RegionEngine.load(EngineConfig(model="tiny-regiongpt", segmenter="none", device="cpu"))


# -- mask pooling --------------------------------------------------------------------------------
def test_mask_pool_is_the_masked_average_on_a_hand_made_map():
    rng = np.random.default_rng(0)
    fmap = torch.from_numpy(rng.normal(size=(5, 16, 16))).float()
    masks = np.stack([ring(16, (8, 8), 3, 6), l_shape(16, 16), np.eye(16, dtype=bool)])
    pooled = mask_pool(fmap, torch.from_numpy(masks))
    for i, m in enumerate(masks):
        direct = fmap.numpy()[:, m].mean(axis=1)
        np.testing.assert_allclose(pooled[i].numpy(), direct, rtol=1e-5, atol=1e-6)


def test_mask_pool_resizes_a_finer_mask_by_area():
    """A mask at 4x the map's size covering whole cells pools exactly those cells; half a cell counts half."""
    fmap = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4)
    cells = l_shape(4, 4) | np.array([[1, 0, 0, 0]] * 4, dtype=bool)
    fine = np.kron(cells, np.ones((4, 4), dtype=bool))
    np.testing.assert_allclose(
        mask_pool(fmap, torch.from_numpy(fine[None]))[0], fmap[:, torch.from_numpy(cells)].mean(1)
    )
    half = np.zeros((16, 16), dtype=bool)
    half[0:4, 0:4] = True  # cell (0, 0) whole
    half[0:4, 4:6] = True  # cell (0, 1) half
    expected = (fmap[:, 0, 0] * 1.0 + fmap[:, 0, 1] * 0.5) / 1.5
    np.testing.assert_allclose(mask_pool(fmap, torch.from_numpy(half[None]))[0], expected, rtol=1e-6)


# -- the split stages against LLaVA ----------------------------------------------------------------
def _tiny_llava(tmp_path):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=64,
            patch_size=16,
        ).to_dict(),
        text_config=LlamaConfig(
            vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
        ).to_dict(),
        image_token_index=100,
        image_seq_length=16,
    )
    llava = LlavaForConditionalGeneration(config).eval()
    llava.save_pretrained(tmp_path / "llava")
    return llava, tmp_path / "llava"


def test_a_llava_checkpoint_as_regiongpt_gives_llavas_own_forward(tmp_path):
    """Untrained refinement: image tokens, logits and loss equal LlavaForConditionalGeneration's."""
    llava, path = _tiny_llava(tmp_path)
    model, info = RegionGPTForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    model.eval()
    assert info["missing_keys"] and all(k.startswith("refiner.") for k in info["missing_keys"])
    ids = torch.tensor([[1, 5, *[100] * 16, 7, 8, 9, 10]])
    pixels = torch.randn(1, 3, 64, 64)
    labels = ids.masked_fill(ids == 100, -100)
    with torch.no_grad():
        ours = model(input_ids=ids, pixel_values=pixels, labels=labels)
        theirs = llava(input_ids=ids, pixel_values=pixels, labels=labels)
        patches, cls = model.patch_features(pixels)
        tokens = model.image_tokens(model.refine(patches), cls)
        llava_tokens = llava.get_image_features(pixel_values=pixels).pooler_output[0]
    torch.testing.assert_close(tokens[0], llava_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=1e-5, atol=1e-5)


def test_trained_refinement_changes_the_image_tokens(tmp_path):
    """The refinement is really in the image path (the test above is not vacuous)."""
    _, path = _tiny_llava(tmp_path)
    model = RegionGPTForConditionalGeneration.from_pretrained(path).eval()
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        patches, cls = model.patch_features(pixels)
        before = model.image_tokens(model.refine(patches), cls)
        torch.nn.init.normal_(model.refiner.up2.weight, std=0.5)
        after = model.image_tokens(model.refine(patches), cls)
    assert not torch.allclose(before, after, atol=1e-4)


def test_backend_scores_equal_the_models_unsplit_forward(backend):
    """Cached image encoding + region pooling + embedding substitution == one forward with pixels and masks."""
    image = two_shapes(128)  # square: the centred padding is a no-op
    feats = backend.encode_image(image)
    masks = [ring(128, (36, 64), 8, 22), l_shape(128, 128)]
    cues = [RegionCue("", (0, 0, 1, 1), mask=m) for m in masks]
    answers = ["a red circle", "blue square on the right"]
    split = backend.score_regions(feats, cues, answers)
    tok = backend.tokenizer
    pixels = backend.processor.image_processor(images=image, return_tensors="pt").pixel_values
    prompt = prompts.caption_prompt(int(feats["image_tokens"].shape[0]))
    for i, (mask, answer) in enumerate(zip(masks, answers, strict=True)):
        p_ids = tok(prompt, return_tensors="pt").input_ids
        a_ids = tok(" " + answer, add_special_tokens=False, return_tensors="pt").input_ids
        ids = torch.cat([p_ids, a_ids, torch.tensor([[tok.eos_token_id]])], dim=1)
        labels = ids.clone()
        labels[:, : p_ids.shape[1]] = -100
        with torch.no_grad():
            out = backend.model(
                input_ids=ids, pixel_values=pixels, region_masks=[torch.from_numpy(mask[None]).float()], labels=labels
            )
        assert abs(float(out.loss) - float(split[i])) < 1e-4


def test_a_non_rectangular_mask_is_pooled_as_itself_not_as_its_box(backend):
    image = two_shapes(128)
    feats = backend.encode_image(image)
    ring_mask = ring(128, (64, 64), 24, 40)
    as_mask = RegionCue("", (0.2, 0.2, 0.8, 0.8), mask=ring_mask)
    as_box = RegionCue("", (0.2, 0.2, 0.8, 0.8))
    with torch.no_grad():
        tokens = backend.region_tokens(feats, [as_mask, as_box])
        expected = backend.model.region_tokens(feats["refined"], torch.from_numpy(ring_mask[None]).float())
    torch.testing.assert_close(tokens[0:1], expected)
    assert not torch.allclose(tokens[0], tokens[1], atol=1e-6)


def test_the_region_list_and_task_guided_prompts():
    assert prompts.region_list(2) == "Region [0] <region>, Region [1] <region>."
    text = prompts.classify_prompt(3, "COCO-80 category names")
    assert text.count("<image>") == 3 and text.count("<region>") == 1
    assert "Answer the question using COCO-80 category names." in text
    assert "Answer using the template Region [x]." in prompts.comprehend_prompt(1, 4, "the cup")
    turns = prompts.ask_prompt(1, 1, "what colour is it?", [("what is this?", "a cup")])
    assert turns.count("USER:") == 2 and turns.index("a cup</s>") < turns.index("what colour is it?")
    assert prompts.parse_region_index("Region [3].") == 3 and prompts.parse_region_index("no idea") is None


# -- every task through the engine ------------------------------------------------------------
def test_every_task_through_the_engine(engine):
    image = two_shapes(128)
    regions = [
        BoxRegion(np.array([10.0, 40, 60, 90])),
        PointsRegion(np.array([[36.0, 64.0]])),
        ScribbleRegion(np.array([[70.0, 50.0], [110.0, 80.0]])),
        MaskRegion(l_shape(128, 128)),
    ]
    cap = engine.caption(image, regions, max_new_tokens=5)
    assert cap.model == "tiny-regiongpt" and cap.weights_random and any("RANDOM" in n for n in cap.notes)
    assert len(cap.outputs) == 4 and all(o.text for o in cap.outputs)
    ask = engine.ask(image, regions[:2], "what is it?", max_new_tokens=5)
    assert ask.outputs[0].text and len(ask.outputs) == 2
    cls = engine.classify(image, regions[3:], ["person", "dog", "car"], rank=True)
    assert cls.outputs[0].label in ("person", "dog", "car") and len(cls.outputs[0].label_scores) == 3
    for route in ("proposals", "native"):  # the project's loss route; RegionGPT's "Region [i]" answer
        ref = engine.refer(image, "the red circle", route=route)
        assert 0 <= ref.selected_index < len(ref.candidate_scores) >= 1
        assert ref.selected_index == int(np.argmin(ref.candidate_scores))
        assert ref.outputs[0].mask is not None and ref.outputs[0].mask.any()


def test_the_native_route_scores_each_region_index_answer(engine, backend):
    image = two_shapes(128)
    feats = backend.encode_image(image)
    cues = [RegionCue("", (0, 0, 1, 1), mask=m) for m in (ring(128, (36, 64), 0, 22), l_shape(128, 128))]
    scores = backend.comprehend(feats, cues, "the red circle")
    prompt = prompts.comprehend_prompt(int(feats["image_tokens"].shape[0]), 2, "the red circle")
    embeds, mask = backend._prompt_embeds(feats, [prompt], [cues])
    for i in range(2):
        alone = backend._answer_loss(embeds, mask, [f" Region [{i}]"])
        assert abs(float(alone[0].detach()) - float(scores[i])) < 1e-5


# -- loading -------------------------------------------------------------------------------------
def test_registry_says_regiongpt_has_no_released_weights():
    from region_perception.models.loading import load_region_model
    from region_perception.models.registry import MODELS, backend_of
    from region_perception.models.sources import ModelLoadError

    assert backend_of("tiny-regiongpt") == "regiongpt" and backend_of("llava-hf/llava-1.5-7b-hf") == "regiongpt"
    assert "NO released weights" in MODELS["regiongpt"].source
    with pytest.raises(ModelLoadError, match="train"):
        load_region_model("regiongpt", torch.device("cpu"), torch.float32)


def test_a_llava_directory_loads_as_regiongpt_flagged_untrained(tmp_path, capfd):
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    from region_perception.models.loading import load_region_model
    from region_perception.models.regiongpt.tiny import llama_word_tokenizer

    _, path = _tiny_llava(tmp_path)
    tok = llama_word_tokenizer(["what", "is", "it"])
    tok.save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    LlavaProcessor(
        image_processor=image_processor, tokenizer=AutoTokenizer.from_pretrained(path), patch_size=16
    ).save_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["image_token_index"] = tok.convert_tokens_to_ids("<image>")
    (path / "config.json").write_text(json.dumps(cfg))
    backend = load_region_model(str(path), torch.device("cpu"), torch.float32)
    assert type(backend).__name__ == "RegionGPTRegion"
    assert not backend.refinement_trained and not backend.region_aware and not backend.weights_random
    assert "UNTRAINED" in capfd.readouterr().err
    feats = backend.encode_image(two_shapes(64))
    cue = RegionCue("", (0, 0, 0.5, 0.5), mask=l_shape(64, 64))
    assert np.isfinite(backend.score_regions(feats, [cue], "what is it")).all()


# -- CLI and node --------------------------------------------------------------------------------
def test_cli_asks_about_a_mask_with_tiny_regiongpt(tmp_path, child_env):
    import cv2

    image, mask = tmp_path / "scene.png", tmp_path / "ring.png"
    cv2.imwrite(str(image), two_shapes(128)[:, :, ::-1])
    cv2.imwrite(str(mask), ring(128, (64, 64), 20, 40).astype(np.uint8) * 255)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "region_perception.cli",
            "ask",
            str(image),
            "--question",
            "what is it?",
            "--mask",
            str(mask),
            "--model",
            "tiny-regiongpt",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["model"] == "tiny-regiongpt" and out["weights_random"] and out["outputs"][0]["text"]
    assert out["outputs"][0]["mask_area"] == int(ring(128, (64, 64), 20, 40).sum())


@pytest.mark.slow
def test_the_node_answers_every_task_and_a_dialogue_with_tiny_regiongpt(child_env):
    from region_perception.msg import RegionQuery, RegionResult
    from region_perception.ros.image_conversion import array_to_image_msg
    from region_perception.ros.processes import node_command
    from region_perception.srv import QueryRegions

    from .helpers.ros_client import RosClient
    from .test_node import box, points, query

    node = subprocess.Popen(
        node_command(model="tiny-regiongpt", diagnostics_period_s=0.5),
        env=child_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = RosClient("regiongpt_client")
    image = array_to_image_msg(two_shapes(128), "rgb8")
    try:
        assert client.client.wait_for_service(timeout_sec=120)
        assert client.wait(lambda: client.diagnostic_values().get("model") == "tiny-regiongpt", 120)
        for i, (task, fields) in enumerate(
            [
                (RegionQuery.CAPTION, {"regions": [box(10, 40, 60, 90)]}),
                (RegionQuery.CLASSIFY, {"regions": [points((36, 64))], "labels": ["disk", "square"]}),
                (RegionQuery.REFER, {"text": "the red circle"}),
                (RegionQuery.ASK, {"regions": [box(10, 40, 60, 90)], "text": "what is it?", "conversation_id": "c"}),
                (RegionQuery.ASK, {"text": "what colour is it?", "conversation_id": "c"}),
            ]
        ):
            result = client.call(QueryRegions.Request(query=query(f"rg-{i}", task, **fields), image=image))
            assert result.status == RegionResult.OK, result.error
            assert result.model == "tiny-regiongpt" and result.weights_random
        # the second question of the conversation was about the first one's box
        assert (result.outputs[0].bbox.x_offset, result.outputs[0].bbox.width) == (10, 50)
    finally:
        client.close()
        node.send_signal(signal.SIGINT)
        try:
            node.wait(timeout=20)
        except subprocess.TimeoutExpired:
            node.kill()


# -- training recipe -----------------------------------------------------------------------------
def test_the_training_loss_is_the_loss_the_engine_scores(backend):
    """What the recipe trains is what inference asks: a caption row's loss equals score_regions'."""
    from region_perception.training.recipes import TrainExample, get_recipe, select_trainable

    recipe = get_recipe("regiongpt")
    image = two_shapes(128)
    cue = RegionCue("", (0.1, 0.3, 0.5, 0.7), mask=ring(128, (36, 64), 6, 22))
    example = TrainExample(image=image, cue=cue, task="caption", target="a red circle")
    batch = recipe.build_batch(backend.model, backend.processor, [example])
    with torch.no_grad():
        trained = float(recipe.loss(backend.model, batch))
    scored = float(backend.score_regions(backend.encode_image(image), [cue], "a red circle")[0])
    assert abs(trained - scored) < 1e-4
    groups = recipe.parameter_groups(backend.model)
    assert set(recipe.default_train) == {"refiner", "projector"} and groups["refiner"]
    names = select_trainable(backend.model, groups, recipe.default_train)
    assert all(n.startswith(("refiner.", "model.multi_modal_projector.")) for n in names)
    for p in backend.model.parameters():
        p.requires_grad_(False)


def test_cli_describes_classifies_and_refers_with_tiny_regiongpt(tmp_path, child_env):
    """The other three tasks through the CLI: only ``--model`` differs from any other backend."""
    import cv2

    image = tmp_path / "scene.png"
    cv2.imwrite(str(image), two_shapes(128)[:, :, ::-1])
    base = [sys.executable, "-m", "region_perception.cli"]
    common = ["--model", "tiny-regiongpt", "--segmenter", "none", "--json"]
    runs = {
        "describe": [*base, "describe", str(image), "--box", "10,40,60,90", "--max-new-tokens", "4", *common],
        "classify": [*base, "classify", str(image), "--box", "10,40,60,90", "--labels", "disk,square", *common],
        "refer": [*base, "refer", str(image), "--text", "the red circle", "--refer-route", "native", *common],
    }
    for task, cmd in runs.items():
        run = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=300)
        assert run.returncode == 0, (task, run.stderr[-2000:])
        out = json.loads(run.stdout)
        assert out["model"] == "tiny-regiongpt" and out["weights_random"] and out["outputs"], task
    assert out["selected_index"] >= 0 and out["outputs"][0]["mask_area"] > 0


# -- evaluation harness and the toy ----------------------------------------------------------------
def test_the_evaluation_harness_runs_tiny_regiongpt(tmp_path, engine):
    from region_perception.datasets import load_dataset
    from region_perception.datasets import synthetic as syn
    from region_perception.evaluation import evaluate

    val = load_dataset(syn.generate(tmp_path / "world", images=4, seed=3, val_fraction=0.5), "val")
    for task, opts in (("caption", {"meteor": False}), ("classify", {"region": "mask"}), ("comprehension", {})):
        summary = evaluate(task, engine, val, limit=3, progress=False, **opts)
        assert summary["model"] == "tiny-regiongpt" and summary["weights_random"], task
        assert summary["n"] == 3 and summary["errors"] == 0, (task, summary)
        assert "RANDOM WEIGHTS" in summary["notes"][0]


def test_a_trained_toy_regiongpt_loads_with_its_refinement_marked_trained(tmp_path):
    """``train --model toy-regiongpt``: random until trained, then loads with a trained refinement."""
    from region_perception.datasets import synthetic as syn
    from region_perception.engine import EngineConfig, RegionEngine
    from region_perception.models.regiongpt.tiny import build_toy_regiongpt
    from region_perception.models.tiny import RANDOM_WEIGHTS_MARKER
    from region_perception.training.trainer import TrainConfig, train

    sizes = {"image_size": 64, "vision_hidden": 32, "vision_layers": 1, "lm_hidden": 32, "lm_layers": 1}
    base = build_toy_regiongpt(tmp_path / "base", sizes=sizes)
    assert (base / RANDOM_WEIGHTS_MARKER).exists()
    assert json.loads((base / "region_perception.json").read_text())["refinement_trained"] is False
    world = syn.generate(tmp_path / "world", images=4, seed=1, val_fraction=0.25)
    cfg = TrainConfig(model="toy-regiongpt", data=str(world), tasks=["caption", "classify"], out=tmp_path / "out",
                      steps=2, batch_size=2, lr=1e-3, warmup_ratio=0.0, eval_limit=0, device="cpu", sizes=sizes,
                      progress=False)
    assert train(cfg)["backend"] == "regiongpt"
    meta = json.loads((tmp_path / "out" / "region_perception.json").read_text())
    assert meta["refinement_trained"] is True and meta["trained"] is True
    engine = RegionEngine.load(EngineConfig(model=str(tmp_path / "out"), segmenter="none", device="cpu"))
    assert not engine.weights_random and engine.model.refinement_trained and engine.model.region_aware
