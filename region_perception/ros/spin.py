"""How every program of ours spins: one executor kind, woken by events, never polling.

The executor is rclpy's ``SingleThreadedExecutor``: it sleeps in the middleware's wait set
until a message, timer, service request or guard condition is ready. Two alternatives were
measured on the rclpy we ship (Kilted 9.1.2) and rejected:

- ``MultiThreadedExecutor`` re-submits tasks that are queued but not yet started, in a loop
  (rclpy issue 1452, fixed after 9.1.2): the node could fall into spinning a whole core
  while its camera callbacks starved;
- ``rclpy.experimental.EventsExecutor`` polls a coroutine callback that awaits a future in
  a loop (about 1 s of CPU during a 3 s await, here), and a client call made from another
  thread while it spun never returned.

Our short-lived client tools (query tool, demo, script runner) wait with
``rclpy.spin_once(node, timeout_sec=...)``: that is rclpy's global ``SingleThreadedExecutor``,
the same kind, sleeping in the wait set until something is ready or the timeout ends. The
paced publishers (camera, replay) spin their own executor between frames (:func:`spin_until`)
instead, so that 30 times a second they do not add and remove their node from the global one.

A callback that must wait for other work (the node's ``~/query`` service waits for the
inference worker) is an ``async def`` that awaits a :class:`Handoff`: the worker thread
completes it and wakes the executor, which resumes the callback. Meanwhile the executor
keeps serving timers, services and actions.

The node's busy topics (the camera at 30 Hz, depth, and the region queries) are read by a
:class:`SubscriptionReader` instead: a thread that sleeps in a wait set of only those
subscriptions. Through the executor, every message costs a wait set of all the node's entities
rebuilt in Python, a task, and the extra wake-up rclpy's executor gives itself after each
callback; an idle 30 Hz camera paid that 60 times a second.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.guard_condition import GuardCondition
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.subscription import Subscription
from rclpy.task import Future


def make_executor(context: Context | None = None) -> SingleThreadedExecutor:
    """The executor our programs spin (see the module docstring for why this one)."""
    return SingleThreadedExecutor(context=context)


def node_executor(node: Any) -> SingleThreadedExecutor:
    """Our executor kind, in the node's context, with the node added."""
    executor = make_executor(node.context)
    executor.add_node(node)
    return executor


def spin_until(executor: SingleThreadedExecutor, deadline: float) -> None:
    """Serve callbacks until the monotonic ``deadline`` (a paced publisher's wait for its next frame)."""
    while (left := deadline - time.monotonic()) > 0:
        executor.spin_once(timeout_sec=left)


class Handoff:
    """A value one thread hands to a callback awaiting it on the executor.

    ``set`` may be called from any thread, once; it wakes the executor so the awaiting
    callback resumes at once (the executor does not poll pending callbacks).
    """

    def __init__(self, executor: Any) -> None:
        self.future: Future = Future()
        self._executor = executor

    def set(self, value: Any) -> None:
        if self.future.done():
            return
        self.future.set_result(value)
        if self._executor is not None:
            self._executor.wake()

    def done(self) -> bool:
        return self.future.done()

    def __await__(self) -> Generator[None, None, Any]:
        return self.future.__await__()


class ReaderGroup(ReentrantCallbackGroup):
    """The callback group of the subscriptions a :class:`SubscriptionReader` reads: an executor never waits
    on them, nor on their QoS events (the reader handles those too). An executor that waited on a
    subscription's events only would be woken by its every message (the middleware signals the
    subscription's data and events through one condition) and find nothing to do."""

    def can_execute(self, entity: Any) -> bool:
        return False

    def beginning_execution(self, entity: Any) -> bool:
        return False


