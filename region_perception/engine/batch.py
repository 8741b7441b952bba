"""The one path that answers region tasks: one frame, a list of queries, one pass through the model.

Every task runs as a batch, and a single query is a batch of one: the engine's ``caption`` /
``ask`` / ``classify`` / ``refer`` / ``comprehend`` wrap one :class:`BatchItem` and call
:func:`run_items`, as the node's cross-query batching does with several. A robot with
several clients (planner, UI, logger) asks about the same frame at once; here the frame is
encoded once and every task runs as one batch: CAPTION regions and ASK questions as one
generation per set of generation options, CLASSIFY as one category generation and one
snapping call, REFER sentences as one scoring pass over the frame's cached rows.

Exactly-once stays with the caller: an error that belongs to one query (bad region, empty
text) is returned in that query's place; a model fault raises for the whole batch, and the
caller retries its queries one by one so that only the faulty one fails.

Nothing here imports the engine: :class:`FramePass` reads the engine's public members
(``model``, ``config``, ``cache``, ``proposals``, ``snapper``, ``conversations``,
``check_answers_questions``, ``model_label``, ``weights_random``).

A batch run inside :func:`interruptible` may be given up (:class:`Interrupted`) when more
queries on its frame arrive while it runs: the caller then answers them all as one batch. A
query alone pays nothing for that (a flag read per step of the language model), and a burst
whose first query started alone costs little more than one batch of all of them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from ..common.feature_cache import image_key
from ..common.timing import Timings
from ..geometry.region_text import points_to_text
from ..geometry.regions import (
    Region,
    RegionError,
    WholeImage,
    box_to_mask,
    mask_to_box,
    normalize_points,
    region_box,
    region_mask,
    region_points,
    validate,
)
from ..models.backend import RegionCue, labels_hint
from .refer import draw_cues, select
from .results import TASKS, RegionAnswer, TaskError, TaskResult, box_list, check_image, check_text, query_errors
from .scoring import sentence_losses
from .vocabulary import softmax

__all__ = [
    "TASKS",
    "BatchItem",
    "FramePass",
    "Interrupted",
    "check_interrupted",
    "classify_answers",
    "interruptible",
    "query_errors",
    "run_batch",
    "run_items",
    "sentence_losses",
]


@dataclass
class BatchItem:
    """One query of a batch, in the engine's terms (``task`` is one of :data:`TASKS`)."""

    task: str
    regions: list[Region] = field(default_factory=list)  # COMPREHEND: the candidate regions
    text: str = ""  # ASK: the question; REFER, COMPREHEND: the sentence
    labels: list[str] = field(default_factory=list)  # CLASSIFY candidates
    rank: bool = False  # CLASSIFY: rank every label by loss
    vocabulary_name: str = ""
    route: str = ""  # REFER route ("" = the engine's)
    max_new_tokens: int = 0  # 0 = the engine's default
    num_beams: int = 0
    conversation_id: str = ""  # ASK: earlier turns of this conversation go to a dialogue model

    def generation_options(self) -> tuple[int, int]:
        return (self.max_new_tokens, self.num_beams)


Finisher = Callable[[], TaskResult]


class Interrupted(BaseException):  # a control-flow signal, not an error: no `except Exception` takes it
    """A run given up inside :func:`interruptible` because its ``should_stop`` said so: nothing was answered."""


_SHOULD_STOP: ContextVar[Callable[[], bool] | None] = ContextVar("region_batch_should_stop", default=None)


@contextmanager
def interruptible(should_stop: Callable[[], bool]) -> Iterator[None]:
    """Within it (this thread), :func:`run_items` raises :class:`Interrupted` once ``should_stop()`` is true.

    It is asked before the frame is read, once the queries are prepared (the frame's features
    are computed by then, and cached: the bigger batch does not compute them again), and at every
    forward of the model's language model while it generates or scores. ``should_stop`` must be
    cheap; the caller answers the run's queries another way (see QueryProcessor).
    """
    token = _SHOULD_STOP.set(should_stop)
    try:
        yield
    finally:
        _SHOULD_STOP.reset(token)


