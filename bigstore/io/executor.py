"""A bounded thread pool, created on first use and never inherited across ``fork``.

Reads and decodes (pread, network waits, crc32c, zstd) release the GIL, so threads give real
parallelism here. The pool belongs to the process that made it: a forked child that asks for
one gets a fresh pool, never the parent's (whose threads do not exist in the child).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from ..config import default_io_threads
from ..forksafe import PerProcess

__all__ = ["Executor", "get_executor"]

T = TypeVar("T")
R = TypeVar("R")


_local = threading.local()


class Executor:
    def __init__(self, threads: int, name: str = "bigstore-io") -> None:
        self.threads = threads
        self._pool = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix=name, initializer=self._mark
        )

    def _mark(self) -> None:
        _local.pool = self

    def on_worker(self) -> bool:
        """True on one of this pool's own threads."""
        return getattr(_local, "pool", None) is self

    def submit(self, fn: Callable[..., R], *args: object) -> Future[R]:
        return self._pool.submit(fn, *args)

    def map(
        self, fn: Callable[[T], R], items: Iterable[T], *, in_flight: int | None = None
    ) -> Iterator[R]:
        """``fn`` over ``items`` in order, at most ``in_flight`` running or done-but-unread.

        On the first error, pending work is cancelled and the error raised. Called from one of
        the pool's own threads, it runs ``fn`` there, in order: waiting on the pool from inside
        it could deadlock once every thread waits.
        """
        if self.on_worker():
            for item in items:
                yield fn(item)
            return
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


# one pool per size, per process: a forked child never sees the parent's (it has no threads)
_shared: dict[int, PerProcess[Executor]] = {}


def get_executor(threads: int = 0) -> Executor:
    """The process-wide pool with ``threads`` workers (0: the default count)."""
    n = threads or default_io_threads()
    holder = _shared.get(n)
    if holder is None:  # setdefault is atomic: racing callers end up with one holder
        holder = _shared.setdefault(n, PerProcess(lambda: Executor(n)))
    return holder.get()
