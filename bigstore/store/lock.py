"""Writer locks: one writer at a time per store, so concurrent writers never lose each other's work.

Appends read the store's layout, rewrite its partial last shard and commit a new root; two
appends interleaved would each commit the other's rows away. So every write that changes a store
(an append from reading the layout to its commit; a replacing write while it publishes) holds the
store's writer lock. Others wait for it (up to ``lock_timeout``) and then go ahead on the new
state; after the timeout they fail with :class:`ConcurrentWriteError`, having changed nothing.

* Local directories: ``flock`` on ``.<name>.bigstore-lock`` beside the store. The kernel releases
  it when the holder dies, so a killed writer never blocks the next one. The holder removes the
  file while still holding it; a waiter that then finds the path gone (or naming a newer file)
  locks again, so no lock file outlives its write (one left by a killed writer is reused).
* Object stores: a lease object ``<url>.bigstore-lock/lease`` created with a conditional put
  (S3 ``If-None-Match: *``: exactly one creator wins). The holder rewrites it every
  ``stale_after / 4`` seconds, each time on condition that it is still the version it wrote
  (``If-Match``); a waiter that sees the *same* version for ``stale_after`` seconds of its own
  clock (no trust in other hosts' clocks) takes its holder for dead and deletes exactly that
  version (``If-Match`` again), then competes for a fresh lease. A holder that finds its lease
  gone or replaced has lost it: :meth:`WriteLock.check`, called by every writer right before it
  commits, then raises ConcurrentWriteError instead of committing.
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
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import LOCK_STALE_AFTER
from ..errors import ConcurrentWriteError, StoreNotFoundError

if TYPE_CHECKING:
    from ._base import Store

__all__ = ["WriteLock", "file_lock", "lease_lock"]

_POLL = 0.05
_LEASE = "lease"


class WriteLock:
    """A held writer lock. :meth:`check` raises ConcurrentWriteError once it is no longer
    exclusively held (an object-store lease broken by another writer after its holder froze
    for ``stale_after``); kernel and in-process locks cannot be lost, so their check passes."""

    def __init__(self, url: str, confirm: Callable[[], bool] | None = None,
                 every: float = 0.0) -> None:
        self.url = url
        self.lost: str | None = None  # why the lock was lost, once it was
        self._confirm = confirm
        self._every = every
        self.confirmed = time.monotonic()  # when the lease was last seen to be ours

    def check(self) -> None:
        """Raise unless the lock is still held. Called before every write into the live store
        and before the commit; confirms a lease not seen for a while with one request."""
        if self.lost is None and self._confirm is not None and (
            time.monotonic() - self.confirmed > self._every
        ):
            if self._confirm():
                self.confirmed = time.monotonic()
            else:
                self.lost = "its lease was broken by another writer after it looked stale"
        if self.lost is not None:
            raise ConcurrentWriteError(
                f"{self.url}: this writer lost its lock ({self.lost}); another writer may have "
                "changed the store, so nothing more of this write was committed: write again"
            )


def _gave_up(url: str, timeout: float, holder: str) -> ConcurrentWriteError:
    return ConcurrentWriteError(
        f"{url} is being written by another {holder}; gave up after {timeout:g} s (nothing was "
        "written): try again when it is done, or raise lock_timeout"
    )


@contextlib.contextmanager
def file_lock(path: Path, url: str, timeout: float) -> Iterator[WriteLock]:
    """An exclusive ``flock`` on ``path``, removed again when released."""
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            _flock(fd, url, timeout, deadline)
            try:  # still the file under that name? (its holder may have removed it meanwhile)
                same = path.stat().st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # locked a removed file: lock the one under the name now
    try:
        yield WriteLock(url)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still holding it: waiters on this file will see it gone
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _flock(fd: int, url: str, timeout: float, deadline: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise _gave_up(url, timeout, "process") from None
            time.sleep(_POLL)


@contextlib.contextmanager
def lease_lock(
    store: Store, url: str, timeout: float, *, stale_after: float = LOCK_STALE_AFTER
) -> Iterator[WriteLock]:
    """A lease object in ``store`` (see the module docstring). ``stale_after``: seconds a lease
    may stay unchanged before waiters take its holder for dead; it is rewritten four times as
    often, so only a killed (or frozen) holder ever loses it."""
    if stale_after <= 0:
        raise ValueError(f"stale_after must be positive, got {stale_after}")
    me = {"owner": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid()}
    beats = iter(range(1 << 62))

    def body() -> bytes:  # every rewrite differs (a new version), the beat counter says so
        return json.dumps({**me, "beat": next(beats), "time": time.time()}).encode()

    deadline = time.monotonic() + timeout
    delay = _POLL
    seen: str | None = None  # the other holder's lease version, as last observed
    since = time.monotonic()
    while True:
        if store.put_if_absent(_LEASE, body()):
            try:
                mine = _observe(store)
            except StoreNotFoundError:  # broken at once by a waiter that misjudged: retry
                continue
            break
        try:
            now = _observe(store)
        except StoreNotFoundError:
            continue  # released meanwhile: try again at once
        t = time.monotonic()
        if now != seen:  # a new lease, or its holder rewrote it: alive
            seen, since = now, t
        elif t - since >= stale_after:  # unchanged for stale_after by our own clock: dead
            store.delete_if(_LEASE, now)  # exactly that version: a fresh lease stays
            seen = None
            continue
        if t >= deadline:
            raise _gave_up(url, timeout, f"writer ({_holder(store)})")
        time.sleep(min(delay, max(0.0, deadline - t)))
        delay = min(0.2, delay * 2)  # a quick hand-over; a HEAD or GET per poll is cheap

    state = {"version": mine}

    def confirm() -> bool:
        try:
            return _observe(store) == state["version"]
        except StoreNotFoundError:
            return False

    # a lease unconfirmed for half of stale_after may have been broken: confirm before trusting
    held = WriteLock(url, confirm, stale_after / 2)
    stop = threading.Event()

    def refresh() -> None:
        while not stop.wait(stale_after / 4):
            if held.lost is not None:
                return
            try:
                new = store.replace_if(_LEASE, body(), state["version"])
            except Exception:  # a network hiccup: try again at the next beat
                continue
            if new is None:
                held.lost = "its lease was broken by another writer after it looked stale"
                return
            state["version"] = new
            held.confirmed = time.monotonic()

    beat = threading.Thread(target=refresh, name="bigstore-lease", daemon=True)
    beat.start()
    try:
        yield held
    finally:
        stop.set()
        beat.join()
        if held.lost is None:
            with contextlib.suppress(Exception):
                store.delete_if(_LEASE, state["version"])


def _observe(store: Store) -> str:
    """The lease's version token (its bytes where the backend has no versions)."""
    v = store.version(_LEASE)
    if v is None:
        return bytes(memoryview(store.get(_LEASE)).cast("B")).hex()
    return v


def _holder(store: Store) -> str:
    with contextlib.suppress(Exception):
        cur = json.loads(bytes(memoryview(store.get(_LEASE)).cast("B")))
        return f"host {cur.get('host')}, pid {cur.get('pid')}"
    return "holder unknown"
