"""A bounded local cache in front of a remote store (object storage).

What it keeps: whole chunk objects (``get``) and byte ranges of shard objects (``get_ranges``),
one local file each, under ``<cache_dir>/bigstore-cache-v2/<namespace>/<key hash>/``. Metadata
(``zarr.json``) always comes from the remote. Writes go through to the remote and drop what the
cache held for the key, so the cached view obeys the same Store contract as any backend.

Why it is safe:

- **Never stale.** Chunk objects are immutable once committed, but a store at the same URL can
  be rewritten. The namespace is a fingerprint of the store's commit marker (the root document's
  bytes and, where the backend has one, its ETag or modification time), so a rewritten store
  gets a fresh namespace, never the old bytes. Readers still verify every chunk's crc32c.
- **Never partial.** A file enters the cache by write-to-temporary then rename.
- **Never deletes what it did not download.** Eviction (LRU by bytes, by file mtime, refreshed
  on each hit) only ever removes files of its own naming scheme inside its own subdirectory:
  never the source data, never anything else in ``cache_dir``.
- **Shared safely.** Several processes (DataLoader workers, ranks on one host) may use one
  directory; a file evicted by another process between look-up and read is fetched again.
  The object pickles without its lock or remote client (spawned workers rebuild them).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from ..config import LOCK_STALE_AFTER
from ._base import Buffer, ByteRange, Store
from .lock import WriteLock

__all__ = ["CachedStore", "default_cache_dir"]

_SUBDIR = "bigstore-cache-v2"
_SUFFIX = ".blk"
_ROOT_KEY = "zarr.json"
_SPAN = re.compile(r"^(whole|[0-9]+-[0-9]+)$")


def default_cache_dir() -> str:
    return os.environ.get("BIGSTORE_CACHE_DIR") or str(Path.home() / ".cache" / "bigstore")


def _fingerprint(remote: Store) -> str:
    h = hashlib.sha256(remote.url.encode() + b"\0")
    with contextlib.suppress(FileNotFoundError):  # no store: reads fail with the remote's error
        h.update(bytes(memoryview(remote.get(_ROOT_KEY)).cast("B")))
        h.update(str(remote.version(_ROOT_KEY)).encode())
    return h.hexdigest()[:20]


class CachedStore(Store):
    """Reads through to ``remote``, keeping what it fetched under ``cache_dir`` (read-only)."""

    def __init__(
        self, remote: Store, cache_dir: str | os.PathLike[str], max_bytes: int | str
    ) -> None:
        from ..config import parse_bytes

        super().__init__(remote.url)
        self.remote = remote
        self.base = Path(cache_dir).expanduser().absolute() / _SUBDIR
        self.max_bytes = parse_bytes(max_bytes)
        self._namespace: str | None = None
        self._lock = threading.Lock()
        self._added = 0  # bytes admitted since the last eviction scan
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def dir(self) -> Path:
        """This store commit's namespace directory (fingerprinted on first use)."""
        if self._namespace is None:
            self._namespace = _fingerprint(self.remote)
        return self.base / self._namespace

    def _key_dir(self, key: str) -> Path:
        h = hashlib.sha256(key.encode()).hexdigest()
        return self.dir / h[:2] / h[2:40]

    def _file(self, key: str, r: ByteRange | None) -> Path:
        span = "whole" if r is None else f"{r.start}-{r.end}"
        return self._key_dir(key) / f"{span}{_SUFFIX}"

    def _lookup(self, path: Path, length: int | None) -> Buffer | None:
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if length is not None and len(data) != length:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # most recently used: evicted last
        with self._lock:
            self.hits += 1
        return data

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> Buffer:
        if key.rsplit("/", 1)[-1] == _ROOT_KEY:
            return self.remote.get(key)
        path = self._file(key, None)
        data = self._lookup(path, None)
        if data is None:
            data = self.remote.get(key)
            with self._lock:
                self.misses += 1
            self._admit(path, data)
        return data

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        out: list[Buffer | None] = [self._lookup(self._file(key, r), r.length) for r in ranges]
        missing = [i for i, b in enumerate(out) if b is None]
        if missing:
            with self._lock:
                self.misses += len(missing)
            got = self.remote.get_ranges(key, [ranges[i] for i in missing])
            for i, blob in zip(missing, got):
                out[i] = blob
                self._admit(self._file(key, ranges[i]), blob)
        return [b for b in out if b is not None]

    def get_many(self, keys: Sequence[str]) -> list[Buffer]:
        return [self.get(k) for k in keys]

    def read_tail(self, key: str, n: int) -> tuple[int, Buffer]:
        size = self.remote.size(key)  # the remote says how big the object is now
        (data,) = self.get_ranges(key, [ByteRange(max(0, size - n), size)])
        return size, data

    # -- cache upkeep -------------------------------------------------------------------------
    def _admit(self, path: Path, data: Buffer) -> None:
        n = memoryview(data).nbytes
        if n > self.max_bytes:
            return  # larger than the whole cache: not kept
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except OSError:
            return  # a full disk degrades to an uncached read, never to a failure
        with self._lock:
            self._added += n
            scan = self._added > self.max_bytes // 16
            if scan:
                self._added = 0
        if scan or n > self.max_bytes // 16:
            self.evict()

    def _own_files(self) -> Iterator[tuple[float, int, Path]]:
        if not self.base.is_dir():
            return
        for ns in self.base.iterdir():
            if not ns.is_dir():
                continue
            for sub in ns.iterdir():
                if not sub.is_dir() or len(sub.name) != 2:
                    continue
                for kd in sub.iterdir():
                    if not kd.is_dir() or len(kd.name) != 38:
                        continue
                    for f in kd.iterdir():
                        if f.suffix == _SUFFIX and _SPAN.match(f.stem):  # only our naming
                            with contextlib.suppress(FileNotFoundError):
                                st = f.stat()
                                yield st.st_mtime, st.st_size, f

    def cached_bytes(self) -> int:
        return sum(size for _, size, _ in self._own_files())

    def evict(self) -> None:
        """Delete least recently used cache files until the cache is within its budget."""
        files = sorted(self._own_files())
        total = sum(size for _, size, _ in files)
        for _, size, f in files:
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                f.unlink()
            total -= size

    # -- everything else goes to the remote; writes go through and invalidate ----------------
    def exists(self, key: str) -> bool:
        return self.remote.exists(key)

    def is_file(self) -> bool:
        return self.remote.is_file()

    def size(self, key: str) -> int:
        return self.remote.size(key)

    def version(self, key: str) -> str | None:
        return self.remote.version(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.remote.list(prefix)

    def staging(self, tag: str) -> Store:
        return self.remote.staging(tag)

    def write_lock(
        self, timeout: float, *, stale_after: float = LOCK_STALE_AFTER
    ) -> AbstractContextManager[WriteLock]:
        return self.remote.write_lock(timeout, stale_after=stale_after)

    def token(self, key: str) -> str:
        return self.remote.token(key)

    def replace_if(self, key: str, data: Buffer, token: str) -> str | None:
        new = self.remote.replace_if(key, data, token)
        self._invalidate(key)
        return new

    def delete_if(self, key: str, token: str) -> bool:
        gone = self.remote.delete_if(key, token)
        self._invalidate(key)
        return gone

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        created = self.remote.put_if_absent(key, data)
        self._invalidate(key)
        return created

    def replace_with(self, stage: Store, *, durable: bool = True) -> bool:
        if not self.remote.replace_with(stage, durable=durable):
            return False
        self._namespace = None  # everything changed
        return True

    def _invalidate(self, key: str) -> None:
        if key.rsplit("/", 1)[-1] == _ROOT_KEY and "/" not in key:
            self._namespace = None  # a new commit marker: a new namespace
            return
        shutil.rmtree(self._key_dir(key), ignore_errors=True)

    def put(
        self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False
    ) -> None:
        self.remote.put(key, data, writeback=writeback)
        self._invalidate(key)

    def delete(self, key: str) -> None:
        self.remote.delete(key)
        self._invalidate(key)

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self.remote.list(prefix))
        self.remote.delete_prefix(prefix)
        for k in keys:
            self._invalidate(k)

    def close(self) -> None:
        self.remote.close()
