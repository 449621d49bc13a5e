"""Local files: pread/preadv into the caller's buffers, page-cache advice, atomic puts."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal

from .. import posix
from ..config import LOCK_STALE_AFTER
from ..errors import (
    InvalidKeyError,
    InvalidURLError,
    NotAStoreError,
    StoreNotFoundError,
    TruncatedChunkError,
)
from ..forksafe import PerProcess
from ._base import Buffer, ByteRange, Store, check_key
from .lock import WriteLock

__all__ = ["LocalStore"]

Access = Literal["normal", "sequential", "random"]
# A name's limit is 255 bytes; writers add ".<name>.bigstore-tmp-<pid>-<8 hex>" beside the store
_MAX_STORE_NAME = 215
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

    def __init__(self, root: str | os.PathLike[str], *, access: Access = "sequential") -> None:
        self.root = Path(root).expanduser().absolute()
        super().__init__(str(self.root))
        if self.root.exists() and not self.root.is_dir():
            raise NotAStoreError(f"{self.root} is a file, not a store (a store is a directory)")
        if len(self.root.name.encode()) > _MAX_STORE_NAME:
            raise InvalidURLError(
                f"{self.root}: the store's directory name is {len(self.root.name.encode())} "
                f"bytes; at most {_MAX_STORE_NAME} leave room for the staging directory and "
                "lock file beside it (file systems allow 255)"
            )
        for parent in self.root.parents:  # a store can never be made under a file either
            if parent.exists():
                if not parent.is_dir():
                    raise NotAStoreError(
                        f"{self.root}: {parent} is a file, so no store can be there"
                    )
                break
        self.access: Access = access
        # Open descriptors are cached (dataset reads hit the same shard many times); the cache
        # belongs to one process: after fork the child starts with an empty one.
        self._fds: PerProcess[_FdCache] = PerProcess(_FdCache)
        self._no_direct = False  # set once O_DIRECT was refused here (tmpfs, say)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _fd(self, key: str) -> AbstractContextManager[int]:
        """A descriptor of ``key``, leased for the ``with`` block (see :class:`_FdCache`)."""
        return self._fds.get().lease(key, self)

    def _forget(self, key: str) -> None:
        cache = self._fds.peek()
        if cache is not None:
            cache.forget(key)

    def close(self) -> None:
        cache = self._fds.peek()
        if cache is not None:
            cache.close_all()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # -- reads --------------------------------------------------------------------------------
    def get(self, key: str) -> Buffer:
        # opened afresh, not from the descriptor cache: a whole object read now (a root
        # document above all) must be the object under its name now, not a replaced one
        try:
            fd = os.open(self._path(key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError):
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None
        except IsADirectoryError:
            raise StoreNotFoundError(f"{self.url}/{key} is a directory, not a file") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # O_RDONLY opens directories too
                raise StoreNotFoundError(f"{self.url}/{key} is not a file")
            buf = bytearray(st.st_size)
            end = _vectored(lambda vs, pos: os.preadv(fd, vs, pos), [memoryview(buf)], 0)
        finally:
            os.close(fd)
        if end < len(buf):
            raise TruncatedChunkError(f"{self.url}/{key}: file ends at byte {end}, "
                                      f"expected {len(buf)}")
        return buf

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        out: list[Buffer] = []
        for r in ranges:
            buf = bytearray(r.length)
            self.read_into(key, r.start, [memoryview(buf)])
            out.append(buf)
        return out

    def get_into(self, key: str, alloc: Callable[[int], memoryview]) -> memoryview:
        # the size and the bytes of one descriptor (as read_tail)
        with self._fd(key) as fd:
            buf = alloc(os.fstat(fd).st_size)
            self._read_fd(fd, key, 0, [buf])
        return buf

    @property
    def reads_direct(self) -> bool:
        return hasattr(os, "O_DIRECT") and not self._no_direct

    def read_direct(self, key: str, start: int, stop: int | None,
                    alloc: Callable[[int], memoryview]) -> memoryview | None:
        if self._no_direct or not hasattr(os, "O_DIRECT"):
            return None
        try:
            fd = os.open(self._path(key),
                         os.O_RDONLY | os.O_DIRECT | getattr(os, "O_CLOEXEC", 0))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None
        except OSError as e:
            if e.errno == errno.EINVAL:  # a file system without O_DIRECT (tmpfs)
                self._no_direct = True
                return None
            raise
        try:
            size = os.fstat(fd).st_size
            end = size if stop is None else stop
            if end > size:
                raise TruncatedChunkError(
                    f"{self.url}/{key}: file ends at byte {size}, expected {end}")
            a = self.DIRECT_ALIGN
            lo = start // a * a
            buf = alloc(-(-end // a) * a - lo)
            pos = 0
            while lo + pos < end:  # short only at the end of the file
                n = os.preadv(fd, [buf[pos:]], lo + pos)
                if n == 0:
                    raise TruncatedChunkError(
                        f"{self.url}/{key}: file ends at byte {lo + pos}, expected {end}")
                pos += n
        except OSError as e:
            if e.errno == errno.EINVAL:  # refused after all (alignment rules): read as usual
                self._no_direct = True
                return None
            raise
        finally:
            os.close(fd)
        return buf[start - lo : end - lo]

    def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
        with self._fd(key) as fd:
            self._read_fd(fd, key, offset, outs)

    def read_tail(self, key: str, n: int) -> tuple[int, Buffer]:
        # the descriptor's own size and bytes, under one lease: the file later reads of this
        # key get, even when the name was meanwhile given to a new file (an append rewrote a
        # shard)
        with self._fd(key) as fd:
            size = os.fstat(fd).st_size
            buf = bytearray(min(n, size))
            self._read_fd(fd, key, size - len(buf), [memoryview(buf)])
        return size, buf

    def _read_fd(self, fd: int, key: str, offset: int, outs: Sequence[memoryview]) -> None:
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
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None
        if not stat.S_ISREG(st.st_mode):  # a directory (or stranger) is no object
            raise StoreNotFoundError(f"{self.url}/{key} is not a file")
        return st.st_size

    # -- capabilities -------------------------------------------------------------------------
    def local_file(self, key: str) -> tuple[str, int] | None:
        return str(self._path(key)), 0

    def version(self, key: str) -> str | None:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None
        if not stat.S_ISREG(st.st_mode):
            raise StoreNotFoundError(f"{self.url}/{key} is not a file")
        # every put is a new file renamed into place: a new inode (and mtime)
        return f"{st.st_ino}-{st.st_mtime_ns}-{st.st_size}"

    def staging(self, tag: str) -> LocalStore:
        # hidden, beside the store: on the same file system, so publishing is one rename
        self.root.parent.mkdir(parents=True, exist_ok=True)
        return LocalStore(self.root.with_name(f".{self.root.name}{tag}"), access=self.access)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
        tmp.write_bytes(bytes(memoryview(data).cast("B")))
        try:
            os.link(tmp, path)  # atomic: fails when the name exists
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def write_lock(
        self, timeout: float, *, stale_after: float = LOCK_STALE_AFTER
    ) -> AbstractContextManager[WriteLock]:
        from .lock import file_lock  # the kernel frees a dead holder's lock: nothing goes stale

        return file_lock(self.root.with_name(f".{self.root.name}.bigstore-lock"), self.url,
                         timeout)

    def replace_with(self, stage: Store, *, durable: bool = True) -> bool:
        if not isinstance(stage, LocalStore) or stage.root.parent != self.root.parent:
            return False
        self.close()
        stage.close()
        _swap_dirs(stage.root, self.root)
        if durable:  # the rename itself: an entry of the parent directory
            posix.fsync_dir(self.root.parent)
        return True

    def flush(self, keys: Sequence[str] | None = None) -> None:
        """Make objects durable (fsync the files, then their directories): before a commit, so
        that a power loss after it never finds the commit pointing at lost bytes."""
        if keys is None:
            if not self.root.is_dir():
                return
            files = [Path(d) / f for d, _s, fs in os.walk(self.root) for f in fs]
        else:
            files = [self._path(k) for k in keys]
        dirs: set[Path] = set()
        for f in files:  # every directory from the file's up to the root: new entries in each
            d = f.parent
            while (d == self.root or self.root in d.parents) and d not in dirs:
                dirs.add(d)
                d = d.parent
        # several fsyncs in flight: the file system commits them together (one journal commit
        # for many files), measured 2-4x faster than one after the other
        _parallel(_fsync_file, files)
        _parallel(posix.fsync_dir, sorted(dirs))

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return
        if base.is_file():
            yield prefix
            return
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for f in files:
                yield f if rel == "." else f"{rel}/{f}"

    # -- writes -------------------------------------------------------------------------------
    def put(
        self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False
    ) -> None:
        try:
            self._put(key, data, writeback)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # a file system with a shorter limit than ours
                raise InvalidKeyError(
                    f"{self.url}/{key}: a name is too long for this file system ({e.strerror})"
                ) from None
            raise

    def _put(self, key: str, data: Buffer | Sequence[Buffer], writeback: bool) -> None:
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
            if writeback:  # the disk works on it while we write the next ones
                posix.start_writeback(fd)
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


class _Fd:
    __slots__ = ("dead", "fd", "users")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.users = 0
        self.dead = False  # out of the cache: closed when its last user is done


class _FdCache:
    """Open read descriptors of one process, about ``limit`` of them (the oldest leaves first).

    A descriptor is *leased* for each read and closed only when no read uses it: closing it
    under a read in another thread would let the next ``open`` reuse its number, and that read
    would return another file's bytes. An evicted or forgotten descriptor still in use leaves
    the cache at once and is closed by its last reader.
    """

    limit = 256

    def __init__(self) -> None:
        self.fds: dict[str, _Fd] = {}
        self.lock = threading.Lock()
        self.open_count = 0  # descriptors open now, in the cache or leaving it

    @contextlib.contextmanager
    def lease(self, key: str, store: LocalStore) -> Iterator[int]:
        entry = self._acquire(key, store)
        try:
            yield entry.fd
        finally:
            with self.lock:
                entry.users -= 1
                if entry.dead and entry.users == 0:
                    self._close(entry)

    def _acquire(self, key: str, store: LocalStore) -> _Fd:
        with self.lock:
            entry = self.fds.get(key)
            if entry is not None:
                entry.users += 1
                return entry
            try:
                fd = os.open(store._path(key), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except FileNotFoundError:
                raise StoreNotFoundError(f"{store.url}/{key} does not exist") from None
            except IsADirectoryError:
                raise StoreNotFoundError(f"{store.url}/{key} is a directory, not a file") from None
            except NotADirectoryError:
                raise StoreNotFoundError(
                    f"{store.url}/{key}: a parent is not a directory"
                ) from None
            self.open_count += 1
            entry = _Fd(fd)
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # O_RDONLY opens directories too
                self._close(entry)
                raise StoreNotFoundError(f"{store.url}/{key} is not a file")
            if hasattr(os, "posix_fadvise") and store.access != "normal":
                os.posix_fadvise(fd, 0, 0, _ADVICE[store.access])
            if len(self.fds) >= self.limit:
                self._retire(self.fds.pop(next(iter(self.fds))))
            entry.users = 1
            self.fds[key] = entry
            return entry

    def _retire(self, entry: _Fd) -> None:
        if entry.users:
            entry.dead = True
        else:
            self._close(entry)

    def _close(self, entry: _Fd) -> None:
        os.close(entry.fd)
        self.open_count -= 1

    def forget(self, key: str) -> None:
        with self.lock:
            entry = self.fds.pop(key, None)
            if entry is not None:
                self._retire(entry)

    def close_all(self) -> None:
        with self.lock:
            for entry in self.fds.values():
                self._retire(entry)
            self.fds = {}


def _swap_dirs(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target`` atomically; whatever was at ``target`` is removed."""
    import shutil
    import uuid

    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.rename(new, target)  # renaming over an empty directory is atomic
    elif posix.renameat2_exchange(new, target):
        shutil.rmtree(new)  # now holds the old store
    else:  # no renameat2: a brief window where ``target`` is absent (never a mix)
        old = target.parent / f".{target.name}.bigstore-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(new, target)
        shutil.rmtree(old, ignore_errors=True)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parallel(fn: Callable[[Path], None], paths: Sequence[Path]) -> None:
    if len(paths) <= 1:
        for p in paths:
            fn(p)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(16, len(paths)), thread_name_prefix="bigstore-fsync") as pool:
        for _ in pool.map(fn, paths):
            pass


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
