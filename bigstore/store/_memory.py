"""In-process memory: ``memory://name`` stores live as long as the process does.

Useful for tests and for staging small stores; gets are zero-copy views of immutable bytes.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator, Sequence

from ..config import LOCK_STALE_AFTER
from ..errors import ConcurrentWriteError, StoreNotFoundError
from ._base import Buffer, ByteRange, Store, check_key
from .lock import WriteLock

__all__ = ["MemoryStore"]


class _Space:
    """The objects of one ``memory://`` URL, shared by every MemoryStore opened on it."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        self.lock = threading.Lock()
        self.writer = threading.Lock()  # the store's writer lock (see bigstore.store.lock)


_REGISTRY: dict[str, _Space] = {}
_REGISTRY_LOCK = threading.Lock()
_VERSIONS = itertools.count(1)


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url.rstrip("/"))
        with _REGISTRY_LOCK:
            self._space = _REGISTRY.setdefault(self.url, _Space())

    def _get(self, key: str) -> bytes:
        try:
            return self._space.data[check_key(key)]
        except KeyError:
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None

    def get(self, key: str) -> Buffer:
        return memoryview(self._get(key))

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        data = memoryview(self._get(key))
        return [data[r.start : r.end] for r in ranges]

    def exists(self, key: str) -> bool:
        return check_key(key) in self._space.data

    def size(self, key: str) -> int:
        return len(self._get(key))

    def version(self, key: str) -> str | None:
        self._get(key)
        return str(self._space.versions.get(key, 0))

    def list(self, prefix: str = "") -> Iterator[str]:
        p = check_key(prefix) + "/" if prefix else ""
        with self._space.lock:
            keys = list(self._space.data)
        for k in keys:
            if k.startswith(p) or k == prefix:
                yield k

    def put(
        self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False
    ) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(memoryview(data).cast("B"))
        else:
            payload = b"".join(bytes(memoryview(d).cast("B")) for d in data)
        key = check_key(key)
        with self._space.lock:
            self._space.data[key] = payload
            self._space.versions[key] = next(_VERSIONS)

    def delete(self, key: str) -> None:
        with self._space.lock:
            self._space.data.pop(check_key(key), None)
            self._space.versions.pop(key, None)

    def delete_prefix(self, prefix: str) -> None:
        with self._space.lock:
            under = prefix + "/"
            for k in [k for k in self._space.data
                      if not prefix or k == prefix or k.startswith(under)]:
                del self._space.data[k]
                self._space.versions.pop(k, None)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        key = check_key(key)
        with self._space.lock:
            if key in self._space.data:
                return False
            self._space.data[key] = bytes(memoryview(data).cast("B"))
            self._space.versions[key] = next(_VERSIONS)
        return True

    def replace_if(self, key: str, data: Buffer, token: str) -> str | None:
        key = check_key(key)
        with self._space.lock:  # atomic: checked and written under the store's lock
            if key not in self._space.data or str(self._space.versions.get(key, 0)) != token:
                return None
            self._space.data[key] = bytes(memoryview(data).cast("B"))
            self._space.versions[key] = v = next(_VERSIONS)
        return str(v)

    def delete_if(self, key: str, token: str) -> bool:
        key = check_key(key)
        with self._space.lock:
            if key not in self._space.data or str(self._space.versions.get(key, 0)) != token:
                return False
            del self._space.data[key]
            self._space.versions.pop(key, None)
        return True

    @contextlib.contextmanager
    def write_lock(
        self, timeout: float, *, stale_after: float = LOCK_STALE_AFTER
    ) -> Iterator[WriteLock]:
        # one process holds every handle of a memory store: a plain lock, never stale
        if not self._space.writer.acquire(timeout=timeout):
            raise ConcurrentWriteError(
                f"{self.url} is being written by another thread; gave up after {timeout:g} s "
                "(nothing was written)"
            )
        try:
            yield WriteLock(self.url)
        finally:
            self._space.writer.release()

    def replace_with(self, stage: Store, *, durable: bool = True) -> bool:
        if not isinstance(stage, MemoryStore) or stage._space is self._space:
            return False
        with stage._space.lock:
            data, versions = dict(stage._space.data), dict(stage._space.versions)
            stage._space.data.clear()
            stage._space.versions.clear()
        with self._space.lock:  # one step under the lock: readers see old or new, never a mix
            self._space.data = data
            self._space.versions = versions
        return True
