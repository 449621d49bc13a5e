"""A bounded local cache for remote datasets: byte ranges of shard objects as local files.

LRU by bytes. It only ever deletes files of its own naming scheme inside its own subdirectory
(``<cache_dir>/bigstore-chunks-v1/``), i.e. files a bigstore cache downloaded; never the
dataset's source, never anything else in ``cache_dir``. Several processes (DataLoader workers,
ranks on one host) may share one directory: files appear by atomic rename, and a file evicted
by another process between listing and reading is simply downloaded again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..config import parse_bytes
from ..store import Buffer, ByteRange, Store

__all__ = ["CachedStore", "default_cache_dir"]

_SUBDIR = "bigstore-chunks-v1"
_SUFFIX = ".blk"


def default_cache_dir() -> str:
    return os.environ.get("BIGSTORE_CACHE_DIR") or str(Path.home() / ".cache" / "bigstore")


class CachedStore(Store):
    """Reads through a local cache; writes are refused (datasets are read-only here)."""

    def __init__(self, remote: Store, cache_dir: str, max_bytes: int | str) -> None:
        super().__init__(remote.url)
        self.remote = remote
        self.dir = Path(cache_dir).expanduser().absolute() / _SUBDIR
        self.max_bytes = parse_bytes(max_bytes)
        self._lock = threading.Lock()
        self._added = 0  # bytes written since the last size check
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _file(self, key: str, r: ByteRange) -> Path:
        h = hashlib.sha256(f"{self.remote.url}\0{key}\0{r.start}\0{r.end}".encode()).hexdigest()
        return self.dir / h[:2] / f"{h[2:40]}{_SUFFIX}"

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        out: list[Buffer | None] = [None] * len(ranges)
        missing = []
        for i, r in enumerate(ranges):
            path = self._file(key, r)
            try:
                data: Buffer = path.read_bytes()
                if len(data) == r.length:
                    out[i] = data
                    with contextlib.suppress(OSError):
                        os.utime(path)  # recently used: evicted last
                    self.hits += 1
                    continue
            except FileNotFoundError:
                pass
            missing.append(i)
        if missing:
            self.misses += len(missing)
            got = self.remote.get_ranges(key, [ranges[i] for i in missing])
            for i, blob in zip(missing, got):
                out[i] = blob
                self._store(self._file(key, ranges[i]), blob)
        return [b for b in out if b is not None]

    def _store(self, path: Path, data: Buffer) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        n = memoryview(data).nbytes
        with self._lock:
            self._added += n
            check = self._added > max(1, self.max_bytes // 16)
            if check:
                self._added = 0
        if check or n > self.max_bytes // 16:
            self.evict()

    def _own_files(self) -> Iterator[tuple[float, int, Path]]:
        if not self.dir.is_dir():
            return
        for sub in self.dir.iterdir():
            if not sub.is_dir() or len(sub.name) != 2:
                continue
            for f in sub.iterdir():
                if f.suffix == _SUFFIX and len(f.stem) == 38:  # only our naming scheme
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

    # -- everything else goes to the remote -----------------------------------------------------
    def get(self, key: str) -> Buffer:
        return self.remote.get(key)

    def exists(self, key: str) -> bool:
        return self.remote.exists(key)

    def size(self, key: str) -> int:
        return self.remote.size(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.remote.list(prefix)

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        raise PermissionError(f"{self.url}: a cached dataset view is read-only")

    def delete(self, key: str) -> None:
        raise PermissionError(f"{self.url}: a cached dataset view is read-only")

    def delete_prefix(self, prefix: str) -> None:
        raise PermissionError(f"{self.url}: a cached dataset view is read-only")
