"""A producer thread feeding a bounded queue, and the consumer side that drains it.

Shared by both batch prefetchers. The thread starts on first use (never in a constructor);
an error on the producer is handed to the consumer and raised there; ``_stop_thread`` stops the
producer even while it is blocked on a full queue.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from typing import Any

__all__ = ["ProducerThread"]

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


class ProducerThread:
    def __init__(self, maxsize: int, name: str) -> None:
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, maxsize))
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self._thread_name = name

    def _produce(self) -> bool:
        """Put items with :meth:`_put`; True when done, False when stopped early."""
        raise NotImplementedError

    # -- consumer side ------------------------------------------------------------------------
    def _next_item(self) -> Any:
        """The next item; StopIteration at the end (and after it); the producer's error."""
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self.thread.start()
        item = self.queue.get()
        if item is _END or isinstance(item, _Failed):
            self.queue.put(item)  # stay exhausted, or keep failing
            if isinstance(item, _Failed):
                raise item.error
            raise StopIteration
        return item

    def _stop_thread(self) -> None:
        self.stop.set()
        if self.thread is not None:
            while self.thread.is_alive():
                # unblock a producer waiting for room in the queue
                with contextlib.suppress(queue.Empty):
                    self.queue.get(timeout=0.05)
            self.thread = None

    # -- producer side ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            if self._produce() and not self.stop.is_set():
                self._put(_END)
        except BaseException as e:  # handed to the consumer, raised there
            self._put(_Failed(e))

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