class SubscriptionReader:
    """Subscriptions of a node read on one thread of their own, beside (not through) the executor.

    ``subscribe`` creates each subscription on the node (its name, remappings and QoS as any
    other's) and ``start`` starts the thread: it sleeps in a wait set of just these
    subscriptions, takes every message that is ready, and calls the subscription's handler with
    it, on this thread, one message at a time. A handler must be quick (the next message waits
    for it) and safe beside the executor's callbacks; one that raises is logged, the thread goes
    on. The subscriptions' QoS events (rclpy's default incompatible-QoS and -type warnings) are
    handled here as the executor would. ``close`` (from any thread) stops it; the subscriptions are
    the node's to destroy after.
    """

    WAKE_S = 1.0  # the longest wait: a context shut down without close() is noticed within this
    TAKE_AT_MOST = 64  # messages of one subscription per wake-up, so that the others are not starved

    def __init__(self, node: Any, name: str = "ros-reader") -> None:
        self.node = node
        self.name = name
        self.group = ReaderGroup()
        self._entries: list[tuple[Subscription, Callable[[Any], None]]] = []
        self._stop = GuardCondition(None, None, context=node.context)
        self._closing = False
        self._thread: threading.Thread | None = None

    def subscribe(self, msg_type: Any, topic: str, handler: Callable[[Any], None], qos: Any, *,
                  raw: bool = False) -> Subscription:
        """A subscription whose messages (``raw``: their serialized bytes) go to ``handler``; before ``start``."""
        if self._thread is not None:
            raise RuntimeError("subscribe before the reader starts")
        sub = self.node.create_subscription(msg_type, topic, handler, qos, callback_group=self.group, raw=raw)
        self._entries.append((sub, handler))
        return sub

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start reading (again a no-op once started or closed)."""
        if self._thread is None and not self._closing and self._entries:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop reading; returns once no handler runs (or after ``timeout_s``)."""
        self._closing = True
        try:
            self._stop.trigger()
        except Exception:  # the context is gone: the thread ends at its next wake-up
            pass
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
        if not self.running:
            try:
                self._stop.destroy()
            except Exception:  # destroyed with its context already
                pass

    def _run(self) -> None:
        context = self.node.context
        entries = list(self._entries)
        events = [event for sub, _ in entries for event in sub.event_handlers]
        try:
            with ExitStack() as held:  # held: not destroyed while waited on
                for sub, _ in entries:
                    held.enter_context(sub.handle)
                for event in events:
                    held.enter_context(event)
                held.enter_context(self._stop.handle)
                held.enter_context(context.handle)
                wait_set = _rclpy.WaitSet(len(entries), 1, 0, 0, 0, len(events), context.handle)
                while not self._closing and context.ok():
                    wait_set.clear_entities()
                    for sub, _ in entries:
                        wait_set.add_subscription(sub.handle)
                    for event in events:
                        event.add_to_wait_set(wait_set)
                    wait_set.add_guard_condition(self._stop.handle)
                    wait_set.wait(int(self.WAKE_S * 1e9))  # the GIL is released while it waits
                    if self._closing:
                        break
                    for event in events:
                        if event.is_ready(wait_set):
                            self._event(event)
                    ready = wait_set.get_ready_entities("subscription")
                    for sub, handler in entries:
                        if sub.handle.pointer in ready:
                            self._take(sub, handler)
        except Exception as exc:  # the context or an entity went away under us: stop quietly at shutdown
            if not self._closing and context.ok():
                self.node.get_logger().error(f"{self.name} stopped: {type(exc).__name__}: {exc}")

    def _event(self, event: Any) -> None:
        data = event.take_data()
        if data:
            try:
                event.callback(data)
            except Exception as exc:
                self.node.get_logger().error(f"{self.name}: QoS event: {type(exc).__name__}: {exc}")

    def _take(self, sub: Subscription, handler: Callable[[Any], None]) -> None:
        for _ in range(self.TAKE_AT_MOST):
            taken = sub.handle.take_message(sub.msg_type, sub.raw)
            if taken is None:
                return
            try:
                handler(taken[0])
            except Exception as exc:  # one bad message must not stop the topic
                self.node.get_logger().error(f"{sub.topic}: {type(exc).__name__}: {exc}")


class Stop:
    """A request to stop spinning that wakes the executor (any thread may set it)."""

    def __init__(self, executor: Any) -> None:
        self._handoff = Handoff(executor)

    def set(self) -> None:
        self._handoff.set(True)

    def is_set(self) -> bool:
        return self._handoff.done()

    @property
    def future(self) -> Future:
        return self._handoff.future


def spin_until_stopped(executor: SingleThreadedExecutor, stop: Stop) -> None:
    """Serve callbacks until ``stop`` is set or the context shuts down."""
    try:
        executor.spin_until_future_complete(stop.future)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass


def spin_in_background(
    executor: SingleThreadedExecutor, name: str = "ros-spin", on_exit: Callable[[], None] | None = None
) -> tuple[Stop, threading.Thread]:
    """Spin on a daemon thread (clients, harnesses); ``stop.set()`` then ``thread.join()`` ends it."""
    stop = Stop(executor)

    def run() -> None:
        try:
            spin_until_stopped(executor, stop)
        finally:
            if on_exit is not None:
                on_exit()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return stop, thread


def close_node(executor: SingleThreadedExecutor, node: Any) -> None:
    """Stop spinning, destroy ``node`` and shut rclpy down (if nobody has): every program's last step."""
    import rclpy

    executor.shutdown(timeout_sec=1.0)
    node.destroy_node()
    if rclpy.ok():
        rclpy.shutdown()


@contextmanager
def closed_at_exit(executor: SingleThreadedExecutor, node: Any) -> Iterator[None]:
    """Run the body; Ctrl-C or an external shutdown ends it quietly; :func:`close_node` either way."""
    try:
        yield
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        close_node(executor, node)


def stop_requested_by_signals() -> threading.Event:
    """An event SIGINT and SIGTERM set (instead of raising or killing): the caller stops gracefully."""
    requested = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: requested.set())
    return requested


def serve_until_signalled(
    executor: SingleThreadedExecutor, requested: threading.Event, before_stop: Callable[[], None] | None = None
) -> None:
    """Spin until ``requested`` is set (see :func:`stop_requested_by_signals`) or the context shuts down.

    The executor spins on a background thread so that the main thread, waiting on the
    event, handles a signal at once (a signal cannot interrupt the middleware's wait).
    ``before_stop`` (e.g. answering every pending query) runs while callbacks are still
    served, so the service responses it completes still go out.
    """
    stop, thread = spin_in_background(executor, "ros-executor", on_exit=requested.set)
    try:
        requested.wait()
    finally:
        try:
            if before_stop is not None:
                before_stop()
        finally:
            stop.set()
            thread.join(timeout=10)
