"""Queries in, exactly one outcome out: the node's logic without ROS.

The ROS node converts messages to :class:`QuerySpec` and outcomes back to messages; all
decisions (which frame, queue full, deadline, which error status) are made here, where
they can be tested without a middleware. Callbacks never block on the model: ``submit``
resolves the frame, refuses a query that could never succeed on it (INVALID_QUERY,
BAD_IMAGE: at intake, however busy the worker is) and enqueues the rest; one worker
thread runs the engine.

Batching costs a lone query nothing: the worker waits for more queries (``batch_settle_ms``)
only on evidence of a burst, another query already queued when it wakes. ``submit_group``
enqueues the queries an adapter received together (the node drains its subscription) as
one step, so a woken worker sees the whole group, never a part of it. A burst whose first
query reached the idle worker alone (the rest still on the wire) is regrouped: that query's
run is given up as soon as a query that could share its engine call is queued (see
:func:`..engine.batch.interruptible`), and all of them are answered by one call.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..common.status import Status, Task
from ..engine import EngineConfig, ImageError, RegionEngine, TaskError, TaskResult, check_image, check_text
from ..engine.batch import BatchItem, Interrupted, interruptible
from ..geometry.regions import Region, RegionError, validate
from .frame_buffer import Frame, FrameBuffer, FrameLookupError

log = logging.getLogger("region_perception")


@dataclass
class QuerySpec:
    """A region query, independent of ROS messages."""

    query_id: str = ""
    task: int = Task.CAPTION
    stamp_ns: int = 0  # the camera frame the query is about; 0 = latest
    regions: list[Region] = field(default_factory=list)
    text: str = ""
    labels: list[str] = field(default_factory=list)
    rank_labels: bool = False
    max_new_tokens: int = 0
    num_beams: int = 0
    timeout_s: float = 0.0
    conversation_id: str = ""  # ASK: earlier turns of this conversation go to a dialogue model
    frame: Frame | None = None  # an image sent with the query (service) instead of the buffer
    context: Any = None  # the adapter's own data (e.g. the original message), passed through


@dataclass
class Outcome:
    """The one answer to a query."""

    query_id: str
    task: int
    status: Status
    error: str = ""
    result: TaskResult | None = None
    frame: Frame | None = None
    queue_ms: float = 0.0
    inference_ms: float = 0.0
    latency_ms: float = 0.0
    spec: QuerySpec | None = None
    release_id: bool = True
    batch_size: int = 1  # queries answered by the same engine call (inference_ms is the batch's)
    position_frame_id: str = ""  # the frame of the outputs' 3D positions ("" = none computed)


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA (or CPU allocator) out of memory, whatever class the runtime raised."""
    import torch

    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower()


class _Job:
    """A query in flight; ``finish`` delivers its outcome once, whoever calls it first."""

    def __init__(self, spec: QuerySpec, frame: Frame | None, deliver: Callable[[Outcome], None]) -> None:
        self.release_id = True  # False for a refused duplicate: the original still holds the id
        self.spec = spec
        self.frame = frame
        self.received = time.monotonic()
        self.deadline = self.received + spec.timeout_s if spec.timeout_s > 0 else None
        self._deliver = deliver
        self._done = False
        self._lock = threading.Lock()

    def finish(self, outcome: Outcome) -> bool:
        with self._lock:
            if self._done:
                return False
            self._done = True
        outcome.latency_ms = (time.monotonic() - self.received) * 1000.0
        outcome.spec = self.spec
        outcome.release_id = self.release_id
        outcome.frame = outcome.frame or self.frame
        self._deliver(outcome)
        return True