def check_interrupted() -> None:
    """Inside :func:`interruptible`: raise :class:`Interrupted` if its ``should_stop()`` holds (elsewhere: nothing)."""
    should_stop = _SHOULD_STOP.get()
    if should_stop is not None and should_stop():
        raise Interrupted()


_LANGUAGE_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # backend -> its modules that generate


def _language_models(backend: Any) -> list[torch.nn.Module]:
    """The backend's torch modules that generate (a language model's forward runs once per generated token)."""
    try:
        return _LANGUAGE_MODELS[backend]
    except (KeyError, TypeError):
        pass
    found: list[torch.nn.Module] = []
    for value in list(getattr(backend, "__dict__", {}).values()):
        if isinstance(value, torch.nn.Module):
            found += [m for m in value.modules() if callable(getattr(m, "generate", None))]
    try:
        _LANGUAGE_MODELS[backend] = found
    except TypeError:  # a backend that cannot be weakly referenced: found again next time
        pass
    return found


@contextmanager
def _checked_forwards(backend: Any) -> Iterator[None]:
    """Inside :func:`interruptible`: :func:`check_interrupted` before every forward of the backend's language
    models (in this thread; another thread's forwards are not this run's)."""
    if _SHOULD_STOP.get() is None:
        yield
        return
    owner = threading.get_ident()

    def hook(module, args) -> None:
        if threading.get_ident() == owner:
            check_interrupted()

    handles = [module.register_forward_pre_hook(hook) for module in _language_models(backend)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FramePass:
    """One frame's pass through the model: the checked image, its key and size, one Timings, its features.

    Every answer of a pass carries the pass's timings (results are built last, see
    :func:`run_items`), as a query answered alone always did.
    """

    def __init__(self, engine, image: np.ndarray, key: str, timings: Timings | None = None, features=None) -> None:
        self.engine = engine
        self.image = image
        self.key = key
        self.size = image.shape[:2]
        self.timings = timings if timings is not None else Timings()
        self._features = features

    @classmethod
    def open(cls, engine, image: np.ndarray, frame_key: str | None = None) -> FramePass:
        """The pass over a frame: the image checked (ImageError: every query's error), then encoded (cached)."""
        image = check_image(image, engine.config.max_image_pixels)
        frame = cls(engine, image, frame_key or image_key(image))
        frame.features  # noqa: B018 - encoded now, through the frame's cache, as every task needs it
        return frame

    @property
    def model(self):
        return self.engine.model

    @property
    def config(self):
        return self.engine.config

    @property
    def features(self):
        """The frame's vision features, computed once per frame (feature cache)."""
        if self._features is None:

            def compute():
                with self.timings.section("vision_encode"):
                    return self.model.encode_image(self.image)

            self._features = self.engine.cache.get_or_compute(self.key, "vision", compute)
        return self._features

    # -- regions ------------------------------------------------------------------------------
    def answers(self, regions: list[Region], what: str) -> list[RegionAnswer]:
        """Mask, box and cue of each region, validated against the frame (boxes/points through SAM when present)."""
        if not regions:
            raise RegionError(f"{what} needs at least one region")
        size = self.size
        checked = [validate(r, size, self.config.max_points) for r in regions]
        rng = np.random.default_rng(self.config.seed)
        h, w = size
        answers = []
        for region in checked:
            with self.timings.section("segment"):
                mask = region_mask(
                    region, size, image=self.image, image_key=self.key, segmenter=self.engine.segmenter
                )
            pts = region_points(region, size, self.config.points_per_region, rng, mask=mask)
            text = points_to_text(normalize_points(pts, size), self.config.rounding)
            whole = isinstance(region, WholeImage)
            box = region_box(region, size) if whole else _mask_or_region_box(mask, region, size)
            cue = RegionCue(text, (box[0] / w, box[1] / h, box[2] / w, box[3] / h), mask=mask)
            answers.append(RegionAnswer(name=region.name, mask=mask, box=box_list(box), region_text=text, cue=cue))
        return answers

    def result(self, task: str, outputs: list[RegionAnswer], **extra) -> TaskResult:
        """A task's result, with the pass's timings and the model's notes."""
        engine, model = self.engine, self.model
        notes = list(extra.pop("notes", []))
        if engine.weights_random:
            notes.append("RANDOM WEIGHTS: these outputs exercise the code path; they are not predictions")
        elif not getattr(model, "region_aware", True):
            default = "model never trained on region point text: answers ignore the region"
            notes.append(getattr(model, "region_note", default))
        if getattr(model, "trained_note", ""):  # e.g. "toy model trained on synthetic shapes"
            notes.append(model.trained_note)
        return TaskResult(
            task=task,
            outputs=outputs,
            model=engine.model_label,
            weights_random=engine.weights_random,
            image_size=tuple(self.size),
            timings_ms=self.timings.as_dict(),
            notes=notes,
            settings=dict(getattr(engine, "settings", {})),
            **extra,
        )

    def finisher(self, task: str, outputs: list[RegionAnswer], **extra) -> Finisher:
        return lambda: self.result(task, outputs, **extra)

    # -- generation (CAPTION, ASK) ---------------------------------------------------------------
    def generate(self, rows: list[tuple[list[RegionCue], str, list]], max_new_tokens: int, num_beams: int) -> list[str]:
        """One text per row ``(cues, prompt, history)``: one generation for the rows without history.

        A row with history (a conversation's later turn) goes to ``describe`` with it, one at a time.
        """
        model, feats = self.model, self.features
        gen = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "timings": self.timings}
        texts: list[str] = [""] * len(rows)
        plain = [k for k, (_, _, history) in enumerate(rows) if not history]
        for k, (cues, prompt, history) in enumerate(rows):
            if history:
                texts[k] = model.describe(feats, cues, prompt, **gen, history=history)
        if plain:
            for k, text in zip(plain, _describe_rows(model, feats, [rows[k][:2] for k in plain], gen), strict=True):
                texts[k] = text
        return texts

    # -- CLASSIFY -----------------------------------------------------------------------------------
    def classify(self, groups: list[tuple[list[RegionAnswer], list[str], bool, str]]) -> list[list[str]]:
        """See :func:`classify_answers`."""
        return classify_answers(self.engine, self.features, groups, self.timings)

    # -- REFER, COMPREHEND -------------------------------------------------------------------------
    def refer_rows(self):
        """The frame's proposals and their drawn, encoded and boxed rows (sentence-independent: once per frame)."""
        engine, config, model = self.engine, self.config, self.model
        masks = engine.proposals(self.image, self.key, self.timings)
        if not masks:
            raise TaskError("no mask proposal survived filtering (>= 4% of the image, not along a border)")
        draws = config.refer_draws if model.uses_point_draws else 1

        def encode_rows():
            cues = draw_cues(
                masks,
                points_per_draw=config.points_per_region,
                draws=draws,
                seed=config.seed,
                rounding=config.rounding,
            )
            cues = [replace(c, mask=masks[i // draws]) for i, c in enumerate(cues)]  # RegionGPT pools the mask
            encoded = model.encode_cues(self.features, cues, batch_size=config.score_batch_size, timings=self.timings)
            return cues, encoded, [box_list(mask_to_box(m)) for m in masks]

        cues, encoded, boxes = engine.cache.get_or_compute(self.key, f"refer_rows:{draws}", encode_rows)
        return masks, cues, encoded, boxes

    def refer(self, sentences: list[tuple[int, str, str]]) -> dict[int, Finisher | Exception]:
        """Each ``(index, sentence, route)`` answered: a finisher, or the sentence's own error.

        ``proposals``: every sentence scored over the frame's rows, encoded once, several
        sentences per decoder call. ``native``: the model's own referring segmentation
        (Florence-2), or, for a backend with a comprehension protocol (RegionGPT), the
        proposals offered to it as candidate regions.
        """
        out: dict[int, Finisher | Exception] = {}
        comprehends = hasattr(self.model, "comprehend")
        native = [(i, text) for i, text, route in sentences if route == "native" and not comprehends]
        on_rows = [(i, text, route) for i, text, route in sentences if route != "native" or comprehends]
        for i, text in native:
            try:
                out[i] = self._refer_native(text)
            except query_errors() as exc:
                out[i] = exc
        if not on_rows:
            return out
        try:
            masks, cues, encoded, boxes = self.refer_rows()
        except query_errors() as exc:
            for i, _, _ in on_rows:
                out[i] = exc
            return out

        def finish(text, losses) -> Finisher:
            return lambda: self._refer_result(text, losses, masks, cues, boxes)

        for i, text, route in on_rows:
            if route == "native":  # RegionGPT: the proposals as Region [i]
                out[i] = finish(text, self.model.comprehend(self.features, cues, text, timings=self.timings))
        scored = [(i, text) for i, text, route in on_rows if route != "native"]
        if len(scored) == 1:  # one sentence: its rows' losses in one call
            i, text = scored[0]
            out[i] = finish(text, self.model.rows_loss(encoded, [text] * len(cues), timings=self.timings))
        elif scored:
            budget = 4 * self.config.score_batch_size
            losses = sentence_losses(self.model, encoded, [text for _, text in scored], budget, self.timings)
            for (i, text), row_losses in zip(scored, losses, strict=True):
                out[i] = finish(text, row_losses)
        return out

    def _refer_result(self, text: str, losses, masks, cues, boxes) -> TaskResult:
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
        return self.result(
            "refer",
            [answer],
            selected_index=sel,
            candidate_scores=[round(float(s), 6) for s in outcome.scores],
            candidate_boxes=boxes,
            candidate_masks=list(masks),
        )

    def _refer_native(self, text: str) -> Finisher:
        mask = self.model.refer_native(self.features, text, self.size, timings=self.timings)
        if mask is None:
            raise TaskError(f"{self.model.name} has no referring segmentation of its own: use refer_route proposals")
        notes = [] if mask.any() else ["the model found no region for this sentence"]
        box = box_list(mask_to_box(mask)) if mask.any() else []
        answer = RegionAnswer(text=text, mask=mask, box=box)
        return self.finisher("refer", [answer], selected_index=0 if mask.any() else -1, notes=notes)

    def comprehend(self, text: str, answers: list[RegionAnswer]) -> Finisher:
        """Which candidate ``text`` refers to: each read as REFER reads a proposal, the sentence scored by its loss."""
        config, model, size = self.config, self.model, self.size
        masks = [a.mask if a.mask is not None and a.mask.any() else box_to_mask(np.array(a.box), size) for a in answers]
        draws = config.refer_draws if model.uses_point_draws else 1
        cues = draw_cues(
            masks, points_per_draw=config.points_per_region, draws=draws, seed=config.seed, rounding=config.rounding
        )
        encoded = model.encode_cues(self.features, cues, batch_size=config.score_batch_size, timings=self.timings)
        losses = model.rows_loss(encoded, [text] * len(cues), timings=self.timings)
        outcome = select(np.asarray(losses, dtype=np.float64).reshape(len(masks), draws), cues)
        sel = outcome.selected_index
        chosen = answers[sel]
        chosen.text, chosen.score = text, float(outcome.scores[sel])
        return self.finisher(
            "comprehend",
            [chosen],
            selected_index=sel,
            candidate_scores=[round(float(s), 6) for s in outcome.scores],
            candidate_boxes=[a.box for a in answers],
            candidate_masks=masks,
        )


@torch.inference_mode()
def run_items(engine, image: np.ndarray, items: list[BatchItem], frame_key: str | None = None) -> list[Any]:
    """A TaskResult or the item's own error, per item (the caller holds ``engine.lock``).

    A bad image raises (ImageError: every query's error), as does a model fault (the whole
    batch's). The checks per item keep the order a query alone has always had.
    """
    out: list[Any] = [None] * len(items)
    errors = query_errors()
    max_chars = engine.config.max_text_chars
    check_interrupted()  # inside interruptible(): this run may be given up for a bigger batch
    questions, turns = {}, {}
    for i, item in enumerate(items):  # a conversation's turn begins before the frame is read (as it always has)
        if item.task != "ask":
            continue
        try:
            questions[i] = check_text(item.text, "the question", max_chars)
            engine.check_answers_questions()
            dialogue = bool(getattr(engine.model, "supports_dialogue", False))
            turns[i] = engine.conversations.begin(
                item.conversation_id, item.regions, np.shape(image)[:2], dialogue=dialogue
            )
        except errors as exc:
            out[i] = exc
    frame = FramePass.open(engine, image, frame_key)
    finish: dict[int, Finisher] = {}  # results are built last: each carries the batch's timings
    rows: dict[tuple[int, int], list[tuple[int, list[RegionCue], str, list]]] = {}  # generation options -> rows
    answers: dict[int, list[RegionAnswer]] = {}
    classify, refer, comprehend = [], [], []
    for i, item in enumerate(items):
        if out[i] is not None:
            continue
        try:
            if item.task == "caption":
                answers[i] = frame.answers(item.regions, "caption")
                rows.setdefault(_resolved(engine, item), []).extend((i, [a.cue], "", []) for a in answers[i])
            elif item.task == "ask":
                turn = turns[i]
                answers[i] = frame.answers(turn.regions or [WholeImage()], "ask")
                row = (i, [a.cue for a in answers[i]], questions[i], turn.history)
                rows.setdefault(_resolved(engine, item), []).append(row)
            elif item.task == "classify":
                labels = list(dict.fromkeys(lbl.strip() for lbl in item.labels if lbl and lbl.strip()))
                if not labels:
                    raise TaskError("classify needs at least one candidate label")
                answers[i] = frame.answers(item.regions, "classify")
                classify.append((i, labels))
            elif item.task == "refer":
                text = check_text(item.text, "the referring expression", max_chars)
                refer.append((i, text, item.route or engine.config.refer_route))
            elif item.task == "comprehend":
                text = check_text(item.text, "the referring expression", max_chars)
                if not item.regions:
                    raise RegionError("comprehension needs at least one candidate region")
                answers[i] = frame.answers(item.regions, "comprehension")
                comprehend.append((i, text))
            else:
                raise TaskError(f"unknown task {item.task!r}: expected one of {', '.join(TASKS)}")
        except errors as exc:
            out[i] = exc
    check_interrupted()  # the frame's features are computed (and cached): a bigger batch reuses them
    turns_done = []  # conversations remember a turn once the whole batch has its answers
    with _checked_forwards(engine.model):  # inside interruptible(): asked at every language-model forward
        for (max_new_tokens, num_beams), group in rows.items():
            texts = frame.generate([row[1:] for row in group], max_new_tokens, num_beams)
            by_item: dict[int, list[str]] = {}
            for (i, _, _, _), text in zip(group, texts, strict=True):
                by_item.setdefault(i, []).append(text)
            for i, got in by_item.items():
                task = items[i].task
                for ans, text in zip(answers[i], got if task == "caption" else got * len(answers[i]), strict=True):
                    ans.text = text
                if task == "ask":
                    turns_done.append((turns[i], questions[i], got[0]))
                    finish[i] = frame.finisher("ask", answers[i], notes=turns[i].notes)
                else:
                    finish[i] = frame.finisher(task, answers[i])
        if classify:
            groups = [(answers[i], labels, items[i].rank, items[i].vocabulary_name) for i, labels in classify]
            for (i, _), notes in zip(classify, frame.classify(groups), strict=True):
                finish[i] = frame.finisher("classify", answers[i], notes=notes)
        if refer:
            for i, done in frame.refer(refer).items():
                if isinstance(done, BaseException):
                    out[i] = done
                else:
                    finish[i] = done
        for i, text in comprehend:
            finish[i] = frame.comprehend(text, answers[i])
    for turn, question, text in turns_done:
        engine.conversations.finish(turn, question, text, frame.size)
    for i, make in finish.items():
        out[i] = make()
    return out


run_batch = run_items  # the name this module has always had for it


def _resolved(engine, item: BatchItem) -> tuple[int, int]:
    return (item.max_new_tokens or engine.config.max_new_tokens, item.num_beams or engine.config.num_beams)


def _mask_or_region_box(mask: np.ndarray, region: Region, size) -> np.ndarray:
    return mask_to_box(mask) if mask.any() else region_box(region, size)


def _describe_rows(model, feats, rows: list[tuple[list[RegionCue], str]], gen: dict) -> list[str]:
    """One generation for every row (``describe`` per row where a backend has no batch)."""
    if hasattr(model, "describe_rows"):
        return model.describe_rows(feats, rows, **gen)
    if all(not prompt and len(cues) == 1 for cues, prompt in rows):
        return model.caption_each(feats, [cues[0] for cues, _ in rows], **gen)
    return [model.describe(feats, cues, prompt, **gen) for cues, prompt in rows]


def classify_answers(
    engine, feats, groups: list[tuple[list, list[str], bool, str]], timings: Timings
) -> list[list[str]]:
    """Label every region of every group ``(answers, labels, rank, vocabulary_name)``; the notes of each group.

    One category generation for all regions, one snapping call, one loss pass for the ranked
    ones: a query with ten regions and ten queries with one region cost the same.
    """
    model = engine.model
    flat = [(g, ans) for g, (answers, _, _, _) in enumerate(groups) for ans in answers]
    hints = [labels_hint(groups[g][1], groups[g][3]) for g, _ in flat]
    cues = [ans.cue for _, ans in flat]
    if hasattr(model, "category_many"):
        texts = model.category_many(feats, cues, hints, timings=timings)
    else:
        texts = [model.category(feats, cue, hint, timings=timings) for cue, hint in zip(cues, hints, strict=True)]
    notes: list[list[str]] = [[] for _ in groups]
    ranked: dict[int, tuple[list[str], np.ndarray]] = {}  # flat index -> labels, scores
    to_snap = [k for k, (g, _) in enumerate(flat) if not groups[g][2]]
    for (_, ans), text in zip(flat, texts, strict=True):
        ans.text = text
    if to_snap:
        try:
            with timings.section("snap"):
                snaps = engine.snapper.snap_many([texts[k] for k in to_snap], [groups[flat[k][0]][1] for k in to_snap])
            for k, snap in zip(to_snap, snaps, strict=True):
                ranked[k] = (snap.labels, softmax(np.array(snap.similarities), 0.05))
        except ImportError as exc:  # no sentence encoder installed: rank by loss instead
            for g in sorted({flat[k][0] for k in to_snap}):
                notes[g].append(f"snapping unavailable ({exc}); labels ranked by loss")
    by_loss = [k for k in range(len(flat)) if k not in ranked]
    if by_loss:  # every label of every such region scored in one pass
        row_cues = [flat[k][1].cue for k in by_loss for _ in groups[flat[k][0]][1]]
        row_texts = [lbl for k in by_loss for lbl in groups[flat[k][0]][1]]
        losses = model.score_regions(
            feats, row_cues, row_texts, batch_size=engine.config.score_batch_size, timings=timings
        )
        start = 0
        for k in by_loss:
            labels = groups[flat[k][0]][1]
            ranked[k] = (labels, softmax(-np.asarray(losses[start : start + len(labels)])))
            start += len(labels)
    for k, (_, ans) in enumerate(flat):
        labels, scores = ranked[k]
        order = np.argsort(-np.asarray(scores), kind="stable")
        ans.labels = [labels[j] for j in order]
        ans.label_scores = [round(float(scores[j]), 6) for j in order]
        ans.label, ans.score = ans.labels[0], ans.label_scores[0]
    return notes
