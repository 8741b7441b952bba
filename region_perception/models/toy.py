"""Toy models: the real architectures, small, with word-level tokenizers over the synthetic world.

Why: a region pipeline can only be shown to use the region with weights that learnt something. These
builders make RegionVLM (InstructBLIP + T5) and Florence-2 (DaViT + BART) small enough to train from
scratch on the synthetic shapes on a CPU in minutes (``make train-toy``); the trained directories are
shipped under ``region_perception/data/toy/<name>/`` and load through the same ``from_pretrained``
path as released checkpoints. Before training their weights are random and they are marked so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .registry import TOY_MODELS  # the one table (training.toys imports it from here)
from .tiny import _FLORENCE_PARSE_TASKS, mark_random

TOY_NOTE = "toy model trained on synthetic shapes"
TOY_DIR = Path(__file__).resolve().parent.parent / "data" / "toy"

# Prompts whose words the toy tokenizers must know (besides the synthetic vocabulary).
_PROMPTS = (
    "What is the category of this region? Answer the question using one of these names: a, b.",
    "What is the category of this region? Answer the question using COCO-80 category names.",
    "What does the region describe? What is the region? Locate in the image with mask",
    "What is the polygon mask of region",
    "Give a referring expression for this region, the region, Region [0].",  # backend.REFER_INSTRUCTION
)


def toy_words() -> list[str]:
    """The synthetic world's words and every word of the prompts the engine sends (sorted)."""
    from ..datasets.synthetic import VOCABULARY

    words = set(VOCABULARY)
    for prompt in _PROMPTS:
        words.update(re.findall(r"[a-z]+", prompt.lower()))
    return sorted(words)


def toy_path(name: str) -> Path:
    """The packaged directory of a toy model (trained by ``make train-toy``)."""
    if name not in TOY_MODELS:
        raise ValueError(f"unknown toy model {name!r}; known: {', '.join(TOY_MODELS)}")
    return TOY_DIR / name


def _word_vocab(specials: list[str], words: list[str]) -> dict[str, int]:
    pieces = specials + words + [str(i) for i in range(101)] + list("[]:?.,!'\"-()")
    return {w: i for i, w in enumerate(dict.fromkeys(pieces))}


