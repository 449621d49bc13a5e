"""Values that belong to one process: a forked child gets its own, never the parent's.

Thread pools, open file descriptors, fsspec clients (with their event loops and sockets) and
memory mappings must not be shared with a child made by ``fork``: the pool has no threads there,
the client's loop is not running. A :class:`PerProcess` holds such a value and makes a fresh one
(with its factory) the first time another process asks; pickling drops the value, so spawned
workers build their own too.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["PerProcess"]

T = TypeVar("T")

# One lock for every PerProcess (factories are cheap; reentrant: a factory may use another).
# Renewed in a forked child, where the parent's lock may have been held mid-fork.
_lock = threading.RLock()


def _renew_lock() -> None:
    global _lock
    _lock = threading.RLock()


os.register_at_fork(after_in_child=_renew_lock)


class PerProcess(Generic[T]):
    """``get()`` returns this process's value, made by ``factory`` on first use."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._value: T | None = None
        self._pid = -1

    def get(self) -> T:
        if self._pid != os.getpid():  # new, or inherited over fork
            with _lock:
                if self._pid != os.getpid():
                    self._value = self._factory()
                    self._pid = os.getpid()
        value = self._value
        assert value is not None
        return value

    def peek(self) -> T | None:
        """This process's value if it was made, else None (never creates one)."""
        return self._value if self._pid == os.getpid() else None

    def reset(self) -> None:
        self._value, self._pid = None, -1

    def __getstate__(self) -> dict[str, Any]:
        return {"factory": self._factory}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["factory"])  # type: ignore[misc]
