"""A bounded thread pool, created on first use and never inherited across ``fork``.

Reads and decodes (pread, network waits, crc32c, zstd) release the GIL, so threads give real
parallelism here. The pool belongs to the process that made it: a forked child that asks for
one gets a fresh pool, never the parent's (whose threads do not exist in the child).
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from ..config import default_io_threads

__all__ = ["Executor", "get_executor"]

T = TypeVar("T")
R = TypeVar("R")


class Executor:
    def __init__(self, threads: int, name: str = "bigstore-io") -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._pid = os.getpid()

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        return self._pool.submit(fn, *args)

    def map(
        self, fn: Callable[[T], R], items: Iterable[T], *, in_flight: int | None = None
    ) -> Iterator[R]:
        """``fn`` over ``items`` in order, at most ``in_flight`` running or done-but-unread.

        On the first error, pending work is cancelled and the error raised.
        """
        limit = in_flight or 2 * self.threads
        window: deque[Future[R]] = deque()
        it = iter(items)
        try:
            for item in it:
                window.append(self._pool.submit(fn, item))
                if len(window) >= limit:
                    yield window.popleft().result()
            while window:
                yield window.popleft().result()
        finally:
            for f in window:
                f.cancel()
            for f in window:  # never leave a worker writing into a buffer the caller frees
                if not f.cancelled():
                    f.exception()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_lock = threading.Lock()
_shared: dict[int, Executor] = {}


def get_executor(threads: int = 0) -> Executor:
    """The process-wide pool with ``threads`` workers (0: the default count)."""
    n = threads or default_io_threads()
    with _lock:
        ex = _shared.get(n)
        if ex is None or ex._pid != os.getpid():
            ex = _shared[n] = Executor(n)
        return ex


def _after_fork_in_child() -> None:
    # The parent's pools have no threads in the child; forget them (do not shut them down).
    global _lock
    _shared.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)
