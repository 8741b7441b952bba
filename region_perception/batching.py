"""Several queries on one frame answered as one engine call: the node's cross-query batching.

A robot with several clients (planner, UI, logger) asks about the same frame at once. Run
one by one, each query pays a generation (and its Python overhead) of its own; here the
frame is encoded once and every task runs as one batch: CAPTION regions and ASK questions
as one generation per set of generation options, CLASSIFY as one category generation and
one snapping call, REFER sentences as one scoring pass over the frame's cached rows.

Exactly-once stays with the caller: an error that belongs to one query (bad region, empty
text) is returned in that query's place; a model fault raises for the whole batch, and the
caller retries its queries one by one so that only the faulty one fails.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .feature_cache import image_key
from .models.backend import RegionCue, labels_hint
from .regions import Region, RegionError, WholeImage, validate
from .timing import Timings
from .vocabulary import softmax

TASKS = ("caption", "ask", "classify", "refer")


@dataclass
class BatchItem:
    """One query of a batch, in the engine's terms (``task`` is one of :data:`TASKS`)."""

    task: str
    regions: list[Region] = field(default_factory=list)
    text: str = ""  # ASK: the question; REFER: the sentence
    labels: list[str] = field(default_factory=list)  # CLASSIFY candidates
    rank: bool = False  # CLASSIFY: rank every label by loss
    vocabulary_name: str = ""
    route: str = ""  # REFER route ("" = the engine's)
    max_new_tokens: int = 0  # 0 = the engine's default
    num_beams: int = 0

    def generation_options(self) -> tuple[int, int]:
        return (self.max_new_tokens, self.num_beams)


def query_errors() -> tuple[type[Exception], ...]:
    """Errors that belong to one query (answered INVALID_QUERY), never to the batch."""
    from .engine import TaskError

    return (RegionError, TaskError)


def run_batch(engine, image: np.ndarray, items: list[BatchItem], frame_key: str | None) -> list[Any]:
    """A TaskResult or the item's own error, per item (the caller holds ``engine.lock``)."""
    from .engine import TaskError, check_image

    image = check_image(image, engine.config.max_image_pixels)  # a bad frame is every query's error
    size = image.shape[:2]
    key = frame_key or image_key(image)
    timings = Timings()
    feats = engine._features(key, image, timings)
    out: list[Any] = [None] * len(items)
    finish: dict[int, Callable[[], Any]] = {}  # results are built last: each carries the batch's timings
    rows: dict[tuple[int, int], list[tuple[int, list[RegionCue], str]]] = {}  # generation options -> rows
    answers: dict[int, list] = {}
    classify, refer = [], []
    errors = query_errors()
    for i, item in enumerate(items):
        try:
            if item.task == "caption":
                answers[i] = _answers(engine, image, size, key, item.regions, "caption", timings)
                gen = _resolved(engine, item)
                rows.setdefault(gen, []).extend((i, [a.cue], "") for a in answers[i])
            elif item.task == "ask":
                question = engine._text(item.text, "the question")
                engine.check_answers_questions()
                answers[i] = _answers(engine, image, size, key, item.regions or [WholeImage()], "ask", timings)
                rows.setdefault(_resolved(engine, item), []).append((i, [a.cue for a in answers[i]], question))
            elif item.task == "classify":
                labels = list(dict.fromkeys(lbl.strip() for lbl in item.labels if lbl and lbl.strip()))
                if not labels:
                    raise TaskError("classify needs at least one candidate label")
                answers[i] = _answers(engine, image, size, key, item.regions, "classify", timings)
                classify.append((i, labels))
            elif item.task == "refer":
                refer.append((i, engine._text(item.text, "the referring expression")))
            else:
                raise TaskError(f"unknown task {item.task!r}: expected one of {', '.join(TASKS)}")
        except errors as exc:
            out[i] = exc
    for (max_new_tokens, num_beams), group in rows.items():
        texts = _describe_rows(engine.model, feats, group, max_new_tokens, num_beams, timings)
        by_item: dict[int, list[str]] = {}
        for (i, _, _), text in zip(group, texts, strict=True):
            by_item.setdefault(i, []).append(text)
        for i, got in by_item.items():
            for ans, text in zip(answers[i], got if items[i].task == "caption" else got * len(answers[i]), strict=True):
                ans.text = text
            finish[i] = _finisher(engine, items[i].task, answers[i], size, timings)
    if classify:
        groups = [(answers[i], labels, items[i].rank, items[i].vocabulary_name) for i, labels in classify]
        for (i, _), notes in zip(classify, classify_answers(engine, feats, groups, timings), strict=True):
            finish[i] = _finisher(engine, "classify", answers[i], size, timings, notes=notes)
    if refer:
        _refer(engine, image, key, feats, items, refer, size, timings, out, finish)
    for i, make in finish.items():
        out[i] = make()
    return out