def _tokenizer(kind: str, words: list[str]):
    """Word-level tokenizers: ``bert`` (Q-Former), ``t5`` (RegionVLM's LM) or ``bart`` (Florence-2)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = {
        "bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        "t5": ["<pad>", "</s>", "<unk>"],
        "bart": ["<s>", "<pad>", "</s>", "<unk>"],
    }[kind]
    vocab = _word_vocab(specials, words)
    unk = "[UNK]" if kind == "bert" else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    if kind == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
            mask_token="[MASK]",
        )
    if kind == "t5":
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")
    # BART: "<s> text </s>", as Florence-2's own tokenizer writes labels
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )


# ---------------------------------------------------------------- coordinate-aware initialisation
# Why: a released model learnt over days which text token means which place in the image; a toy trained
# from scratch in minutes on a CPU mostly does not find it. So the tokens that carry coordinates (the
# Q-Former's number words "0".."100", Florence-2's <loc_i>) and the image's position embeddings start as
# the SAME Fourier features of their position. Everything stays trainable; this only chooses the start.

FOURIER_DIMS = 16  # per axis: sin and cos at 8 frequencies


def fourier(values: torch.Tensor, dims: int = FOURIER_DIMS) -> torch.Tensor:
    """(N,) positions in [0, 1] -> (N, dims) sin/cos features at geometric frequencies."""
    freqs = torch.pi * torch.logspace(-1, 3, dims // 2, base=2.0)
    angles = values.float().unsqueeze(-1) * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


@torch.no_grad()
def _coordinate_init_regionvlm(model, q_tok, grid: int) -> None:
    """ViT patch position (x, y) and Q-Former number words share Fourier features (x: dims 0-15, y: 16-31)."""
    f = FOURIER_DIMS
    pos = model.vision_model.embeddings.position_embedding  # (1, 1 + grid*grid, D)
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    pos[0, 1:, :f] = fourier(xs.flatten())
    pos[0, 1:, f : 2 * f] = fourier(ys.flatten())
    words = model.qformer.embeddings.word_embeddings.weight
    ids = torch.tensor([q_tok.convert_tokens_to_ids(str(n)) for n in range(101)])
    feats = fourier(torch.arange(101, dtype=torch.float32) / 100)
    words[ids, :f] = feats
    words[ids, f : 2 * f] = feats


@torch.no_grad()
def _coordinate_init_florence2(model, tokenizer, cells: int) -> None:
    """Image grid columns/rows and <loc_i> tokens share Fourier features; the image projection starts as identity."""
    f = FOURIER_DIMS
    proj = model.model.multi_modal_projector
    half = proj.image_position_embed.row_embeddings.weight.shape[1]
    steps = proj.image_position_embed.column_embeddings.weight.shape[0]
    # the last DaViT stage is ``cells`` (image size / downsample) a side; position c covers [c, c + 1) / cells
    centres = (torch.arange(steps, dtype=torch.float32) + 0.5) / cells
    proj.image_position_embed.column_embeddings.weight[:, :f] = fourier(centres)
    proj.image_position_embed.row_embeddings.weight[:, :f] = fourier(centres)
    w = proj.image_projection.weight
    if w.shape[0] == w.shape[1]:
        w.copy_(torch.eye(w.shape[0]) + 0.02 * torch.randn_like(w))
    emb = model.get_input_embeddings().weight
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(f"<loc_{i}>") for i in range(1000)])
    feats = fourier((torch.arange(1000, dtype=torch.float32) + 0.5) / 1000)
    emb[ids, :f] = feats
    emb[ids, half : half + f] = feats


# Q-Former dims the wiring below uses (beyond the Fourier dims 0-31): slot markers and the query marker
_X_SLOT, _Y_SLOT, _QUERY = 40, 41, 42


@torch.no_grad()
def _region_wiring_regionvlm(model, gain: float = 1.0) -> None:
    """Start the Q-Former reading the points: query tokens gather the x and y words, then look there.

    Why: the coordinate init alone leaves a Q-Former that must discover, by gradient, that "[x y]" text
    names a place; on a CPU in minutes it mostly does not. Here layer 0's self-attention starts with two
    heads that average the Fourier features of the x words (text positions 2, 6, 10, ... of "[CLS] [ x y ]
    [ x y ] ...") and of the y words into dims 0-31 of every query token, and every head of each layer's
    cross-attention starts comparing those dims with the patches' Fourier positions, so the queries look
    at the region from the first step. All of it stays trainable; the rest keeps its random start.
    """
    f2 = 2 * FOURIER_DIMS
    q = model.qformer
    hidden = q.config.hidden_size
    heads = q.config.num_attention_heads
    head = hidden // heads
    pos = q.embeddings.position_embeddings.weight
    slots = torch.arange(pos.shape[0])
    pos[:, [_X_SLOT, _Y_SLOT]] = 0.0
    pos[slots % 4 == 2, _X_SLOT] = 2.0
    pos[slots % 4 == 3, _Y_SLOT] = 2.0
    tokens = model.query_tokens
    tokens.normal_(0.0, 0.02)
    tokens[..., :f2] = 0.0
    tokens[..., _QUERY] = 3.0
    att = q.encoder.layer[0].attention.attention
    for h, (slot, src) in enumerate(((_X_SLOT, slice(0, FOURIER_DIMS)), (_Y_SLOT, slice(FOURIER_DIMS, f2)))):
        rows = slice(h * head, (h + 1) * head)
        att.query.weight[rows] = 0.0
        att.key.weight[rows] = 0.0
        att.value.weight[rows] = 0.0
        att.query.weight[h * head, _QUERY] = gain
        att.key.weight[h * head, slot] = gain
        att.value.weight[h * head : h * head + FOURIER_DIMS, src] = torch.eye(FOURIER_DIMS)
    dense = q.encoder.layer[0].attention.output.dense
    dense.weight.normal_(0.0, 0.01)
    dense.bias.zero_()
    dense.weight[:FOURIER_DIMS, :FOURIER_DIMS] += torch.eye(FOURIER_DIMS)
    dense.weight[FOURIER_DIMS:f2, head : head + FOURIER_DIMS] += torch.eye(FOURIER_DIMS)
    for layer in q.encoder.layer:
        cross = getattr(layer, "crossattention", None)
        if cross is None:
            continue
        for h in range(heads):
            rows = slice(h * head, h * head + min(head, f2))
            width = rows.stop - rows.start
            cross.attention.query.weight[rows] = 0.0
            cross.attention.key.weight[rows] = 0.0
            cross.attention.query.weight[rows, :width] = gain * torch.eye(width)
            cross.attention.key.weight[rows, :width] = gain * torch.eye(width)


# Florence-2's text width beyond the tower's: channels the tower never writes, where the wiring below keeps
# positions and markers apart from the image content (which keeps all of the tower's channels)
FLORENCE2_QUIET = 16


def florence2_channels(tower: int) -> dict:
    """Where the wiring keeps what (indices into BART's width; the tower's channels come first)."""
    q = tower
    return {"px": [q, q + 1], "py": [q + 2, q + 3], "loc": [q + 4, q + 5], "bx": [q + 6, q + 7],
            "by": [q + 8, q + 9], "img": q + 10, "txt": q + 11, "isloc": q + 12, "par": q + 13}


def half_turn(values: torch.Tensor) -> torch.Tensor:
    """Positions in [0, 1] -> unit vectors (cos, sin) of pi * x: the mean of two keeps the midpoint's direction."""
    a = torch.pi * values.float()
    return torch.stack([torch.cos(a), torch.sin(a)], dim=-1)


@torch.no_grad()
def _region_wiring_florence2(model, tokenizer, cells: int, *, gather: float = 1.5, image_key: float = 6.0,
                             look: float = 5.0, self_look: float = 48.0) -> None:
    """Start BART's encoder reading the box: text tokens gather the box's centre, then copy the cells there.

    Why: Florence-2's only region input is the box as ``<loc_i>`` text; from a random BART, 1200 steps never
    linked those tokens to image cells (one caption for every box of a scene). Here, in channels the tower
    never writes (``FLORENCE2_QUIET`` beyond its width): image cells carry their column and row as unit
    vectors (BART's position embeddings), ``<loc_i>`` tokens their coordinate the same way, and markers say
    image / text / location token / even-or-odd position (the engine's prompts put x at even positions).
    Encoder layer 0: head 0 averages the even ``<loc>`` tokens' vectors (x1, x2: the direction of the mean
    is the centre's) into every text token, head 1 the odd ones (y); image tokens gather only zeros.
    Layer 1: every head compares a token's gathered centre (image tokens: their own position) with the
    cells' positions and copies the content there, a quarter of the tower's channels each; so every text
    token carries the region's cells from the first step, image tokens keep their own. All trainable.
    """
    tower = model.config.vision_config.embed_dim[-1]
    text = model.model.language_model
    d = text.config.d_model
    if d - tower < FLORENCE2_QUIET:
        raise ValueError(f"toy Florence-2 wiring needs {FLORENCE2_QUIET} channels beyond the tower's {tower}")
    ch = florence2_channels(tower)
    quiet = list(range(tower, d))
    # image side: the tower's channels as they are, quiet channels zero but the image marker
    proj = model.model.multi_modal_projector
    proj.image_projection.weight.zero_()
    proj.image_projection.weight[:tower, :tower] = torch.eye(tower)
    proj.image_position_embed.row_embeddings.weight.zero_()
    proj.image_position_embed.column_embeddings.weight.zero_()
    proj.image_proj_norm.weight[quiet] = 0.0
    proj.image_proj_norm.bias[quiet] = 0.0
    proj.image_proj_norm.bias[ch["img"]] = 1.0
    # text side: the text marker on every token, the coordinate and marker on <loc_i>
    emb = model.get_input_embeddings().weight
    emb[:, quiet] = 0.0
    emb[:, ch["txt"]] = 1.0
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(f"<loc_{i}>") for i in range(1000)])
    emb[ids.unsqueeze(1), torch.tensor(ch["loc"])] = half_turn((torch.arange(1000) + 0.5) / 1000)
    emb[ids, ch["isloc"]] = 1.0
    # positions: image tokens first (a pooled one, then the cells row by row), then the text
    enc = text.encoder
    pos = enc.embed_positions.weight
    off = getattr(enc.embed_positions, "offset", 0)
    pos[:, quiet] = 0.0
    centres = half_turn((torch.arange(cells) + 0.5) / cells)
    for r in range(cells):
        for c in range(cells):
            at = off + 1 + r * cells + c
            pos[at, ch["px"]] = centres[c]
            pos[at, ch["py"]] = centres[r]
    first_text = 1 + cells * cells
    seq = torch.arange(first_text, pos.shape[0] - off)
    pos[off + seq, ch["par"]] = 1.0 - 2.0 * (seq % 2).float()  # +1 at even positions
    heads = enc.config.encoder_attention_heads
    hd = d // heads

    def clear(att, h: int) -> slice:
        r = slice(h * hd, (h + 1) * hd)
        for lin in (att.q_proj, att.k_proj, att.v_proj):
            lin.weight[r] = 0.0
            lin.bias[r] = 0.0
        att.out_proj.weight[:, r] = 0.0
        return r

    # layer 0: heads 0 / 1 gather the x / y location tokens' vectors into bx / by
    att = enc.layers[0].self_attn
    for h, (sign, dst) in enumerate(((1.0, ch["bx"]), (-1.0, ch["by"]))):
        clear(att, h)
        b = h * hd
        att.q_proj.weight[b, ch["txt"]] = gather
        att.k_proj.weight[b, ch["isloc"]] = 2.0 * gather
        att.k_proj.weight[b, ch["par"]] = sign * gather
        att.q_proj.weight[b + 1, ch["img"]] = image_key
        att.k_proj.weight[b + 1, ch["img"]] = image_key
        for j in range(2):
            att.v_proj.weight[b + j, ch["loc"][j]] = 1.0
            att.out_proj.weight[dst[j], b + j] = 1.0
    att.out_proj.weight[quiet, 2 * hd:] = 0.0
    att.out_proj.bias[quiet] = 0.0
    # layer 1: every head looks up the cells at the gathered centre and copies a quarter of their content
    att = enc.layers[1].self_attn
    width = -(-tower // heads)
    for h in range(heads):
        clear(att, h)
        b = h * hd
        for j in range(2):
            for k, (box, own) in enumerate(((ch["bx"], ch["px"]), (ch["by"], ch["py"]))):
                att.q_proj.weight[b + 2 * k + j, box[j]] = look
                att.q_proj.weight[b + 2 * k + j, own[j]] = self_look
                att.k_proj.weight[b + 2 * k + j, own[j]] = look
        lo, hi = h * width, min(tower, (h + 1) * width)
        att.v_proj.weight[b : b + hi - lo, lo:hi] = torch.eye(hi - lo)
        att.out_proj.weight[lo:hi, b : b + hi - lo] = torch.eye(hi - lo)
    att.out_proj.bias.zero_()
    # the feed-forward blocks leave the quiet channels to the wiring
    for layer in enc.layers:
        layer.fc2.weight[quiet] = 0.0
        layer.fc2.bias[quiet] = 0.0


TOY_REGIONVLM_SIZES = {
    "image_size": 128, "patch_size": 16, "vision_hidden": 128, "vision_layers": 4, "vision_heads": 4,
    "qformer_hidden": 128, "qformer_layers": 2, "qformer_heads": 4, "num_query_tokens": 8,
    "lm_hidden": 128, "lm_layers": 2, "lm_heads": 4,
    # an early-convolution stem instead of the one 16-px patch conv (models/regionvlm_model.py): the
    # tower then learns shape in its stage-0 pre-training (~97 % instead of ~70 %)
    "conv_stem": True,
}


def build_toy_regionvlm(out: Path, *, seed: int = 0, sizes: dict | None = None) -> Path:
    """InstructBLIP + T5 (RegionVLM's architecture), toy-sized, RANDOM weights until trained."""
    from transformers import (
        BlipImageProcessor,
        InstructBlipConfig,
        InstructBlipProcessor,
        InstructBlipQFormerConfig,
        InstructBlipVisionConfig,
        T5Config,
    )

    z = {**TOY_REGIONVLM_SIZES, **(sizes or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    words = toy_words()
    lm_tok, q_tok = _tokenizer("t5", words), _tokenizer("bert", words)
    processor = InstructBlipProcessor(
        image_processor=BlipImageProcessor(size={"height": z["image_size"], "width": z["image_size"]}),
        tokenizer=lm_tok,
        qformer_tokenizer=q_tok,
        num_query_tokens=z["num_query_tokens"],
    )
    h = z["lm_hidden"]
    config = InstructBlipConfig(
        vision_config=InstructBlipVisionConfig(
            hidden_size=z["vision_hidden"], intermediate_size=z["vision_hidden"] * 2,
            num_hidden_layers=z["vision_layers"], num_attention_heads=z["vision_heads"],
            image_size=z["image_size"], patch_size=z["patch_size"],
            # BLIP-2's default (1e-10) starts a ViT that sees nothing but positions: fine for released
            # weights, fatal from scratch (the tower's output would not depend on the image)
            initializer_range=0.02,
            conv_stem=bool(z["conv_stem"]),  # read by RegionVLMForConditionalGeneration, saved in config.json
        ).to_dict(),
        qformer_config=InstructBlipQFormerConfig(
            vocab_size=len(q_tok), hidden_size=z["qformer_hidden"], num_hidden_layers=z["qformer_layers"],
            num_attention_heads=z["qformer_heads"], intermediate_size=z["qformer_hidden"] * 2,
            encoder_hidden_size=z["vision_hidden"], pad_token_id=q_tok.pad_token_id, max_position_embeddings=128,
            cross_attention_frequency=1,  # every layer looks at the image (the released one: every other)
        ).to_dict(),
        text_config=T5Config(
            vocab_size=len(lm_tok), d_model=h, d_kv=h // z["lm_heads"], d_ff=h * 2, num_layers=z["lm_layers"],
            num_decoder_layers=z["lm_layers"], num_heads=z["lm_heads"], pad_token_id=lm_tok.pad_token_id,
            eos_token_id=lm_tok.eos_token_id, decoder_start_token_id=lm_tok.pad_token_id,
            bos_token_id=lm_tok.pad_token_id, tie_word_embeddings=False, dropout_rate=0.0,
        ).to_dict(),
        num_query_tokens=z["num_query_tokens"],
        image_token_index=lm_tok.convert_tokens_to_ids("<image>"),
    )
    from .regionvlm_model import RegionVLMForConditionalGeneration

    model = RegionVLMForConditionalGeneration(config).eval()
    with torch.no_grad():  # T5 starts an untied head at std 1: logits ~sqrt(d_model) too large to learn from
        model.language_model.lm_head.weight.normal_(0.0, h**-0.5)
    _coordinate_init_regionvlm(model, q_tok, z["image_size"] // z["patch_size"])
    if z["qformer_hidden"] >= 64 and z["vision_hidden"] >= 2 * FOURIER_DIMS:
        _region_wiring_regionvlm(model)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_random(out, "toy-regionvlm (untrained)")
    (out / "region_perception.json").write_text(json.dumps({"regionvlm_points": True}))
    return out


# downsample 16 (the released DaViT: 32): an 8x8 grid at 128 pixels, so a small shape has a cell of its own.
# depths [0, 0, 1, 1]: the first two stages are only their strided convolutions, both DaViT blocks work on
# the 8x8 grid: a step costs a third of [1, 1, 2, 1]'s and the pre-trained tower reads shape better (96 %).
# quiet: BART is that much wider than the tower, for the region wiring (0: no wiring, coordinate init only)
TOY_FLORENCE2_SIZES = {"image_size": 128, "hidden": 128, "layers": 2, "downsample": 16, "depths": [0, 0, 1, 1],
                       "quiet": FLORENCE2_QUIET}


def build_toy_florence2(out: Path, *, seed: int = 0, sizes: dict | None = None) -> Path:
    """Florence-2 (DaViT + BART), toy-sized, RANDOM weights until trained."""
    from transformers import (
        BartConfig,
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
    )
    from transformers.models.florence2.configuration_florence2 import Florence2VisionConfig

    z = {**TOY_FLORENCE2_SIZES, **(sizes or {})}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer = _tokenizer("bart", toy_words())
    tokenizer.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<poly>", "</poly>", "<sep>"])
    size, hidden, down = z["image_size"], z["hidden"], int(z["downsample"])
    width = hidden + int(z.get("quiet", 0))  # BART's width: the tower's plus the wiring's channels
    if down not in (16, 32):
        raise ValueError(f"toy Florence-2 downsample {down}: expected 16 or 32")
    image_processor = CLIPImageProcessor(
        size={"height": size, "width": size}, do_center_crop=False, crop_size={"height": size, "width": size},
        image_seq_length=1 + (size // down) ** 2,  # one token per DaViT cell, plus one pooled token
    )
    processor = Florence2Processor(
        image_processor=image_processor, tokenizer=tokenizer, post_processor_config=_FLORENCE_PARSE_TASKS
    )
    vision = Florence2VisionConfig(
        depths=list(z["depths"]), embed_dim=[32, 64, 96, hidden], num_heads=[1, 2, 3, 4], num_groups=[1, 2, 3, 4],
        patch_stride=[4, 2, 2, 2 if down == 32 else 1], window_size=4, projection_dim=width, drop_path_rate=0.0,
    )
    text = BartConfig(
        vocab_size=len(tokenizer), d_model=width, encoder_layers=z["layers"], decoder_layers=z["layers"],
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=width * 2,
        decoder_ffn_dim=width * 2, max_position_embeddings=256, dropout=0.0, attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    config = Florence2Config(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_id=tokenizer.image_token_id
    )
    model = Florence2ForConditionalGeneration(config).eval()
    if width > hidden and z["layers"] >= 2:  # the wiring needs two encoder layers: gather, then look
        _region_wiring_florence2(model, tokenizer, size // down)
    else:
        _coordinate_init_florence2(model, tokenizer, size // down)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    mark_random(out, "toy-florence2 (untrained)")
    return out


BUILDERS = {"regionvlm": build_toy_regionvlm, "florence2": build_toy_florence2}


def mark_trained(out: Path, *, base: str, data: str, steps: int, metrics: dict | None = None,
                 synthetic: bool | None = None) -> None:
    """After training: drop the random marker and say what the weights learnt from."""
    from .tiny import RANDOM_WEIGHTS_MARKER

    (Path(out) / RANDOM_WEIGHTS_MARKER).unlink(missing_ok=True)
    meta_path = Path(out) / "region_perception.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    synthetic = "synthetic" in data if synthetic is None else synthetic
    meta.update({"trained": True, "note": TOY_NOTE if synthetic else f"trained on {data}",
                 "base": base, "data": data, "steps": steps, "weights_random": False})
    if metrics:
        meta["metrics"] = metrics
    meta_path.write_text(json.dumps(meta, indent=1))
