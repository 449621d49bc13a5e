"""The one background producer: a thread that works ahead of its consumer into a bounded queue.

Both front ends work ahead the same way: the dataset prefetchers gather upcoming batches, the
offload pager fills upcoming units. A :class:`Producer` runs ``_produce`` on its own thread
(started on first use, never in a constructor), handing items over through a bounded queue; a
:class:`Worker` is a producer whose items are jobs submitted by the consumer, each answered
through a ``Future``.

States (:class:`State`) and their transitions::

    IDLE --first use--> RUNNING --_produce returns--> DONE
                        RUNNING --_produce raises---> FAILED   (the error is raised to the consumer)
    IDLE | RUNNING --stop()--> STOPPED                          (also while blocked on a full queue)

DONE, FAILED and STOPPED are final: the consumer then sees the end, the error (again on every
call), or ``StoppedError``; ``stop()`` returns only once the thread has exited, so no buffer the
consumer frees afterwards is still being written. A consumer waiting in another thread when
``stop()`` is called wakes up with ``StoppedError``: it never waits for good.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from enum import IntEnum
from typing import Any

from ..errors import BigstoreError

__all__ = ["Producer", "State", "StoppedError", "Worker"]

_END = object()
_STOP = object()  # wakes a consumer still waiting after stop()


class State(IntEnum):
    IDLE = 0
    RUNNING = 1
    DONE = 2
    FAILED = 3
    STOPPED = 4


class StoppedError(BigstoreError, RuntimeError):
    """The producer was stopped; it hands out nothing more."""


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


# Started producers, stopped at interpreter exit: their threads are daemons, and a daemon that
# wakes during finalization inside torch code (a tensor from numpy being freed takes the GIL in
# a C++ destructor) is killed by pthread_exit through a noexcept frame: std::terminate, SIGABRT
# (seen from a script that exited without closing its offloaded model).
_LIVE: weakref.WeakSet[Producer] = weakref.WeakSet()
EXIT_WAIT = 10.0  # seconds one producer may take to finish its job at exit


@atexit.register
def _stop_live() -> None:
    for p in list(_LIVE):
        p.stop(timeout=EXIT_WAIT)


class Producer:
    """Subclasses implement :meth:`_produce`, calling :meth:`_put` for each item."""

    def __init__(self, maxsize: int, name: str) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))
        self.stopping = threading.Event()
        self.state = State.IDLE
        self._thread: threading.Thread | None = None
        self._name = name
        self._lock = threading.Lock()

    def _produce(self) -> None:
        raise NotImplementedError

    # -- consumer side ------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self.state is State.IDLE:
                self.state = State.RUNNING
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
                _LIVE.add(self)

    def next_item(self) -> Any:
        """The next item; StopIteration at the end (and after it); the producer's error."""
        if self.state is State.STOPPED:
            raise StoppedError(f"{self._name}: stopped")
        self.start()
        item = self.queue.get()
        if item is _STOP or self.state is State.STOPPED:
            with contextlib.suppress(queue.Full):
                self.queue.put_nowait(_STOP)  # for any other waiting consumer
            raise StoppedError(f"{self._name}: stopped")
        if item is _END or isinstance(item, _Failed):
            self.queue.put(item)  # stay exhausted, or keep failing
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def stop(self, timeout: float | None = None) -> None:
        """Stop the producer and wait for its thread to exit (unblocking it if need be), at
        most ``timeout`` seconds when given."""
        with self._lock:
            if self.state in (State.IDLE, State.RUNNING):
                self.state = State.STOPPED
            thread, self._thread = self._thread, None
        self.stopping.set()
        _LIVE.discard(self)
        deadline = None if timeout is None else time.monotonic() + timeout
        if thread is not None and thread is not threading.current_thread():
            while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
                with contextlib.suppress(queue.Empty):  # room for a producer blocked on put
                    self.queue.get(timeout=0.05)
        with contextlib.suppress(queue.Full):
            self.queue.put_nowait(_STOP)

    # -- producer side ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._produce()
        except BaseException as e:  # handed to the consumer, raised there
            with self._lock:
                if self.state is State.RUNNING:
                    self.state = State.FAILED
            self._put(_Failed(e), final=True)
            return
        with self._lock:
            if self.state is State.RUNNING:
                self.state = State.DONE
        self._put(_END, final=True)

    def _put(self, item: Any, *, final: bool = False) -> bool:
        """Hand ``item`` over; False (drop it and return) once the producer is stopped."""
        while not self.stopping.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False


class Worker(Producer):
    """Runs submitted jobs in order on its own thread; each job's result comes back through a
    Future. At most ``maxsize`` jobs wait; ``submit`` blocks beyond that."""

    def __init__(self, maxsize: int, name: str) -> None:
        super().__init__(1, name)
        self.jobs: queue.Queue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None]
        self.jobs = queue.Queue(maxsize=max(1, maxsize))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        if self.state in (State.STOPPED, State.DONE, State.FAILED):
            raise StoppedError(f"{self._name}: stopped")
        self.start()
        fut: Future[Any] = Future()
        self.jobs.put((fut, fn, args))
        return fut

    def _produce(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            if job is None:
                return
            fut, fn, args = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # the submitter gets it from the future
                fut.set_exception(e)

    def stop(self, timeout: float | None = None) -> None:
        super().stop(timeout)
        while True:  # jobs never started: cancel them, so no one waits for them forever
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job[0].cancel()
