"""The region engine: one object that answers caption / ask / classify / refer / comprehend queries.

Plain Python (no rclpy): the CLI, the ROS node and the benchmarks all call it. Per frame,
the vision encoder, the SAM embedding and the mask proposals are computed once and kept
in a bounded feature cache; every query on that frame reuses them.

Every task runs as a batch (:mod:`.batching`): a single query is a batch of one, so each
task method below is a thin entry point (its argument checks, then :func:`run_items`
under the engine's lock) over the same code the node's cross-query batching uses.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import torch

from ..common.feature_cache import FeatureCache
from ..common.timing import Timings
from ..geometry.proposals import filter_proposals
from ..geometry.regions import Region, RegionError
from .batch import BatchItem, FramePass, run_items
from .config import EngineConfig
from .conversation import ConversationStore
from .results import (
    TASKS,
    ImageError,
    RegionAnswer,
    TaskError,
    TaskResult,
    check_image,
    check_text,
    query_errors,
)
from .scoring import sentence_losses
from .settings import DEFAULT, UserSettings, describe_sources, fallback_settings, flatten, model_own_settings

__all__ = [
    "TASKS",
    "BatchItem",
    "EngineConfig",
    "ImageError",
    "RegionAnswer",
    "RegionEngine",
    "TaskError",
    "TaskResult",
    "UserSettings",
    "check_image",
    "check_text",
    "query_errors",
    "sentence_losses",
]


class RegionEngine:
    """Answers region queries with one region model, one segmenter and a feature cache."""

    # "facebook/sam-vit-base: no_network" when the package's default segmenter could not be had and the engine runs
    # with none (as a model's ``fallback_from``); "" otherwise. Set by :meth:`load`.
    segmenter_fallback: str = ""

    def __init__(
        self, config: EngineConfig, model, segmenter=None, proposer=None, cache: FeatureCache | None = None
    ) -> None:
        self.config = config
        # the settings that are not the package defaults, and where each came from (results and diagnostics)
        self.settings: dict[str, dict] = describe_sources(config, UserSettings.everything(config).resolve({})[1])
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
    def load(cls, settings: EngineConfig | UserSettings) -> RegionEngine:
        """Load the model, then the rest with the settings resolved: what the user set, else the model's own
        (its ``region_perception.json``), else the package defaults. A whole :class:`EngineConfig` is taken
        as it is (the model's own settings do not apply)."""
        from ..models.loading import load_region_model, resolve_device, resolve_dtype

        user = settings if isinstance(settings, UserSettings) else UserSettings.everything(settings)
        config = user.loading_config()
        if config.refer_route not in ("proposals", "native"):  # a user's mistake fails before minutes of loading
            raise ValueError(f"refer_route {config.refer_route!r}: expected proposals or native")
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        from .vocabulary import check_snap_model

        check_snap_model(config.snap_model, config.snap_model_revision)  # fails now, not at the first CLASSIFY
        model = load_region_model(
            config.model, device, dtype, trust_remote_code=config.trust_remote_code,
            fallback_model=config.fallback_model, revision=config.model_revision,
        )
        own = model_own_settings(getattr(model, "meta", {}) or {}, getattr(model, "directory", None))
        config, sources = user.resolve(own)
        engine = cls._assemble(config, model, device, segmenter_chosen=sources["segmenter"] != DEFAULT)
        engine.settings = describe_sources(config, sources, own)
        if engine.segmenter_fallback:  # the default segmenter could not be had: say what runs instead, and why
            engine.settings.update(fallback_settings(config, engine.config, engine.segmenter_fallback))
        return engine

    @classmethod
    def _assemble(cls, config: EngineConfig, model, device: torch.device, *,
                  segmenter_chosen: bool = True) -> RegionEngine:
        """The engine around a loaded model: test aids, segmenter, proposals, feature cache.

        ``segmenter_chosen`` false: ``config.segmenter`` is the package default, which nobody set; if that
        default cannot be had offline the engine runs with no segmenter (its ``config`` then says ``none``, and
        superpixel proposals where they were ``sam``; ``segmenter_fallback`` says why), never with random weights.
        """
        from ..models.loading import load_segmenter_or_none
        from ..models.sam import SuperpixelProposer

        if config.refer_route not in ("proposals", "native"):
            raise ValueError(f"refer_route {config.refer_route!r}: expected proposals or native")
        cache = FeatureCache(config.feature_cache_frames)
        if config.fault_every > 0:
            from ..models.faults import FaultInjectingBackend

            model = FaultInjectingBackend(model, config.fault_every)
        if config.hold_model_s > 0:
            from ..models.faults import HoldingBackend

            model = HoldingBackend(model, config.hold_model_s)
        segmenter = fallback = None
        if config.segmenter not in ("", "none"):
            segmenter, fallback = load_segmenter_or_none(
                config.segmenter, config.segmenter_backend, cache, device, revision=config.segmenter_revision,
                chosen=segmenter_chosen,
            )
        if fallback is not None:
            proposals = "superpixels" if config.proposals == "sam" else config.proposals
            config = dataclasses.replace(config, segmenter="none", proposals=proposals)
        if config.proposals == "superpixels":
            proposer = SuperpixelProposer(cache)
        elif config.proposals == "sam":
            if segmenter is None:
                raise ValueError("proposals: sam needs a segmenter (segmenter is 'none')")
            proposer = segmenter
        else:
            raise ValueError(f"proposals {config.proposals!r}: expected sam or superpixels")
        engine = cls(config, model, segmenter, proposer, cache)
        engine.segmenter_fallback = str(fallback) if fallback is not None else ""
        return engine

    def settings_values(self) -> dict:
        """Every engine setting in force, flat (``proposal_filter.max_proposals``)."""
        return flatten(dataclasses.asdict(self.config))

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

    # -- kept for callers of the engine's steps (tests/test_batching.py): thin delegates ----------
    def _features(self, key: str, image: np.ndarray, timings: Timings):
        """The frame's vision features through the cache (see :class:`FramePass`)."""
        return FramePass(self, image, key, timings).features

    def _refer_rows(self, image: np.ndarray, key: str, feats, timings: Timings):
        """A frame's proposals and their drawn, encoded and boxed rows (see :meth:`FramePass.refer_rows`)."""
        return FramePass(self, image, key, timings, feats).refer_rows()

    def _text(self, text: str, what: str) -> str:
        return check_text(text, what, self.config.max_text_chars)

    def check_answers_questions(self) -> None:
        """TaskError if the model has no free-question task (ASK): known before any frame is read."""
        if not getattr(self.model, "answers_questions", True):
            raise TaskError(
                f"{self.model.name} does not answer free questions: use CAPTION or CLASSIFY, "
                "or a RegionVLM model for ASK"
            )

    # -- tasks: each a batch of one ---------------------------------------------------------------
    def _one(self, image: np.ndarray, item: BatchItem, frame_key: str | None) -> TaskResult:
        with self.lock:
            out = run_items(self, image, [item], frame_key)[0]
        if isinstance(out, BaseException):
            raise out
        return out

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
        item = BatchItem("caption", list(regions), max_new_tokens=max_new_tokens, num_beams=num_beams)
        return self._one(image, item, frame_key)

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
        item = BatchItem(
            "ask",
            list(regions),
            question,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            conversation_id=conversation_id,
        )
        return self._one(image, item, frame_key)

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
        item = BatchItem("classify", list(regions), labels=labels, rank=rank, vocabulary_name=vocabulary_name)
        return self._one(image, item, frame_key)

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
        referring segmentation (Florence-2), or its comprehension over the proposals (RegionGPT).
        """
        text = self._text(text, "the referring expression")
        return self._one(image, BatchItem("refer", text=text, route=route), frame_key)

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
        return self._one(image, BatchItem("comprehend", list(regions), text), frame_key)

    @torch.inference_mode()
    def run_batch(self, image: np.ndarray, items: list, *, frame_key: str | None = None) -> list:
        """Several queries on one frame as one call: a TaskResult or the query's own error per item.

        See :mod:`region_perception.engine.batch`; a model fault raises for the whole batch.
        """
        with self.lock:
            return run_items(self, image, items, frame_key)

    @torch.inference_mode()
    def warm_up(self, image_size: tuple[int, int] = (480, 640), labels: list[str] | None = None,
                vocabulary_name: str = "") -> dict[str, float]:
        """Load and exercise what a first query would, so that the first answer of each task is as fast as the
        next: the snapping model and ``labels``' embeddings (the default vocabulary), the segmenter, and one
        forward of each task the model supports on a synthetic frame of ``image_size`` (height, width).

        Milliseconds per step (and ``total``). Leaves no trace: the synthetic frame's features are dropped
        from the cache, whose hit/miss counts are restored; no conversation is touched. A task that fails
        (e.g. no proposal survives on the synthetic frame) is logged in the result as ``-1`` and skipped.
        """
        import time
        import uuid

        from ..geometry.regions import BoxRegion, PointsRegion

        h, w = int(image_size[0]), int(image_size[1])
        image = _warm_up_frame(h, w)
        key = f"warm-up:{uuid.uuid4().hex}"
        labels = list(dict.fromkeys(lbl.strip() for lbl in labels or [] if lbl and lbl.strip())) or ["object"]
        box = BoxRegion(np.array([w * 0.25, h * 0.25, w * 0.6, h * 0.7], dtype=np.float64))
        point = PointsRegion(np.array([[w * 0.5, h * 0.5]], dtype=np.float64))
        items = {
            "caption": BatchItem("caption", [box, point], max_new_tokens=self.config.max_new_tokens),
            "classify": BatchItem("classify", [box, point], labels=labels, vocabulary_name=vocabulary_name),
            "refer": BatchItem("refer", text="the object in the middle"),
        }
        if getattr(self.model, "answers_questions", True):
            items["ask"] = BatchItem("ask", [box], "what is this?", max_new_tokens=self.config.max_new_tokens)
        hits, misses = self.cache.hits, self.cache.misses
        spent: dict[str, float] = {}
        started = time.perf_counter()
        try:
            step = time.perf_counter()
            try:
                self.snapper.snap_many(["object"], [labels])  # the encoder, and the vocabulary's table
            except ImportError:  # no sentence encoder installed: CLASSIFY ranks by loss, nothing to load
                pass
            spent["snap_model"] = (time.perf_counter() - step) * 1000.0
            for task, item in items.items():
                step = time.perf_counter()
                with self.lock:
                    out = run_items(self, image, [item], key)[0]
                spent[task] = (time.perf_counter() - step) * 1000.0 if not isinstance(out, Exception) else -1.0
        finally:
            self.cache.forget(key)
            self.cache.hits, self.cache.misses = hits, misses
        spent["total"] = (time.perf_counter() - started) * 1000.0
        return {k: round(v, 1) for k, v in spent.items()}

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


def _warm_up_frame(h: int, w: int) -> np.ndarray:
    """A synthetic camera frame: a shaded background and a few solid shapes (proposals find objects on it)."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([(xx * 200 // max(1, w)), (yy * 200 // max(1, h)), np.full((h, w), 90)], axis=-1)
    image = image.astype(np.uint8)
    for (y0, y1, x0, x1), colour in (
        ((0.25, 0.7, 0.25, 0.6), (230, 40, 40)),
        ((0.15, 0.4, 0.65, 0.85), (40, 200, 60)),
        ((0.6, 0.85, 0.7, 0.9), (250, 250, 250)),
    ):
        image[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = colour
    return image
