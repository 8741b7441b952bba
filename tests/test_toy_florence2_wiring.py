"""The toy Florence-2 starts with its encoder reading the box (models/toy.py ``_region_wiring_florence2``).

Why a test: without the wiring, 1200 training steps never linked the ``<loc_i>`` tokens to image cells and
the toy answered the same for every box of a scene. Untrained (random weights), the wired encoder must
already carry, at the prompt's tokens, the content of the cells inside the box it was given: the text
tokens' output for a box over object A is closer to A's cells than to B's, and swapping boxes swaps that.
"""

from __future__ import annotations

import pytest
import torch

from region_perception.datasets.synthetic import scene
from region_perception.geometry.regions import mask_to_box
from region_perception.models.backend import RegionCue
from region_perception.models.toy import build_toy_florence2
from region_perception.training.recipes import TrainExample
from region_perception.training.recipes.florence2 import Florence2Recipe

CELLS = 8  # 128-px images, DaViT downsampling 16


@pytest.fixture(scope="module")
def wired(tmp_path_factory):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    out = build_toy_florence2(tmp_path_factory.mktemp("toy") / "toy-florence2")
    model = Florence2ForConditionalGeneration.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    return model, AutoProcessor.from_pretrained(out)


def _encode(model, processor, image, box, task="caption"):
    """The encoder's output for one prompt: (image tokens' input, text tokens' output)."""
    recipe = Florence2Recipe()
    batch = recipe.build_batch(model, processor, [TrainExample(image, RegionCue("", box), task, "a")])
    with torch.no_grad():
        embeds = model.get_input_embeddings()(batch["input_ids"])
        feats = model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output
        slots = (batch["input_ids"] == model.config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, feats.reshape(-1, embeds.shape[-1]))
        out = model.model.language_model.encoder(inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    n_image = feats.shape[1]
    return feats[0], out.last_hidden_state[0, n_image:]


def _cells(box) -> list[int]:
    """Image-token indices (after the pooled one) of the cells whose centres lie in ``box``."""
    x0, y0, x1, y1 = box
    c = [(i + 0.5) / CELLS for i in range(CELLS)]
    return [1 + r * CELLS + k for r in range(CELLS) for k in range(CELLS) if x0 <= c[k] <= x1 and y0 <= c[r] <= y1]


def test_the_text_tokens_carry_the_cells_of_the_box_they_name(wired):
    model, processor = wired
    image, objects = scene([("red", "circle", (30, 34), 16), ("blue", "square", (96, 90), 16)], seed=1)
    boxes = [tuple(v / 128 for v in mask_to_box(o.mask)) for o in objects]
    tower = model.config.vision_config.embed_dim[-1]
    for task in ("caption", "classify", "refer"):
        sims = []
        for box in boxes:
            feats, text = _encode(model, processor, image, box, task)
            region = text[:, :tower].mean(0)
            sims.append([torch.cosine_similarity(region, feats[_cells(b), :tower].mean(0), dim=0).item()
                         for b in boxes])
        (aa, ab), (ba, bb) = sims
        # unwired (coordinate init only) the similarities are about 0.1 and -0.05: the region barely shows
        assert aa > 0.6 and bb > 0.6, (task, sims)
        assert aa > ab + 0.1 and bb > ba + 0.1, (task, sims)


def test_image_tokens_keep_their_own_content(wired):
    model, processor = wired
    image, _ = scene([("green", "star", (40, 40), 18), ("yellow", "triangle", (90, 90), 18)], seed=2)
    recipe = Florence2Recipe()
    batch = recipe.build_batch(model, processor, [TrainExample(image, RegionCue("", (0.1, 0.1, 0.5, 0.5)),
                                                               "caption", "a")])
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"],
                    attention_mask=batch["attention_mask"], labels=batch["labels"], output_attentions=True)
    self_weight = torch.diagonal(out.encoder_attentions[1][0, :, 1:65, 1:65], dim1=-2, dim2=-1)
    assert self_weight.mean() > 0.5, "image cells look up themselves, not the box"
