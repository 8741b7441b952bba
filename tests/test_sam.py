"""SAM segmenters and proposal filtering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from region_perception.common.feature_cache import FeatureCache
from region_perception.geometry.proposals import ProposalFilter, border_fraction, filter_proposals
from region_perception.models.loading import load_segmenter, tiny_path
from region_perception.models.sam import SuperpixelProposer


def _square(size, y0, x0, h, w):
    m = np.zeros(size, dtype=bool)
    m[y0 : y0 + h, x0 : x0 + w] = True
    return m


def test_filter_drops_small_and_border_masks_and_keeps_20():
    size = (100, 100)
    small = _square(size, 40, 40, 5, 5)  # 0.25 %
    border = _square(size, 0, 0, 20, 100)  # the whole top border
    good = _square(size, 30, 30, 30, 30)
    assert border_fraction(border) == 1.0
    assert filter_proposals([small, border, good]) == [2]
    many = [_square(size, 20 + i % 10, 20, 30, 30) for i in range(30)]
    kept = filter_proposals(many, scores=list(range(30)))
    assert len(kept) == 20 and kept[0] == 29  # best score first
    assert filter_proposals([good], rules=ProposalFilter(min_area_fraction=0.5)) == []


def test_tiny_sam_segments_and_caches_its_embedding(astronaut):
    cache = FeatureCache(2)
    seg = load_segmenter("tiny-sam", "sam", cache, torch.device("cpu"))
    assert (tiny_path("tiny-sam") / "model.safetensors").exists() and seg.weights_random
    encoder_calls = []
    seg.predictor.model.image_encoder.register_forward_hook(lambda *a: encoder_calls.append(1))
    m1 = seg.segment("k", astronaut, box=np.array([100, 100, 300, 300]))
    m2 = seg.segment("k", astronaut, points=np.array([[200.0, 200.0]]))
    assert m1.shape == m2.shape == astronaut.shape[:2] and m1.dtype == bool
    assert len(encoder_calls) == 1
    props = seg.propose("k", astronaut)  # the automatic generator reuses the same embedding
    assert len(encoder_calls) == 1 and all(m.shape == astronaut.shape[:2] for m in props.masks)


def test_superpixel_proposals_cover_the_image(astronaut):
    props = SuperpixelProposer(FeatureCache(1)).propose("k", astronaut)
    assert len(props.masks) > 3
    union = np.zeros(astronaut.shape[:2], dtype=int)
    for m in props.masks:
        union += m
    assert (union == 1).all(), "segments partition the image"
    assert filter_proposals(props.masks, props.scores), "some segments survive RegionVLM's filter"


def test_transformers_sam_alternative(tmp_path, astronaut):
    from transformers import SamConfig, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamVisionConfig

    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=SamVisionConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            output_channels=32,
            global_attn_indexes=[1],
            mlp_dim=64,
            image_size=256,
            window_size=4,
            num_pos_feats=16,
        ),
        prompt_encoder_config={"hidden_size": 32, "image_size": 256, "image_embedding_size": 16},
        mask_decoder_config=SamMaskDecoderConfig(
            hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32
        ).to_dict(),
    )
    SamModel(cfg).save_pretrained(tmp_path)
    from transformers import SamImageProcessor

    SamProcessor(SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})).save_pretrained(
        tmp_path
    )
    (tmp_path / "RANDOM_WEIGHTS").write_text("test model")
    seg = load_segmenter(str(tmp_path), "hf-sam", FeatureCache(2), torch.device("cpu"))
    assert seg.weights_random
    mask = seg.segment("k", astronaut, box=np.array([100, 100, 300, 300]))
    assert mask.shape == astronaut.shape[:2]
    props = seg.propose("k", astronaut)
    assert all(m.shape == astronaut.shape[:2] for m in props.masks)


@pytest.mark.parametrize("spec", ["vit_q:/nope.pth", "vit_b"])
def test_bad_sam_spec_is_refused(spec):
    from region_perception.models.sources import ModelLoadError

    with pytest.raises(ModelLoadError, match="TYPE:CHECKPOINT") as info:
        load_segmenter(spec, "sam", FeatureCache(1), torch.device("cpu"))
    assert info.value.reason == "unknown_name"