def _resolved(engine, item: BatchItem) -> tuple[int, int]:
    return (item.max_new_tokens or engine.config.max_new_tokens, item.num_beams or engine.config.num_beams)


def _answers(engine, image, size, key, regions: list[Region], task: str, timings: Timings) -> list:
    if not regions:
        raise RegionError(f"{task} needs at least one region")
    checked = [validate(r, size, engine.config.max_points) for r in regions]
    return engine._region_answers(image, size, checked, key, timings)


def _finisher(engine, task: str, answers, size, timings: Timings, **extra) -> Callable[[], Any]:
    return lambda: engine._result(task, answers, size, timings, **extra)


def _describe_rows(model, feats, group, max_new_tokens: int, num_beams: int, timings: Timings) -> list[str]:
    """One generation for every row of the group (``describe`` per row where a backend has no batch)."""
    rows = [(cues, prompt) for _, cues, prompt in group]
    gen = {"max_new_tokens": max_new_tokens, "num_beams": num_beams, "timings": timings}
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


def _refer(engine, image, key, feats, items, refer, size, timings: Timings, out, finish) -> None:
    """Every sentence scored over the frame's rows, encoded once; several sentences per decoder call."""
    native = [(i, text) for i, text in refer if (items[i].route or engine.config.refer_route) == "native"]
    scored = [(i, text) for i, text in refer if (items[i].route or engine.config.refer_route) != "native"]
    for i, text in native:
        try:
            out[i] = engine._refer_native(feats, text, size, timings)
        except query_errors() as exc:
            out[i] = exc
    if not scored:
        return
    try:
        masks, cues, encoded, boxes = engine._refer_rows(image, key, feats, timings)
    except query_errors() as exc:
        for i, _ in scored:
            out[i] = exc
        return
    sentences = [text for _, text in scored]
    losses = sentence_losses(engine.model, encoded, sentences, 4 * engine.config.score_batch_size, timings)
    for (i, text), row_losses in zip(scored, losses, strict=True):
        finish[i] = lambda text=text, row_losses=row_losses: engine._refer_result(
            text, row_losses, masks, cues, boxes, size, timings
        )


def _rows(chunk) -> int:
    return (chunk[0] if isinstance(chunk, tuple) else chunk).shape[0]


def _repeat(chunk, times: int):
    """A chunk of encoded rows (a tensor, or a tuple of tensors) repeated along the row axis."""
    if isinstance(chunk, tuple):
        return tuple(_repeat(t, times) for t in chunk)
    return chunk.repeat(times, *[1] * (chunk.dim() - 1))


def sentence_losses(
    model, encoded: list, sentences: list[str], row_budget: int = 128, timings: Timings | None = None
) -> list[np.ndarray]:
    """Per-row loss of each sentence over the same encoded rows: (sentences, rows) as a list of arrays.

    A chunk of B rows is repeated for as many sentences as fit ``row_budget`` rows, so several
    sentences share one decoder call; each row's loss is the one it would get alone.
    """
    widest = max(_rows(c) for c in encoded)
    per_call = max(1, row_budget // widest)
    out: list[np.ndarray] = []
    for start in range(0, len(sentences), per_call):
        group = sentences[start : start + per_call]
        chunks = [_repeat(c, len(group)) for c in encoded]
        texts = [s for c in encoded for s in group for _ in range(_rows(c))]
        flat = np.asarray(model.rows_loss(chunks, texts, timings=timings), dtype=np.float64)
        per_sentence: list[list[np.ndarray]] = [[] for _ in group]
        offset = 0
        for c in encoded:
            n = _rows(c)
            for j in range(len(group)):
                per_sentence[j].append(flat[offset : offset + n])
                offset += n
        out += [np.concatenate(parts) for parts in per_sentence]
    return out
