"""Tiny models built offline from configs with RANDOM weights.

No model hub is reachable where this project is developed and tested, so the tests and
the demo's fallback use small models of the real architectures, with random weights and
locally made tokenizers, saved to disk and loaded back through the same
``from_pretrained`` code path as released weights. Their words mean nothing; every
output they make is flagged ``weights_random``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

RANDOM_WEIGHTS_MARKER = "RANDOM_WEIGHTS"  # a file in a model directory: its weights are random
TINY_VERSION = "3"  # bump when a tiny model's recipe changes: cached builds are then rebuilt
_SEED = 1234

# Words for the tiny tokenizers: enough that random generations decode into words.
_WORDS = sorted(
    set(
        """
a an the of on in at with and to is are was it this that there what where which who how many
man woman person people child boy girl dog cat bird horse car bus truck bicycle motorcycle
airplane train boat cup bottle glass plate bowl table chair couch bed tv laptop phone book
clock vase plant tree sky grass road street building wall window door water snow sand
red green blue yellow white black brown orange pink purple gray small large big left right
top bottom front back middle near next sitting standing holding wearing looking walking
shirt hat helmet flag suit astronaut rocket coffee camera picture image region object thing
yes no one two three four five does describe polygon mask locate category name names answer question
using these coco-80 be
""".split()
    )
)


def is_current_tiny(path: Path) -> bool:
    """A tiny model directory built by this version's recipe."""
    marker = Path(path) / RANDOM_WEIGHTS_MARKER
    return marker.exists() and f"recipe {TINY_VERSION})" in marker.read_text()


def cache_dir() -> Path:
    """Where tiny models are built: $REGION_PERCEPTION_CACHE or ~/.cache/region_perception."""
    root = os.environ.get("REGION_PERCEPTION_CACHE") or Path.home() / ".cache" / "region_perception"
    return Path(root)


