"""``tiny-regiongpt``: a small CLIP vision tower + small Llama as RegionGPT, RANDOM weights, built offline."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..tiny import _SEED, _WORDS, mark_random
from .configuration_regiongpt import RegionGPTConfig
from .modeling_regiongpt import RegionGPTForConditionalGeneration
from .processing_regiongpt import IMAGE, REGION

# the words of RegionGPT's prompts and of the synthetic world, beside the common tiny words
_EXTRA_WORDS = """
user assistant give short description category template which does describe region regions image
circle square triangle ring cross star disk shape colour color cyan magenta above below larger smaller medium size
""".split()

TINY_REGIONGPT_SIZES = {"image_size": 128, "patch_size": 16, "vision_hidden": 64, "lm_hidden": 64, "layers": 2}


def llama_word_tokenizer(words: list[str]):
    """A word-level tokenizer shaped like Llama's: ``<s>`` prepended, ``<image>``/``<region>`` special."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    pieces = specials + sorted(set(words)) + [str(i) for i in range(101)] + list("[]:?.,!'\"-()")
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE, REGION]})
    return fast


def _build(out: Path, *, name: str, words: list[str], sizes: dict, seed: int, refine_std: float = 0.0) -> None:
    """RegionGPT (CLIP tower + Llama) of the given sizes with random weights, saved with its processor.

    ``refine_std`` > 0 draws the refinement's last deconvolution at random too (else it starts as
    the paper's untrained module would: a zero residual, plain patch features).
    """
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaProcessor

    z = sizes
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = llama_word_tokenizer(words)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": z["image_size"]},
        crop_size={"height": z["image_size"], "width": z["image_size"]},
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=z["patch_size"],
        vision_feature_select_strategy="default",
    )
    grid = z["image_size"] // z["patch_size"]
    config = RegionGPTConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=z["vision_hidden"],
            intermediate_size=z["vision_hidden"] * 2,
            num_hidden_layers=z.get("vision_layers") or z["layers"],
            num_attention_heads=4,
            image_size=z["image_size"],
            patch_size=z["patch_size"],
            conv_stem=bool(z.get("conv_stem", False)),  # models/conv_stem.py (the toy's tower)
        ).to_dict(),
        text_config=LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=z["lm_hidden"],
            intermediate_size=z["lm_hidden"] * 2,
            num_hidden_layers=z.get("lm_layers") or z["layers"],
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ).to_dict(),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        region_token_index=tokenizer.convert_tokens_to_ids(REGION),
        image_seq_length=grid * grid,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    model = RegionGPTForConditionalGeneration(config).eval()
    if refine_std > 0:
        with torch.no_grad():
            torch.nn.init.normal_(model.refiner.up2.weight, std=refine_std)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_random(out, name)


def build_tiny_regiongpt(out: Path, *, name: str = "tiny-regiongpt", words: list[str] | None = None) -> Path:
    """Tiny RegionGPT with random weights (the refinement too), saved with its processor."""
    words = list(words or (_WORDS + _EXTRA_WORDS))
    # random refinement too: a tiny model exercises every path
    _build(out, name=name, words=words, sizes=TINY_REGIONGPT_SIZES, seed=_SEED, refine_std=0.02)
    (Path(out) / "region_perception.json").write_text(json.dumps({"backend": "regiongpt", "refinement_trained": True}))
    return Path(out)


# the toy: the synthetic world's words, trained from scratch by ``train --model toy-regiongpt``
TOY_REGIONGPT_SIZES = {
    "image_size": 128, "patch_size": 16, "vision_hidden": 128, "vision_layers": 4, "lm_hidden": 128, "lm_layers": 2,
    "conv_stem": True,  # as the toy RegionVLM: the tower learns shape in stage 0 (a 16-px patch conv: ~40-70 %)
}


def toy_regiongpt_words() -> list[str]:
    """The toy models' words (synthetic world + the engine's prompts) and RegionGPT's prompt words."""
    from ..toy import toy_words
    from . import processing_regiongpt as prompts

    words = set(toy_words())
    for text in (prompts.CAPTION, prompts.CLASSIFY, prompts.COMPREHEND, "user assistant region regions image"):
        words.update(re.findall(r"[a-z]+", text.lower()))
    return sorted(words)


def build_toy_regiongpt(out: Path, *, seed: int = 0, sizes: dict | None = None) -> Path:
    """RegionGPT's architecture, toy-sized, RANDOM weights until trained (the trainer's ``toy-regiongpt``).

    The refinement starts as the paper's untrained module would (zero residual: plain patch
    features); ``region_perception.json`` says it is not trained until the trainer's save says so.
    """
    _build(
        out,
        name="toy-regiongpt (untrained)",
        words=toy_regiongpt_words(),
        sizes={**TOY_REGIONGPT_SIZES, **(sizes or {})},
        seed=seed,
    )
    (Path(out) / "region_perception.json").write_text(json.dumps({"backend": "regiongpt", "refinement_trained": False}))
    return Path(out)
