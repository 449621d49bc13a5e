"""Writer locks: one writer at a time per store, so concurrent writers never lose each other's work.

Appends read the store's layout, rewrite its partial last shard and commit a new root; two
appends interleaved would each commit the other's rows away. So every write that changes a store
(an append from start to commit; a replacing write while it publishes) holds the store's writer
lock. Others wait for it (up to a timeout) and then go ahead on the new state; after the timeout
they fail with :class:`ConcurrentWriteError`, having changed nothing.

* Local directories: ``flock`` on ``.<name>.bigstore-lock`` beside the store; the kernel releases
  it when the holder dies, so a killed writer never blocks the next one. The holder removes the
  file when done (a waiter that then finds the path gone, or pointing at a newer file, tries
  again), so no lock file outlives the write; one left by a killed writer is reused.
* Object stores: a lease object created with a conditional put (S3 ``If-None-Match: *``); the
  holder refreshes it while working, and a lease not refreshed for ``stale_after`` seconds (its
  holder was killed) is broken by the next writer.
* Memory stores: a lock shared by every handle on the same ``memory://`` name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConcurrentWriteError, StoreNotFoundError

if TYPE_CHECKING:
    from ._base import Store

__all__ = ["file_lock", "lease_lock"]

_POLL = 0.05


@contextlib.contextmanager
def file_lock(path: Path, url: str, timeout: float) -> Iterator[None]:
    """An exclusive ``flock`` on ``path``, removed again when released."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _flock(fd, url, timeout, deadline)
            try:
                same = path.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder removed (and someone re-created) the file: lock the new one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding it: waiters on this inode will see it gone
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _flock(fd: int, url: str, timeout: float, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ConcurrentWriteError(
                    f"{url} is being written by another process; gave up after {timeout:g} s "
                    "(nothing was written): try again when it is done"
                ) from None
            time.sleep(_POLL)


@contextlib.contextmanager
def lease_lock(
    store: Store, url: str, timeout: float, *, stale_after: float = 120.0
) -> Iterator[None]:
    """A lease object ``lease`` in ``store`` (created atomically, refreshed while held)."""
    key = "lease"
    me = uuid.uuid4().hex
    holder = {"owner": me, "host": socket.gethostname(), "pid": os.getpid()}

    def body() -> bytes:
        return json.dumps({**holder, "time": time.time()}).encode()

    deadline = time.monotonic() + timeout
    delay = _POLL
    while not store.put_if_absent(key, body()):
        try:
            cur = json.loads(bytes(memoryview(store.get(key)).cast("B")))
        except (StoreNotFoundError, ValueError):
            continue  # released (or half-written) meanwhile: try again at once
        if time.time() - float(cur.get("time", 0)) > stale_after:
            _break(store, key, cur)  # its holder stopped refreshing it: killed
            continue
        if time.monotonic() >= deadline:
            raise ConcurrentWriteError(
                f"{url} is being written by another writer (host {cur.get('host')}, pid "
                f"{cur.get('pid')}); gave up after {timeout:g} s (nothing was written): try "
                "again when it is done"
            )
        time.sleep(delay)
        delay = min(1.0, delay * 2)
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(stale_after / 4):
            with contextlib.suppress(Exception):
                store.put(key, body())

    beat = threading.Thread(target=refresh, name="bigstore-lease", daemon=True)
    beat.start()
    try:
        yield
    finally:
        stop.set()
        beat.join()
        with contextlib.suppress(Exception):
            cur = json.loads(bytes(memoryview(store.get(key)).cast("B")))
            if cur.get("owner") == me:
                store.delete(key)


def _break(store: Store, key: str, seen: dict[str, object]) -> None:
    # delete only the lease we judged stale: a fresh one taken meanwhile stays
    with contextlib.suppress(StoreNotFoundError, ValueError):
        cur = json.loads(bytes(memoryview(store.get(key)).cast("B")))
        if cur.get("owner") == seen.get("owner") and cur.get("time") == seen.get("time"):
            store.delete(key)
