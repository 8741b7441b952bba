"""SAM as the segmenter: box/points -> mask, and automatic mask proposals.

Two back-ends with one interface: ``segment-anything`` (its predictor and automatic mask
generator; checkpoints are the released ``.pth`` files, or a SAM directory made here) and
``transformers``' ``SamModel`` (Hugging Face ids such as ``facebook/sam-vit-base``, the package's
default segmenter). ``segmenter_backend: auto`` picks by what the segmenter is (``loading``).
The image embedding of a frame is computed once and kept in the feature cache.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..common.feature_cache import FeatureCache
from .errors import ModelLoadError, loud_notice, one_line
from .sources import ResolvedSource, from_pretrained
from .tiny import RANDOM_WEIGHTS_MARKER, mark_random


@dataclass
class Proposals:
    masks: list[np.ndarray]  # boolean masks of the image
    scores: list[float]  # the segmenter's own quality score (higher is better)


class Segmenter(Protocol):
    name: str
    weights_random: bool

    def segment(
        self,
        image_key: str,
        image: np.ndarray,
        *,
        box: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray: ...

    def propose(self, image_key: str, image: np.ndarray) -> Proposals: ...

    def segment_interactive(
        self, image_key: str, image: np.ndarray, *, points: np.ndarray, labels: np.ndarray, prior: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]: ...


# -- segment-anything ------------------------------------------------------------------
TINY_SAM_CONFIG = {
    "img_size": 256,
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "global_attn_indexes": [1],
    "window_size": 4,
    "prompt_embed_dim": 32,
    "decoder_mlp_dim": 64,
    "decoder_heads": 2,
    "iou_head_hidden_dim": 32,
    # random weights: SAM's quality thresholds would reject every mask
    "generator": {"points_per_side": 8, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0},
}


class SamConvStem(torch.nn.Module):
    """:class:`~.conv_stem.ConvStem` in the place of segment-anything's ``PatchEmbed``.

    Why: a 16-pixel patch embedding must learn an outline inside one cell wherever the shape sits in
    it, which a toy encoder trained in minutes does not; stride-2 convolutions do. ``PatchEmbed``
    returns ``(B, H, W, C)``, hence the permute.
    """

    def __init__(self, embed_dim: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        from .conv_stem import ConvStem

        self.stem = ConvStem(embed_dim, widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stem(x).permute(0, 2, 3, 1)


def stem_widths(cfg: dict[str, Any]) -> tuple[int, ...] | None:
    """The conv stem's widths (``conv_stem``: true = four, a list = its widths), None for a patch conv;
    ValueError when the stem's stride is not the config's ``patch_size``."""
    spec = cfg.get("conv_stem")
    if not spec:
        return None
    widths = tuple(int(w) for w in spec) if isinstance(spec, (list, tuple)) else (32, 64, 96, 128)
    patch = int(cfg.get("patch_size", 16))
    if 2 ** len(widths) != patch:
        raise ValueError(f"conv_stem {list(widths)} downsamples {2 ** len(widths)}x, patch_size is {patch}")
    return widths


def build_sam_from_config(cfg: dict[str, Any]):
    """A ``segment_anything`` Sam of any size, from a small JSON config.

    Optional keys (absent in older configs, which then build as before): ``patch_size`` (the
    encoder's stride, 16) and ``conv_stem`` (true or a list of widths, one stride-2 convolution each,
    in place of the patch embedding).
    """
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    img, dim = cfg["img_size"], cfg["prompt_embed_dim"]
    patch = int(cfg.get("patch_size", 16))
    widths = stem_widths(cfg)
    encoder = ImageEncoderViT(
        depth=cfg["encoder_depth"],
        embed_dim=cfg["encoder_embed_dim"],
        img_size=img,
        mlp_ratio=cfg.get("encoder_mlp_ratio", 4),
        norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
        num_heads=cfg["encoder_num_heads"],
        patch_size=patch,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(cfg["global_attn_indexes"]),
        window_size=cfg["window_size"],
        out_chans=dim,
    )
    if widths is not None:
        encoder.patch_embed = SamConvStem(cfg["encoder_embed_dim"], widths)
    return Sam(
        image_encoder=encoder,
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(img // patch, img // patch),
            input_image_size=(img, img),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=cfg.get("decoder_depth", 2), embedding_dim=dim, mlp_dim=cfg["decoder_mlp_dim"],
                num_heads=cfg["decoder_heads"]
            ),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=cfg["iou_head_hidden_dim"],
        ),
    ).eval()


def build_tiny_sam(out: Path) -> Path:
    """Tiny segment-anything SAM, random weights, saved as config.json + model.safetensors."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4321)
    sam = build_sam_from_config(TINY_SAM_CONFIG)
    save_file({k: v.contiguous() for k, v in sam.state_dict().items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(TINY_SAM_CONFIG, indent=1))
    mark_random(out, "tiny-sam")
    return out


# -- a tiny transformers SamModel (random weights), laid out as facebook/sam-vit-base -----------
TINY_HF_SAM = "tiny-hf-sam"  # tests and the loopback hub only (testing/hub.py serves it as the default segmenter)


def build_tiny_hf_sam(out: Path) -> Path:
    """transformers ``SamModel`` + ``SamProcessor`` at toy size (256 px, 32 channels), **random weights**, written
    with ``save_pretrained`` and marked random: loads by the same route as ``facebook/sam-vit-base``."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor
    from transformers.models.sam.configuration_sam import SamMaskDecoderConfig, SamVisionConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(4321)
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, output_channels=32,
                             global_attn_indexes=[1], mlp_dim=64, image_size=256, window_size=4, num_pos_feats=16)
    decoder = SamMaskDecoderConfig(hidden_size=32, mlp_dim=64, num_attention_heads=2, iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision, mask_decoder_config=decoder.to_dict(),
                       prompt_encoder_config={"hidden_size": 32, "image_size": 256, "image_embedding_size": 16})
    SamModel(config).eval().save_pretrained(out)
    SamProcessor(SamImageProcessor(size={"longest_edge": 256}, pad_size={"height": 256, "width": 256})).save_pretrained(
        out
    )
    mark_random(out, TINY_HF_SAM)
    return out


def load_segment_anything(spec: str, device: torch.device):
    """``vit_b:/path/sam_vit_b_01ec64.pth`` (released weights) or a directory made by
    :func:`build_tiny_sam`. Returns (sam, generator kwargs, weights_random); ModelLoadError
    when the spec names nothing, the file is missing or the weights do not load."""
    from segment_anything import sam_model_registry

    path = Path(spec).expanduser()
    if path.is_dir():
        from safetensors.torch import load_file

        for needed in ("config.json", "model.safetensors"):
            if not (path / needed).is_file():
                raise ModelLoadError("unreadable_checkpoint", "segmenter", spec, f"directory {path} has no {needed}")
        try:
            cfg = json.loads((path / "config.json").read_text())
            sam = build_sam_from_config(cfg)
        except Exception as exc:
            raise ModelLoadError("unknown_architecture", "segmenter", spec, f"config.json: {one_line(exc)}") from exc
        try:
            sam.load_state_dict(load_file(str(path / "model.safetensors")))
        except Exception as exc:
            raise ModelLoadError(
                "unreadable_checkpoint", "segmenter", spec, f"{path / 'model.safetensors'}: {one_line(exc)}"
            ) from exc
        return sam.to(device), cfg.get("generator", {}), (path / RANDOM_WEIGHTS_MARKER).exists()
    model_type, _, checkpoint = spec.partition(":")
    if model_type not in sam_model_registry or not checkpoint:
        local = path.is_absolute() or spec.startswith((".", "~"))
        raise ModelLoadError(
            "not_found_local" if local else "unknown_name",
            "segmenter",
            spec,
            (f"no such directory {path.absolute()}; " if local else "")
            + "expected TYPE:CHECKPOINT.pth with TYPE one of "
            f"{sorted(k for k in sam_model_registry if k != 'default')}, or an existing model directory",
        )
    checkpoint_path = Path(checkpoint).expanduser()
    if not checkpoint_path.is_file():
        raise ModelLoadError(
            "not_found_local",
            "segmenter",
            spec,
            f"no such checkpoint file {checkpoint_path} (never looked up on the hub)",
        )
    sam = sam_model_registry[model_type](checkpoint=None)
    try:
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError("unreadable_checkpoint", "segmenter", spec, f"{checkpoint_path}: {one_line(exc)}") from exc
    try:
        sam.load_state_dict(state)
    except Exception as exc:
        raise ModelLoadError(
            "unknown_architecture", "segmenter", spec, f"{checkpoint_path} is not a {model_type} SAM: {one_line(exc)}"
        ) from exc
    return sam.to(device).eval(), {}, False


class SegmentAnythingSegmenter:
    """segment-anything's predictor and automatic mask generator over a cached embedding."""

    def __init__(
        self,
        sam,
        cache: FeatureCache,
        *,
        name: str,
        weights_random: bool,
        generator_kwargs: dict[str, Any] | None = None,
    ) -> None:
        from segment_anything import SamAutomaticMaskGenerator, SamPredictor

        self.name = name
        self.weights_random = weights_random
        self.cache = cache
        self.predictor = SamPredictor(sam)
        self.generator = SamAutomaticMaskGenerator(sam, **(generator_kwargs or {}))
        self.generator.predictor = self.predictor  # share the one (cached) embedding
        self._key: tuple[str, tuple[int, ...]] | None = None
        self._work_shape: tuple[int, ...] | None = None  # the proposals' working copy of the frame (see propose)
        original_set_image = self.predictor.set_image

        def set_image_cached(image: np.ndarray, image_format: str = "RGB") -> None:
            # The generator calls set_image itself, once per crop: reuse the frame's embedding when the
            # "crop" is the whole frame or its working copy (same input size, so the same embedding; only
            # the size masks are returned at differs).
            key = self._key
            if key is not None and image.shape in (key[1], self._work_shape):
                hit = self.cache.get(key[0], "sam_embedding")
                if hit is not None:
                    self.predictor.reset_image()
                    self.predictor.features, _, self.predictor.input_size = hit
                    self.predictor.original_size = image.shape[:2]
                    self.predictor.is_image_set = True
                    return
                original_set_image(image, image_format)
                p = self.predictor
                self.cache.put(key[0], "sam_embedding", (p.features, p.original_size, p.input_size))
                return
            original_set_image(image, image_format)

        self.predictor.set_image = set_image_cached

    @torch.inference_mode()
    def _set(self, image_key: str, image: np.ndarray) -> None:
        self._key = (image_key, image.shape)
        self.predictor.set_image(image)

    def segment(
        self,
        image_key: str,
        image: np.ndarray,
        *,
        box: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """The mask of a box and/or clicks (``labels``: 1 inside, 0 outside; all inside by default).

        One click alone is ambiguous (a part or the whole): the best of SAM's three masks by its
        own quality score. Several prompts are not, and SAM's single-mask output answers them.
        """
        return self._answer(image_key, image, box=box, points=points, labels=labels)[0]

    def segment_interactive(
        self, image_key: str, image: np.ndarray, *, points: np.ndarray, labels: np.ndarray, prior: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """One step of SAM's interactive loop: the mask of all clicks so far, given the previous step's
        low-resolution logits (``prior``, None on the first click); returns the mask and this step's logits.

        Why: without the previous answer each correction click re-solves the object from the clicks alone
        and later clicks barely move the mask; SAM feeds its last logits back as the mask prompt.
        """
        return self._answer(image_key, image, points=points, labels=labels, prior=prior)

    @torch.inference_mode()
    def _answer(self, image_key: str, image: np.ndarray, *, box: np.ndarray | None = None,
                points: np.ndarray | None = None, labels: np.ndarray | None = None,
                prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best mask of the prompts by SAM's own score, and its low-resolution logits."""
        self._set(image_key, image)
        if points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            labels = np.ones(len(points), dtype=np.int64) if labels is None else \
                np.asarray(labels, dtype=np.int64).reshape(-1)
        single_click = box is None and prior is None and points is not None and len(points) == 1
        masks, scores, logits = self.predictor.predict(
            point_coords=points, point_labels=labels, box=box, mask_input=None if prior is None else prior[None],
            multimask_output=single_click,
        )
        best = int(np.argmax(scores))
        return masks[best].astype(bool), logits[best]

    @torch.inference_mode()
    def propose(self, image_key: str, image: np.ndarray) -> Proposals:
        """The automatic mask generator's masks, on the frame's cached embedding.

        The generator post-processes every candidate mask (points x 3) at the size of the image it is
        given: on a frame larger than the model's input (a toy's 128 px against a 640x480 camera) that
        took seconds on a CPU for nothing the embedding can see. So it works on a copy at the input size
        (the embedding is the same) and only the masks it keeps are scaled back to the frame.
        """
        import cv2

        self._set(image_key, image)  # the frame's embedding: computed once, cached
        h, w = image.shape[:2]
        work_h, work_w = self.predictor.transform.get_preprocess_shape(h, w, self.predictor.transform.target_length)
        if work_h * work_w >= h * w:
            records = self.generator.generate(image)
            return Proposals(
                [r["segmentation"].astype(bool) for r in records], [float(r["predicted_iou"]) for r in records]
            )
        small = cv2.resize(image, (work_w, work_h), interpolation=cv2.INTER_AREA)
        self._work_shape = small.shape
        try:
            records = self.generator.generate(small)
        finally:
            self._work_shape = None
            self.predictor.original_size = (h, w)
        masks = [cv2.resize(r["segmentation"].astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128
                 for r in records]
        return Proposals(masks, [float(r["predicted_iou"]) for r in records])


# -- transformers SamModel ---------------------------------------------------------------
class TransformersSamSegmenter:
    """``transformers.SamModel`` (``facebook/sam-vit-base``, the package's default): the same interface.

    Proposals come from a grid of single-point prompts, best of SAM's three masks each,
    de-duplicated by mask IoU.
    """

    def __init__(
        self,
        name_or_path: str,
        cache: FeatureCache,
        device: torch.device,
        points_per_side: int = 8,
        weights_random: bool | None = None,
        model=None,
        processor=None,
    ) -> None:
        from transformers import SamModel, SamProcessor

        self.name = name_or_path
        # loading.load_segmenter passes model and processor, loaded with errors that say why
        model = model if model is not None else SamModel.from_pretrained(name_or_path)
        self.model = model.to(device).eval()
        self.processor = processor if processor is not None else SamProcessor.from_pretrained(name_or_path)
        self.cache = cache
        self.device = device
        self.points_per_side = points_per_side
        local = Path(name_or_path)
        self.weights_random = (local / RANDOM_WEIGHTS_MARKER).exists() if weights_random is None else weights_random

    def _embedding(self, image_key: str, image: np.ndarray):
        def compute():
            inputs = self.processor(images=image, return_tensors="pt").to(self.device)
            return self.model.get_image_embeddings(inputs["pixel_values"]), inputs

        return self.cache.get_or_compute(image_key, "hf_sam_embedding", compute)

    @torch.inference_mode()
    def _masks(self, image_key: str, image: np.ndarray, multimask: bool = True, prior: np.ndarray | None = None,
               **prompts) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks ``(prompts, candidates, H, W)`` at the image's size, their scores ``(prompts, candidates)`` and
        low-resolution logits; the image embedding comes from the feature cache (computed once per frame).
        ``prior``: a previous answer's low-resolution logits, SAM's mask prompt."""
        embedding, base = self._embedding(image_key, image)
        inputs = self.processor(images=image, return_tensors="pt", **prompts).to(self.device)
        inputs.pop("pixel_values", None)
        if prior is not None:
            inputs["input_masks"] = torch.as_tensor(prior, dtype=torch.float32, device=self.device)[None, None]
        out = self.model(image_embeddings=embedding, multimask_output=multimask, **inputs)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), base["original_sizes"].cpu(), base["reshaped_input_sizes"].cpu()
        )[0]
        return masks.numpy().astype(bool), out.iou_scores.cpu().numpy()[0], out.pred_masks.cpu().numpy()[0]

    def segment(
        self,
        image_key: str,
        image: np.ndarray,
        *,
        box: np.ndarray | None = None,
        points: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> np.ndarray:
        """As :meth:`SegmentAnythingSegmenter.segment` (``labels``: 1 inside, 0 outside): one click alone is
        ambiguous and gets the best of SAM's three masks by its own score; several prompts get SAM's single mask."""
        return self._answer(image_key, image, box=box, points=points, labels=labels)[0]

    def segment_interactive(
        self, image_key: str, image: np.ndarray, *, points: np.ndarray, labels: np.ndarray, prior: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`SegmentAnythingSegmenter.segment_interactive`: the previous logits as SAM's mask prompt."""
        return self._answer(image_key, image, points=points, labels=labels, prior=prior)

    def _answer(self, image_key: str, image: np.ndarray, *, box: np.ndarray | None = None,
                points: np.ndarray | None = None, labels: np.ndarray | None = None,
                prior: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The best mask of the prompts by SAM's own score, and its low-resolution logits."""
        prompts: dict[str, Any] = {}
        if box is not None:
            prompts["input_boxes"] = [[[float(v) for v in np.asarray(box, dtype=np.float64).reshape(4)]]]
        if points is not None:
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
            flags = [1] * len(points) if labels is None else [int(v) for v in np.asarray(labels).reshape(-1)]
            prompts["input_points"] = [[[[float(x), float(y)] for x, y in points]]]
            prompts["input_labels"] = [[flags]]
        single_click = box is None and prior is None and points is not None and len(points) == 1
        masks, scores, logits = self._masks(image_key, image, multimask=single_click, prior=prior, **prompts)
        best = int(np.argmax(scores[0]))
        return masks[0, best], logits[0, best]

    def propose(self, image_key: str, image: np.ndarray) -> Proposals:
        h, w = image.shape[:2]
        n = self.points_per_side
        grid = [[[(i + 0.5) * w / n, (j + 0.5) * h / n]] for j in range(n) for i in range(n)]
        masks, scores, _ = self._masks(image_key, image, input_points=[grid], input_labels=[[[1]] * len(grid)])
        best = scores.argmax(axis=1)
        cand = [(float(scores[i, b]), masks[i, b]) for i, b in enumerate(best) if masks[i, b].any()]
        cand.sort(key=lambda c: -c[0])
        kept: list[tuple[float, np.ndarray]] = []
        for score, mask in cand:
            if all((mask & k).sum() / max((mask | k).sum(), 1) < 0.7 for _, k in kept):
                kept.append((score, mask))
        return Proposals([m for _, m in kept], [s for s, _ in kept])


# -- superpixels: a proposal source that needs no learned weights -----------------------
class SuperpixelProposer:
    """Felzenszwalb graph segments of the image as proposals (scikit-image).

    For CPU-only or random-weight runs: a SAM with random weights returns one uniform mask
    for every prompt, which leaves nothing to score. Segments are not objects, but they
    are real regions of the image, and the referring pipeline runs on them unchanged.
    """

    name = "superpixels"
    weights_random = False

    def __init__(self, cache: FeatureCache, scale: float = 400.0, min_area_fraction: float = 0.01) -> None:
        self.cache = cache
        self.scale = scale
        self.min_area_fraction = min_area_fraction

    def propose(self, image_key: str, image: np.ndarray) -> Proposals:
        from skimage.segmentation import felzenszwalb

        min_size = max(1, int(self.min_area_fraction * image.shape[0] * image.shape[1]))
        labels = felzenszwalb(image, scale=self.scale, sigma=0.8, min_size=min_size)
        masks = [labels == i for i in range(labels.max() + 1)]
        return Proposals(masks, [float(m.mean()) for m in masks])  # larger segments first


def load(resolved: ResolvedSource, cache: FeatureCache, device: torch.device):
    """The segmenter of a resolved spec (``loading.load_segmenter``): ``hf-sam`` through transformers,
    ``sam`` through segment-anything (a tiny-SAM directory, a hub snapshot of one, or TYPE:CHECKPOINT)."""
    if resolved.backend == "hf-sam":
        from transformers import SamModel, SamProcessor

        model = from_pretrained(SamModel, resolved.source)
        processor = from_pretrained(SamProcessor, resolved.source)
        segmenter = TransformersSamSegmenter(resolved.name, cache, device, model=model, processor=processor,
                                             weights_random=resolved.weights_random)
        if segmenter.weights_random:
            loud_notice(f"{resolved.name}: SAM with RANDOM WEIGHTS (a test model); its masks are not segmentations.")
        segmenter.commit, segmenter.revision = resolved.commit, resolved.revision
        return segmenter
    sam, generator_kwargs, weights_random = load_segment_anything(resolved.ref, device)
    if weights_random:
        loud_notice(f"{resolved.name}: SAM with RANDOM WEIGHTS (tiny offline model); its masks are not segmentations.")
    segmenter = SegmentAnythingSegmenter(
        sam, cache, name=resolved.name, weights_random=weights_random, generator_kwargs=generator_kwargs
    )
    segmenter.commit, segmenter.revision = resolved.commit, resolved.revision
    return segmenter