def _word_level_tokenizer(kind: str):
    """A small WordLevel tokenizer, BERT-style (Q-Former) or T5-style (language model)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    numbers = [str(i) for i in range(101)]
    punct = list("[]:?.,!'\"-()")
    if kind == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    else:
        specials = ["<pad>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + _WORDS + numbers + punct)}
    unk = "[UNK]" if kind == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>",
        pair="$A </s> $B </s>",
        special_tokens=[("</s>", vocab["</s>"])],
    )
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


# Florence-2's post-processor parses generated text by these task types
_FLORENCE_PARSE_TASKS = {
    "ocr": {
        "PATTERN": r"(.+?)<loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)><loc_(\d+)>",
        "AREA_THRESHOLD": 0.0,
    },
    "phrase_grounding": {"FILTER_BY_BLACK_LIST": True},
    "pure_text": {},
    "description_with_bboxes": {},
    "description_with_polygons": {},
    "polygons": {},
    "bboxes": {},
    "description_with_bboxes_or_polygons": {},
}


def build_tiny_florence2(out: Path, *, image_size: int = 128, hidden: int = 64) -> Path:
    """A small Florence-2 (DaViT vision tower + BART) with random weights."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import (
        BartConfig,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        PreTrainedTokenizerFast,
    )
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(_SEED)
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    words = specials + _WORDS + [str(i) for i in range(101)] + list("[]:?.,!'\"-()")
    vocab = {w: i for i, w in enumerate(dict.fromkeys(words))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<poly>", "</poly>", "<sep>"])
    tokens = 1 + (image_size // 32) ** 2  # DaViT downsamples 32x; plus one pooled token
    image_processor = CLIPImageProcessor(
        size={"height": image_size, "width": image_size},
        do_center_crop=False,
        crop_size={"height": image_size, "width": image_size},
        image_seq_length=tokens,
    )
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=_FLORENCE_PARSE_TASKS
    )
    vision = Florence2VisionConfig(
        depths=[1, 1, 1, 1],
        embed_dim=[16, 32, 48, hidden],
        num_heads=[1, 2, 3, 4],
        num_groups=[1, 2, 3, 4],
        window_size=2,
        projection_dim=hidden,
        drop_path_rate=0.0,
    )
    text = BartConfig(
        vocab_size=len(tokenizer),
        d_model=hidden,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=hidden * 2,
        decoder_ffn_dim=hidden * 2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    config = Florence2Config(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=tokenizer.image_token_id
    )
    Florence2ForConditionalGeneration(config).eval().save_pretrained(out)
    processor.save_pretrained(out)
    mark_random(out, "tiny-florence2")
    return out


def mark_random(out: Path, what: str) -> None:
    (out / RANDOM_WEIGHTS_MARKER).write_text(
        f"{what}: built offline from a config with RANDOM weights (seed {_SEED}, recipe {TINY_VERSION}).\n"
        "Its outputs exercise the code path; they are not predictions.\n"
    )


TINY_REGIONVLM_SIZES = {
    "real": False,
    "image_size": 112,
    "patch_size": 16,
    "vision_hidden": 64,
    "vision_layers": 2,
    "vision_heads": 4,
    "qformer_hidden": 64,
    "qformer_layers": 2,
    "qformer_heads": 4,
    "qformer_vocab": 0,
    "num_query_tokens": 8,
    "lm_hidden": 64,
    "lm_d_kv": 16,
    "lm_ff": 128,
    "lm_layers": 2,
    "lm_heads": 4,
    "lm_vocab": 0,
}
# Real layer sizes for benchmarks (weights do not change compute): a ViT-B/16 vision tower
# at 224 px, BLIP-2's Q-Former (768 wide, 12 layers, 32 queries, BERT vocabulary) and a
# T5-small language model with T5's vocabulary.
BENCH_REGIONVLM_SIZES = {
    "real": True,
    "image_size": 224,
    "patch_size": 16,
    "vision_hidden": 768,
    "vision_layers": 12,
    "vision_heads": 12,
    "qformer_hidden": 768,
    "qformer_layers": 12,
    "qformer_heads": 12,
    "qformer_vocab": 30522,
    "num_query_tokens": 32,
    "lm_hidden": 512,
    "lm_d_kv": 64,
    "lm_ff": 2048,
    "lm_layers": 6,
    "lm_heads": 8,
    "lm_vocab": 32128,
}


def build_tiny_regionvlm(out: Path, *, name: str = "tiny-regionvlm", sizes: dict | None = None) -> Path:
    """An InstructBLIP + T5 (RegionVLM's architecture) with random weights.

    ``sizes`` overrides the toy sizes (see :data:`BENCH_REGIONVLM_SIZES` for real ones).
    """
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipForConditionalGeneration,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        T5Config,
    )

    z = {**TINY_REGIONVLM_SIZES, **(sizes or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(_SEED)
    lm_tok = _word_level_tokenizer("t5")
    q_tok = _word_level_tokenizer("bert")
    image_processor = BlipImageProcessor(size={"height": z["image_size"], "width": z["image_size"]})
    processor = InstructBlipProcessor(
        image_processor=image_processor,
        tokenizer=lm_tok,
        qformer_tokenizer=q_tok,
        num_query_tokens=z["num_query_tokens"],
    )
    image_token_id = lm_tok.convert_tokens_to_ids("<image>")
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(
            hidden_size=z["vision_hidden"],
            intermediate_size=z["vision_hidden"] * 4 if z["real"] else z["vision_hidden"] * 2,
            num_hidden_layers=z["vision_layers"],
            num_attention_heads=z["vision_heads"],
            image_size=z["image_size"],
            patch_size=z["patch_size"],
        ).to_dict(),
        qformer_config=InstructBlipQFormerConfig(
            vocab_size=max(len(q_tok), z["qformer_vocab"]),
            hidden_size=z["qformer_hidden"],
            num_hidden_layers=z["qformer_layers"],
            num_attention_heads=z["qformer_heads"],
            intermediate_size=z["qformer_hidden"] * 4 if z["real"] else z["qformer_hidden"] * 2,
            encoder_hidden_size=z["vision_hidden"],
            pad_token_id=q_tok.pad_token_id,
            max_position_embeddings=512,
        ).to_dict(),
        text_config=T5Config(
            vocab_size=max(len(lm_tok), z["lm_vocab"]),
            d_model=z["lm_hidden"],
            d_kv=z["lm_d_kv"],
            d_ff=z["lm_ff"],
            num_layers=z["lm_layers"],
            num_decoder_layers=z["lm_layers"],
            num_heads=z["lm_heads"],
            pad_token_id=lm_tok.pad_token_id,
            eos_token_id=lm_tok.eos_token_id,
            decoder_start_token_id=lm_tok.pad_token_id,
            bos_token_id=lm_tok.pad_token_id,
            tie_word_embeddings=False,
        ).to_dict(),
        num_query_tokens=z["num_query_tokens"],
        image_token_index=image_token_id,
    )
    model = InstructBlipForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_random(out, name)
    (out / "region_perception.json").write_text(json.dumps({"regionvlm_points": True}))
    return out
