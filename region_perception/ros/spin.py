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
keeps serving camera frames, topic queries and timers.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from typing import Any

from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
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