class QueryProcessor:
    """Bounded queue + one inference worker over a :class:`RegionEngine`."""

    def __init__(
        self,
        engine: RegionEngine | None,
        frames: FrameBuffer,
        deliver: Callable[[Outcome], None],
        *,
        queue_size: int = 16,
        default_labels: list[str] | None = None,
        vocabulary_name: str = "",
        default_timeout_s: float = 0.0,
        frame_wait_s: float = 0.5,
        max_batch: int = 16,
        batch_window_ms: float = 0.0,
        batch_settle_ms: float = 3.0,
    ) -> None:
        self.engine = engine
        self.max_batch = max(1, int(max_batch))  # queries on one frame answered by one engine call
        self.batch_window_s = max(0.0, batch_window_ms) / 1000.0  # wait this long for more (0: none)
        # a worker woken by a query that is not alone (a burst) waits while more keep arriving, this long
        # at a time (0: never); a lone query never waits
        self.batch_settle_s = max(0.0, batch_settle_ms) / 1000.0
        self._sleep = time.sleep  # the settle's and the window's wait (a test replaces it to stage a burst)
        self.frames = frames
        self.deliver = deliver
        self.default_labels = default_labels or []
        self.vocabulary_name = vocabulary_name  # how the model is told about default_labels
        self.default_timeout_s = default_timeout_s
        self.frame_wait_s = frame_wait_s
        self.depth_source: Any = None  # depth3d.DepthSource: 3D positions after the model (None: off)
        # queries whose frame is newer than any buffered one: it may still be on its way
        self._awaiting: list[tuple[_Job, float]] = []
        self._awaiting_lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, queue_size))
        # held while a group is enqueued; a woken worker passes through it before it decides what to take
        self._intake = threading.Lock()
        # the query the worker runs alone, while a query that could join it would make it give up (see _run_one)
        self._alone: _Job | None = None
        self._alone_lock = threading.Lock()
        self._joined = threading.Event()  # set when such a query is queued
        self.regrouped = 0  # runs given up for a bigger batch (diagnostics, benchmarks)
        self._pending: dict[int, _Job] = {}
        self._in_flight: set[str] = set()  # query ids not answered yet (duplicates are refused)
        self._pending_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._stopping = False
        self._worker: threading.Thread | None = None
        # figures for diagnostics
        self.answered: dict[Status, int] = dict.fromkeys(Status, 0)
        self.latencies_ms: deque[float] = deque(maxlen=200)
        self.inference_ms: deque[float] = deque(maxlen=200)
        self.consecutive_model_errors = 0

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> None:
        if self._worker is None:
            self._stopping = False
            self._worker = threading.Thread(target=self._run, name="region-inference", daemon=True)
            self._worker.start()

    def stop(self, reason: str = "the node is shutting down") -> None:
        """Answer everything still pending with SHUTTING_DOWN and stop the worker."""
        self._stopping = True
        with self._awaiting_lock:
            waiting, self._awaiting = self._awaiting, []
        for job in self._take_all_pending() + [j for j, _ in waiting]:
            job.finish(Outcome(job.spec.query_id, job.spec.task, Status.SHUTTING_DOWN, reason))
        release = getattr(self.engine, "release_holds", None)  # a held model call (testing aid) ends now
        if release is not None:
            release()
        if self._worker is not None:
            try:
                self._queue.put_nowait(None)
            except queue.Full:
                pass
            self._worker.join(timeout=30)
            self._worker = None

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    @property
    def watching(self) -> bool:
        """Whether :meth:`expire_overdue` has anything to watch: a query waiting for its frame, or one
        queued with a deadline (an adapter may stop calling it while this is False)."""
        if self._awaiting:
            return True
        with self._pending_lock:
            return any(job.deadline is not None for job in self._pending.values())

    @property
    def capacity(self) -> int:
        """How many queries may wait for the model (``queue_size``)."""
        return self._queue.maxsize

    # -- intake (called from ROS callbacks: never blocks) -------------------------------------
    def submit_group(self, specs: list[QuerySpec]) -> None:
        """Accept queries that arrived together, as :meth:`submit` does each.

        The worker, woken by the first of them, decides what to take only once the whole group
        is queued: a group is answered by as few engine calls as its frames and options allow.
        """
        with self._intake:
            for spec in specs:
                self.submit(spec)

    def submit(self, spec: QuerySpec) -> None:
        """Accept a query; its outcome is delivered later (or now, for immediate errors)."""
        if not spec.query_id:
            spec.query_id = f"auto-{next(self._ids)}"
        if spec.timeout_s <= 0 and self.default_timeout_s > 0:
            spec.timeout_s = self.default_timeout_s
        frame = spec.frame
        job = _Job(spec, frame, self._count_and_deliver)
        with self._pending_lock:
            duplicate = spec.query_id in self._in_flight
            if not duplicate:
                self._in_flight.add(spec.query_id)
        if duplicate:  # answered now, and the first query with that id is not disturbed
            job.release_id = False
            job.finish(
                Outcome(
                    spec.query_id,
                    spec.task,
                    Status.INVALID_QUERY,
                    f"query_id {spec.query_id!r} is already pending: wait for its result or use a new id",
                )
            )
            return
        if self._stopping:
            job.finish(Outcome(spec.query_id, spec.task, Status.SHUTTING_DOWN, "the node is shutting down"))
            return
        if spec.task not in {t.value for t in Task}:
            job.finish(
                Outcome(spec.query_id, spec.task, Status.INVALID_QUERY, f"unknown task {spec.task}: expected 0..3")
            )
            return
        malformed = self._malformed(spec)
        if malformed:  # answered now, not after the queries queued for the model
            job.finish(Outcome(spec.query_id, spec.task, Status.INVALID_QUERY, malformed))
            return
        if frame is None:
            try:
                job.frame = self.frames.find(spec.stamp_ns)  # resolved now: eviction can't lose it later
            except FrameLookupError as exc:
                if exc.not_yet and self.frame_wait_s > 0 and len(self._awaiting) < self._queue.maxsize:
                    # the query overtook its frame on the wire: wait for the frame a little
                    with self._awaiting_lock:
                        self._awaiting.append((job, time.monotonic() + self.frame_wait_s))
                    return
                status = Status.NO_FRAME if exc.no_frame else Status.FRAME_EXPIRED
                job.finish(Outcome(spec.query_id, spec.task, status, str(exc)))
                return
        self._admit(job)

    def _limits(self) -> EngineConfig:
        """The engine's limits (max points, text length, image pixels); the defaults without one."""
        config = getattr(self.engine, "config", None)
        return config if isinstance(config, EngineConfig) else _DEFAULT_LIMITS

    def _malformed(self, spec: QuerySpec) -> str:
        """Why a query can never be answered, from the query alone ("" if it may be).

        The checks the engine would make anyway (its functions, so its wording), made at
        intake so that a malformed query is refused at once instead of waiting behind the
        model's queue, or being told QUEUE_FULL ("retry later") when that queue is full.
        """
        task = Task(spec.task)
        if task in (Task.CAPTION, Task.CLASSIFY) and not spec.regions:
            return f"{_TASK_NAMES[task]} needs at least one region"
        if task == Task.CLASSIFY and not any(lbl.strip() for lbl in spec.labels or self.default_labels):
            return "classify needs at least one candidate label"
        max_chars = self._limits().max_text_chars
        try:
            if task == Task.REFER:
                check_text(spec.text, "the referring expression", max_chars)
            if task == Task.ASK:
                check_text(spec.text, "the question", max_chars)
                check_model = getattr(self.engine, "check_answers_questions", None)
                if check_model is not None:
                    check_model()
        except TaskError as exc:
            return str(exc)
        return ""

    def _validate_at_intake(self, spec: QuerySpec, frame: Frame) -> Outcome | None:
        """The answer for a query that can never succeed on ``frame`` (to send now), or None.

        Every check that needs the frame but not the model, made before the query may wait
        (and so before it can be answered QUEUE_FULL, TIMEOUT or FRAME_EXPIRED): the frame is
        decoded (once, cached on it; the worker needs it anyway) and each region validated
        against its size by the engine's own functions and limits, so the reasons are the
        engine's. This is the one place for intake checks of further per-query inputs.
        """
        limits = self._limits()

        def refuse(status: Status, error: str) -> Outcome:
            return Outcome(spec.query_id, spec.task, status, error, frame=frame)

        try:
            image = check_image(frame.image(), limits.max_image_pixels)
        except Exception as exc:  # a decoder's error (ImageError, ValueError, ...): never the node's death
            error = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            return refuse(Status.BAD_IMAGE, error)
        if spec.task == Task.REFER:
            return None  # REFER reads no region (the engine ignores them)
        size = image.shape[:2]
        try:
            for region in spec.regions:
                validate(region, size, limits.max_points)
        except RegionError as exc:
            return refuse(Status.INVALID_QUERY, str(exc))
        except (TypeError, ValueError) as exc:  # a region built in Python from values that are not numbers
            return refuse(Status.INVALID_QUERY, f"region: {type(exc).__name__}: {exc}")
        return None

    def _admit(self, job: _Job) -> None:
        """Queue a query whose frame is resolved, if it could succeed on it; else answer it now."""
        refusal = self._validate_at_intake(job.spec, job.frame)
        if refusal is not None:
            job.finish(refusal)
            return
        self._enqueue(job)

    def frame_arrived(self) -> None:
        """Retry queries waiting for a frame newer than the buffer (call after each frame)."""
        if not self._awaiting:
            return
        now = time.monotonic()
        with self._awaiting_lock:
            waiting, self._awaiting = self._awaiting, []
        for job, give_up in waiting:
            try:
                job.frame = self.frames.find(job.spec.stamp_ns)
            except FrameLookupError as exc:
                if exc.not_yet and now < give_up:
                    with self._awaiting_lock:
                        self._awaiting.append((job, give_up))
                else:
                    status = Status.NO_FRAME if exc.no_frame else Status.FRAME_EXPIRED
                    job.finish(Outcome(job.spec.query_id, job.spec.task, status, str(exc)))
                continue
            self._admit(job)  # validated against the frame that has just arrived, then queued

    def _enqueue(self, job: _Job) -> None:
        spec = job.spec
        with self._pending_lock:
            self._pending[id(job)] = job
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            self._forget(job)
            job.finish(
                Outcome(
                    spec.query_id,
                    spec.task,
                    Status.QUEUE_FULL,
                    f"{self._queue.maxsize} queries are already waiting; retry later or raise queue_size",
                )
            )
            return
        with self._alone_lock:  # after the put: a run starting alone either sees this job queued or is told here
            if self._alone is not None and _joins(self._alone, job):
                self._joined.set()

    def expire_overdue(self) -> int:
        """Answer TIMEOUT for queued queries whose deadline passed (call periodically)."""
        self.frame_arrived()  # also gives up on frames that never came
        now = time.monotonic()
        with self._pending_lock:
            overdue = [j for j in self._pending.values() if j.deadline is not None and now > j.deadline]
        for job in overdue:
            job.finish(
                Outcome(
                    job.spec.query_id,
                    job.spec.task,
                    Status.TIMEOUT,
                    f"not answered within its {job.spec.timeout_s:g} s deadline ({self.depth} queries queued)",
                    queue_ms=(now - job.received) * 1000.0,
                )
            )
        return len(overdue)

    # -- worker -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            try:
                job, woke = self._queue.get_nowait(), False  # the worker was busy: the queue had waited
            except queue.Empty:
                job, woke = self._queue.get(), True  # the worker was idle: it decides below if a burst arrives
            with self._intake:  # a group being submitted is queued whole before the worker looks at the queue
                pass
            if job is None:
                return
            live = [j for j in self._take_batch(job, woke=woke) if self._still_wanted(j)]
            if len(live) > 1:
                self._run_batch(live)
            elif live:
                self._run_one(live[0])

    def _still_wanted(self, job: _Job) -> bool:
        """Forget a taken job; False (and answered) if the node stops or its deadline passed."""
        self._forget(job)
        if self._stopping:
            job.finish(Outcome(job.spec.query_id, job.spec.task, Status.SHUTTING_DOWN, "the node is shutting down"))
            return False
        now = time.monotonic()
        if job.deadline is not None and now > job.deadline:
            queue_ms = (now - job.received) * 1000.0
            job.finish(
                Outcome(
                    job.spec.query_id,
                    job.spec.task,
                    Status.TIMEOUT,
                    f"waited {queue_ms:.0f} ms in the queue, past its {job.spec.timeout_s:g} s deadline",
                    queue_ms=queue_ms,
                )
            )
            return False
        return True

    def _may_regroup(self, job: _Job) -> bool:
        """Whether a run of ``job`` alone may be given up for a batch (see :meth:`_take_batch`'s conditions)."""
        return self.max_batch > 1 and hasattr(self.engine, "run_batch") and not job.spec.conversation_id

    def _run_one(self, job: _Job, *, regroup: bool = True) -> None:
        """``job`` alone. ``regroup``: if a query that could share its engine call is queued meanwhile, the
        run is given up and both (and whatever else joins) are answered by one batch instead."""
        if regroup and self._may_regroup(job):
            with self._alone_lock:
                self._alone = job
                self._joined.clear()
                with self._queue.mutex:
                    if any(_joins(job, other) for other in self._queue.queue):
                        self._joined.set()
            try:
                with interruptible(self._joined.is_set):
                    self._answer_one(job)
                return
            except Interrupted:
                self.regrouped += 1
            finally:
                with self._alone_lock:
                    self._alone = None
            with self._intake:  # a group being submitted is queued whole before the batch is taken
                pass
            jobs = [j for j in self._take_batch(job, woke=True) if self._still_wanted(j)]
            if len(jobs) > 1:
                self._run_batch(jobs)
            elif jobs:
                self._answer_one(jobs[0])
            return
        self._answer_one(job)

    def _answer_one(self, job: _Job) -> None:
        started = time.monotonic()
        try:
            outcome = self.answer(job.spec, job.frame)
        except Exception as exc:  # the worker must survive anything the model does
            log.exception("query %s failed", job.spec.query_id)
            outcome = Outcome(job.spec.query_id, job.spec.task, Status.MODEL_ERROR, f"{type(exc).__name__}: {exc}")
        outcome.queue_ms = (started - job.received) * 1000.0
        outcome.inference_ms = (time.monotonic() - started) * 1000.0
        self._locate(outcome)
        job.finish(outcome)

    def _locate(self, outcome: Outcome) -> None:
        """The 3D step, on the worker once the masks exist; it never costs the query its answer."""
        source = self.depth_source
        if source is None or outcome.status != Status.OK or outcome.result is None or outcome.frame is None:
            return
        try:
            frame = outcome.frame
            matched = getattr(frame, "depth", None)  # matched on arrival: outlives the depth buffer
            outcome.position_frame_id = source.locate(outcome.result, frame.stamp_ns, frame.frame_id, matched)
        except Exception as exc:  # a bug in the 3D step must not turn an answer into an error
            log.exception("3D step of %s failed", outcome.query_id)
            outcome.result.notes.append(f"no 3D position: {type(exc).__name__}: {exc}")

    def _take_batch(self, first: _Job, *, woke: bool = False) -> list[_Job]:
        """``first`` and the queued queries that can share its engine call (see :mod:`..engine.batch`).

        ``woke``: ``first`` woke an idle worker. If another query is already queued, a burst
        is arriving (its clients' messages are received one callback, or one group, at a
        time), so the worker settles (see :meth:`_settle`) before it takes what is queued. A
        query alone is answered at once: batching must not tax the robot's single question.
        A busy worker never settles: what waited for it is all there.
        """
        if self.max_batch <= 1 or not hasattr(self.engine, "run_batch") or first.spec.conversation_id:
            return [first]  # a conversation's turns run alone, in order, through engine.ask
        if woke and self.batch_settle_s > 0 and self._queue.qsize() > 0:
            self._settle()
        if self.batch_window_s > 0 and self._queue.qsize() + 1 < self.max_batch:
            self._sleep(self.batch_window_s)  # the deployment chose to wait a little for more
        options = _generation_options(first.spec)
        taken = [first]
        q = self._queue
        with q.mutex:  # queue.Queue's own lock: its deque is edited in place, order kept
            keep: deque[_Job | None] = deque()
            for job in q.queue:
                joins = len(taken) < self.max_batch and job is not None and job.frame is first.frame
                joins = joins and not job.spec.conversation_id
                theirs = _generation_options(job.spec) if job is not None else None
                if joins and _options_agree(options, theirs):
                    taken.append(job)
                    options = options or theirs
                else:
                    keep.append(job)
            if len(taken) > 1:
                q.queue.clear()
                q.queue.extend(keep)
                q.not_full.notify_all()
        return taken

    def _settle(self) -> None:
        """Wait ``batch_settle_ms`` at a time while queries keep arriving, until a step brings none
        or a whole batch waits: a burst whose queries arrive closer together than a step is
        answered by one engine call. Only called on evidence of a burst (see :meth:`_take_batch`)."""
        q = self._queue
        while not self._stopping:
            before = q.qsize()
            if before + 1 >= self.max_batch:
                return
            self._sleep(self.batch_settle_s)
            if q.qsize() <= before:
                return

    def _run_batch(self, jobs: list[_Job]) -> None:
        """One engine call for the jobs; if it raises, each is retried alone (only the faulty one fails)."""
        started = time.monotonic()
        try:
            outcomes = self.answer_batch([j.spec for j in jobs], jobs[0].frame)
        except Exception as exc:
            what = f"{type(exc).__name__}: {exc}"
            log.warning("a batch of %d queries failed (%s); retrying them one by one", len(jobs), what)
            for job in jobs:
                if self._still_wanted(job):
                    self._run_one(job, regroup=False)
            return
        inference_ms = (time.monotonic() - started) * 1000.0
        for job, outcome in zip(jobs, outcomes, strict=True):
            outcome.queue_ms = (started - job.received) * 1000.0
            outcome.inference_ms = inference_ms
            outcome.batch_size = len(jobs)
            self._locate(outcome)
            job.finish(outcome)

    def answer_batch(self, specs: list[QuerySpec], frame: Frame) -> list[Outcome]:
        """Several queries on one frame as one engine call; a query's own error stays its own."""
        if self.engine is None:
            return [self.answer(spec, frame) for spec in specs]
        try:
            image = frame.image()
        except (ValueError, ImageError) as exc:
            return [Outcome(s.query_id, s.task, Status.BAD_IMAGE, str(exc), frame=frame) for s in specs]
        items = []
        for spec in specs:
            labels, vocab = (spec.labels, "") if spec.labels else (self.default_labels, self.vocabulary_name)
            items.append(
                BatchItem(
                    task=_TASK_NAMES[Task(spec.task)],
                    regions=spec.regions,
                    text=spec.text,
                    labels=labels,
                    rank=spec.rank_labels,
                    vocabulary_name=vocab,
                    max_new_tokens=spec.max_new_tokens,
                    num_beams=spec.num_beams,
                )
            )
        try:
            results = self.engine.run_batch(image, items, frame_key=frame.key)
        except ImageError as exc:
            return [Outcome(s.query_id, s.task, Status.BAD_IMAGE, str(exc), frame=frame) for s in specs]
        outcomes = []
        for spec, result in zip(specs, results, strict=True):
            if isinstance(result, (RegionError, TaskError)):
                outcomes.append(Outcome(spec.query_id, spec.task, Status.INVALID_QUERY, str(result), frame=frame))
            elif isinstance(result, BaseException):
                raise result
            else:
                outcomes.append(Outcome(spec.query_id, spec.task, Status.OK, "", result=result, frame=frame))
        return outcomes

    def answer(self, spec: QuerySpec, frame: Frame) -> Outcome:
        """Run one query on its frame; errors become statuses (model faults propagate)."""

        def fail(status: Status, error: str) -> Outcome:
            return Outcome(spec.query_id, spec.task, status, error, frame=frame)

        if self.engine is None:
            return fail(Status.MODEL_ERROR, "the model is not loaded (node not active)")
        try:
            image = frame.image()
        except (ValueError, ImageError) as exc:
            return fail(Status.BAD_IMAGE, str(exc))
        try:
            try:
                result = self._run_task(spec, image, frame.key)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                # out of memory: free the cached features of every frame and try once more
                log.warning("query %s ran out of memory; freeing cached features and retrying once", spec.query_id)
                self.engine.free_memory()
                try:
                    result = self._run_task(spec, image, frame.key)
                except Exception as again:
                    if is_out_of_memory(again):
                        return fail(Status.MODEL_ERROR, f"out of memory, also after freeing cached features: {again}")
                    raise
        except (RegionError, TaskError) as exc:
            return fail(Status.INVALID_QUERY, str(exc))
        except ImageError as exc:
            return fail(Status.BAD_IMAGE, str(exc))
        return Outcome(spec.query_id, spec.task, Status.OK, "", result=result, frame=frame)

    def _run_task(self, spec: QuerySpec, image: np.ndarray, key: str) -> TaskResult:
        engine = self.engine
        gen = {"max_new_tokens": spec.max_new_tokens, "num_beams": spec.num_beams}
        if spec.task == Task.CAPTION:
            return engine.caption(image, spec.regions, frame_key=key, **gen)
        if spec.task == Task.ASK:
            cid = spec.conversation_id
            return engine.ask(image, spec.regions, spec.text, frame_key=key, conversation_id=cid, **gen)
        if spec.task == Task.CLASSIFY:
            labels, vocab = (spec.labels, "") if spec.labels else (self.default_labels, self.vocabulary_name)
            return engine.classify(
                image, spec.regions, labels, frame_key=key, rank=spec.rank_labels, vocabulary_name=vocab
            )
        return engine.refer(image, spec.text, frame_key=key)

    # -- bookkeeping ----------------------------------------------------------------------------
    def _forget(self, job: _Job) -> None:
        with self._pending_lock:
            self._pending.pop(id(job), None)

    def _take_all_pending(self) -> list[_Job]:
        with self._pending_lock:
            jobs = list(self._pending.values())
            self._pending.clear()
        return jobs

    def _count_and_deliver(self, outcome: Outcome) -> None:
        if outcome.spec is not None and getattr(outcome, "release_id", True):
            with self._pending_lock:
                self._in_flight.discard(outcome.query_id)
        self.answered[outcome.status] += 1
        self.latencies_ms.append(outcome.latency_ms)
        if outcome.status == Status.OK:
            self.inference_ms.append(outcome.inference_ms)
        if outcome.status == Status.MODEL_ERROR:
            self.consecutive_model_errors += 1
        elif outcome.status == Status.OK:
            self.consecutive_model_errors = 0
        try:
            self.deliver(outcome)
        except Exception:  # a failing publisher must not kill the worker
            log.exception("delivering the outcome of %s failed", outcome.query_id)


_DEFAULT_LIMITS = EngineConfig()  # an engine without a config (a test's fake) is held to the defaults
_TASK_NAMES = {Task.CAPTION: "caption", Task.ASK: "ask", Task.CLASSIFY: "classify", Task.REFER: "refer"}


def _generation_options(spec: QuerySpec) -> tuple[int, int] | None:
    """What a query's generation depends on; None for tasks that generate with fixed options."""
    return (spec.max_new_tokens, spec.num_beams) if spec.task in (Task.CAPTION, Task.ASK) else None


def _options_agree(ours: tuple[int, int] | None, theirs: tuple[int, int] | None) -> bool:
    return ours is None or theirs is None or ours == theirs


def _joins(first: _Job, job: _Job | None) -> bool:
    """Whether queued ``job`` could share ``first``'s engine call (same frame, agreeing options, no conversation)."""
    if job is None or job.frame is not first.frame or job.spec.conversation_id or first.spec.conversation_id:
        return False
    return _options_agree(_generation_options(first.spec), _generation_options(job.spec))
