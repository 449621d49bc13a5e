"""Local files: pread/preadv into the caller's buffers, page-cache advice, atomic puts."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from ..errors import StoreNotFoundError, TruncatedChunkError
from ._base import Buffer, ByteRange, Store, check_key

__all__ = ["LocalStore"]

Access = Literal["normal", "sequential", "random"]
_ADVICE = {
    "normal": getattr(os, "POSIX_FADV_NORMAL", 0),
    "sequential": getattr(os, "POSIX_FADV_SEQUENTIAL", 2),
    "random": getattr(os, "POSIX_FADV_RANDOM", 1),
}


class LocalStore(Store):
    """A directory on a local filesystem.

    access: the page-cache advice given for each opened file. "sequential" doubles the kernel's
    readahead (whole-chunk loads), "random" disables it (row lookups in big shards, where
    readahead would read far more than asked).
    """

    zero_copy_reads = True
    supports_rename = True

    def __init__(self, root: str | os.PathLike[str], *, access: Access = "sequential") -> None:
        self.root = Path(root).expanduser().absolute()
        super().__init__(str(self.root))
        self.access: Access = access
        # Open descriptors are cached (dataset reads hit the same shard many times); the cache
        # belongs to one process: after fork the child starts with an empty one.
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    # -- descriptors --------------------------------------------------------------------------
    def _fd(self, key: str) -> int:
        with self._lock:
            if self._pid != os.getpid():
                self._fds = {}
                self._pid = os.getpid()
            fd = self._fds.get(key)
            if fd is not None:
                return fd
            try:
                fd = os.open(self._path(key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None
            except IsADirectoryError:
                raise StoreNotFoundError(f"{self.url}/{key} is a directory, not a file") from None
            if hasattr(os, "posix_fadvise") and self.access != "normal":
                os.posix_fadvise(fd, 0, 0, _ADVICE[self.access])
            if len(self._fds) >= 256:  # bound the cache: close the oldest descriptor
                old_key = next(iter(self._fds))
                os.close(self._fds.pop(old_key))
            self._fds[key] = fd
            return fd

    def _forget(self, key: str) -> None:
        with self._lock:
            fd = self._fds.pop(key, None)
            if fd is not None and self._pid == os.getpid():
                os.close(fd)

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for fd in self._fds.values():
                    os.close(fd)
            self._fds = {}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> Buffer:
        fd = self._fd(key)
        n = os.fstat(fd).st_size
        buf = bytearray(n)
        self.read_into(key, 0, [memoryview(buf)])
        return buf

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        out: list[Buffer] = []
        for r in ranges:
            buf = bytearray(r.length)
            self.read_into(key, r.start, [memoryview(buf)])
            out.append(buf)
        return out

    def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
        fd = self._fd(key)
        views = [memoryview(o).cast("B") for o in outs]
        want = sum(v.nbytes for v in views)
        end = _vectored(lambda vs, pos: os.preadv(fd, vs, pos), views, offset)
        if end < offset + want:
            raise TruncatedChunkError(
                f"{self.url}/{key}: file ends at byte {end}, expected {offset + want}"
            )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if base.is_file():
            yield prefix
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in files:
                yield f if rel == "." else f"{rel}/{f}"

    # -- writes -------------------------------------------------------------------------------
    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        path = self._path(key)
        self._forget(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        parts = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        # write-then-rename: a reader never sees half an object under its final name
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(tmp, flags, 0o644)
        try:
            views = [memoryview(p).cast("B") for p in parts]
            _vectored(lambda vs, _pos: os.writev(fd, vs), views, 0)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)

    def delete(self, key: str) -> None:
        self._forget(key)
        self._path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        import shutil

        self.close()
        target = self._path(prefix) if prefix else self.root
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()

    def drop_cache(self, key: str) -> None:
        if not hasattr(os, "posix_fadvise"):
            return
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_IOV_MAX = 1024  # Linux's limit on buffers per preadv/writev call; more is EINVAL


def _vectored(call: Callable[[list[memoryview], int], int], views: list[memoryview],
              pos: int) -> int:
    """Run a vectored read/write over ``views`` until all are done (or EOF: 0 bytes moved),
    at most IOV_MAX buffers per call, resuming after short transfers. Returns the end position.
    """
    i = 0
    while i < len(views):
        if not views[i].nbytes:
            i += 1
            continue
        n = call(views[i : i + _IOV_MAX], pos)
        if n == 0:
            break
        pos += n
        while i < len(views) and n >= views[i].nbytes:  # skip the buffers filled completely
            n -= views[i].nbytes
            i += 1
        if n:
            views[i] = views[i][n:]
    return pos
