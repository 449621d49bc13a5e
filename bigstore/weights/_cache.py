"""A local directory caching a remote store's chunks, under a byte limit.

Chunk files are immutable once a store is committed, but a store at the same URL can be
rewritten; so the cache is namespaced by a fingerprint of the commit marker (the root
metadata and its ETag or modification time): a rewritten store gets a fresh namespace, never
stale bytes. A chunk enters the cache
by write-to-temporary then rename, so a file under its final name is always complete; readers
still verify every chunk's crc32c. When the limit would be exceeded, the least recently used
files (by mtime, refreshed on each hit) are removed first; a chunk larger than the limit is
simply not cached.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..store import Buffer, ByteRange, FsspecStore, Store
from ..store._local import LocalStore

__all__ = ["CachingStore"]

_ROOT_KEY = "zarr.json"


def _fingerprint(remote: Store) -> str:
    """Identifies one commit of the store: its root metadata, and the commit marker's version
    stamp where the backend has one (ETag, modification time): a store rewritten with tensors
    of the same shapes has the same metadata, but not the same stamp."""
    h = hashlib.sha256(bytes(memoryview(remote.get(_ROOT_KEY)).cast("B")))
    if isinstance(remote, FsspecStore):
        try:
            info = remote.fs.info(remote._path(_ROOT_KEY))
        except (OSError, ValueError):
            info = {}
        for k in ("ETag", "ETAG", "etag", "LastModified", "mtime", "created", "generation"):
            if k in info:
                h.update(f"{k}={info[k]}".encode())
    return h.hexdigest()[:20]


class CachingStore(Store):
    """Reads through to ``remote``; whole chunk objects are kept under ``directory``."""

    def __init__(self, remote: Store, directory: str | os.PathLike[str], limit: int) -> None:
        super().__init__(remote.url)
        self.remote = remote
        self.limit = limit
        tag = _fingerprint(remote)
        self.base = Path(directory).expanduser().absolute()
        self.dir = self.base / tag
        self.dir.mkdir(parents=True, exist_ok=True)
        self.local = LocalStore(self.dir, access="normal")
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _cacheable(self, key: str) -> bool:
        return "/c" in key  # chunk objects; metadata always comes from the remote

    def get(self, key: str) -> Buffer:
        if not self._cacheable(key):
            return self.remote.get(key)
        path = self.dir / key
        if path.is_file():
            try:
                data: Buffer | None = path.read_bytes()
            except OSError:  # evicted by another thread between the check and the read
                data = None
            if data is not None:
                os.utime(path)  # most recently used
                with self._lock:
                    self.hits += 1
                return data
        data = self.remote.get(key)
        with self._lock:
            self.misses += 1
        self._admit(key, data)
        return data

    def _admit(self, key: str, data: Buffer) -> None:
        n = memoryview(data).nbytes
        if n > self.limit:
            return
        with self._lock:
            self._evict_for(n)
            try:
                self.local.put(key, data)  # temporary file + rename: never a partial file
            except OSError:
                return  # a full disk degrades to an uncached read, never to a failure

    def _evict_for(self, n: int) -> None:
        files: list[tuple[float, int, Path]] = []
        total = 0
        for dirpath, _dirs, names in os.walk(self.base):
            for f in names:
                p = Path(dirpath) / f
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if f.startswith(".") and ".tmp-" in f:
                    continue  # another writer's file in progress
                files.append((st.st_mtime, st.st_size, p))
                total += st.st_size
        files.sort()
        while files and total + n > self.limit:
            _, size, p = files.pop(0)
            p.unlink(missing_ok=True)
            total -= size

    def cached_bytes(self) -> int:
        return sum(
            (Path(d) / f).stat().st_size for d, _, fs in os.walk(self.base) for f in fs
        )

    # -- everything else goes to the remote ---------------------------------------------------
    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        if self._cacheable(key) and (self.dir / key).is_file():
            return self.local.get_ranges(key, ranges)
        return self.remote.get_ranges(key, ranges)

    def exists(self, key: str) -> bool:
        return self.remote.exists(key)

    def size(self, key: str) -> int:
        return self.remote.size(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.remote.list(prefix)

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        raise PermissionError("the offload cache is read-only")

    def delete(self, key: str) -> None:
        raise PermissionError("the offload cache is read-only")

    def delete_prefix(self, prefix: str) -> None:
        raise PermissionError("the offload cache is read-only")

    def close(self) -> None:
        self.local.close()
        self.remote.close()
