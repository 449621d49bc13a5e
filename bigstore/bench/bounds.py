"""Hardware bounds measured in the same run as what they bound.

Benchmarks and the demo report ratios against these: the machines are shared and noisy, so an
absolute figure means little and a ratio measured side by side means a lot.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ALIGN", "BLOCK", "buffered_read_seconds", "direct_read_seconds", "disk_bound_seconds",
    "drop_page_cache", "memcpy_seconds", "o_direct_supported", "random_read_latencies",
    "read_seconds", "store_files",
]

ALIGN = 4096
BLOCK = 8 << 20


def store_files(root: str | os.PathLike[str]) -> list[Path]:
    """Every regular file under ``root`` (a store directory), or ``[root]`` for a file."""
    p = Path(root)
    if p.is_file():
        return [p]
    return sorted(f for f in p.rglob("*") if f.is_file())


def drop_page_cache(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Evict the files' pages from the page cache (POSIX_FADV_DONTNEED), for cold-cache runs.

    Dirty pages cannot be dropped, so everything is written back first (a file just written is
    otherwise still partly cached). Pages some process still has mapped stay cached: unmap first.
    """
    os.sync()
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except (FileNotFoundError, IsADirectoryError):
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def o_direct_supported(path: str | os.PathLike[str]) -> bool:
    """Whether ``path``'s file system accepts O_DIRECT (tmpfs and some overlays refuse it)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError:
        return False
    os.close(fd)
    return True


def _pieces(paths: Sequence[str | os.PathLike[str]]) -> Iterator[tuple[str, int]]:
    """(path, offset) of every BLOCK-sized request that reads the files in order."""
    for p in paths:
        size = Path(p).stat().st_size
        for off in range(0, max(size, 1), BLOCK):
            yield os.fspath(p), off


def read_seconds(
    paths: Sequence[str | os.PathLike[str]], *, direct: bool, threads: int = 1
) -> tuple[float, int]:
    """Seconds to read the files once in 8 MiB requests, and the bytes read.

    direct=True: with O_DIRECT, the disk's sequential bound with the page cache bypassed (where
    a filesystem refuses O_DIRECT, e.g. tmpfs, the file's pages are dropped and it is read
    through the cache). direct=False: through the page cache (warm, if the files are cached).
    threads > 1: that many readers take the next 8 MiB request of the files in order, keeping
    several requests in flight as a disk or an object store needs to reach its limit (one file
    is shared by all readers too).
    """
    if threads <= 1:
        t0 = time.perf_counter()
        total = _read_files(paths, direct)
        return time.perf_counter() - t0, total
    from concurrent.futures import ThreadPoolExecutor

    work = _pieces(paths)
    lock = threading.Lock()

    def reader() -> int:
        return _read_pieces(work, lock, direct)

    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        futures = [pool.submit(reader) for _ in range(threads)]
        total = sum(f.result() for f in futures)
        return time.perf_counter() - t0, total


def _read_files(paths: Sequence[str | os.PathLike[str]], direct: bool) -> int:
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT requires
    view = memoryview(buf)
    total = 0
    try:
        for p in paths:
            fd = _open_for_read(p, direct)
            try:
                off = 0
                while True:
                    n = os.preadv(fd, [view], off)
                    total += n
                    off += n
                    if n < BLOCK:
                        break
            finally:
                os.close(fd)
    finally:
        view.release()
        buf.close()
    return total


def _read_pieces(work: Iterator[tuple[str, int]], lock: threading.Lock, direct: bool) -> int:
    buf = mmap.mmap(-1, BLOCK)
    view = memoryview(buf)
    total = 0
    fds: dict[str, int] = {}
    try:
        while True:
            with lock:
                item = next(work, None)
            if item is None:
                return total
            path, off = item
            fd = fds.get(path)
            if fd is None:
                fd = fds[path] = _open_for_read(path, direct)
            total += os.preadv(fd, [view], off)
    finally:
        for fd in fds.values():
            os.close(fd)
        view.release()
        buf.close()


def _open_for_read(path: str | os.PathLike[str], direct: bool) -> int:
    if direct:
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        except OSError:
            drop_page_cache([path])
    return os.open(path, os.O_RDONLY)


def direct_read_seconds(
    paths: Sequence[str | os.PathLike[str]], *, threads: int = 1
) -> tuple[float, int]:
    """The disk's bound: see :func:`read_seconds` (direct=True)."""
    return read_seconds(paths, direct=True, threads=threads)


def disk_bound_seconds(paths: Sequence[str | os.PathLike[str]]) -> tuple[float, int, int]:
    """The fastest O_DIRECT read of the files with 1, 2, 4 or 8 readers: (seconds, bytes, readers).

    One sequential stream is not every disk's limit (virtual and NVMe disks want several
    requests in flight); the bound a loader is judged against is the best of these.
    """
    best: tuple[float, int, int] | None = None
    for n in (1, 2, 4, 8):
        drop_page_cache(paths)
        dt, total = read_seconds(paths, direct=True, threads=n)
        if best is None or dt < best[0]:
            best = (dt, total, n)
    assert best is not None
    return best


def buffered_read_seconds(paths: Sequence[str | os.PathLike[str]]) -> tuple[float, int]:
    """A read through the page cache: see :func:`read_seconds` (direct=False)."""
    return read_seconds(paths, direct=False)


def random_read_latencies(
    path: str | os.PathLike[str], block: int, count: int, *, direct: bool, seed: int = 0,
    threads: int = 1,
) -> tuple[float, np.ndarray[tuple[int], np.dtype[np.float64]]]:
    """Read ``count`` blocks of ``block`` bytes at random aligned offsets of one file.

    Returns (wall seconds, per-request seconds). ``threads`` readers share the requests (the
    queue depth). direct=True bypasses the page cache where the file system allows it.
    """
    size = Path(path).stat().st_size
    block = max(ALIGN, block // ALIGN * ALIGN)
    slots = max(1, size // block)
    offsets = np.random.default_rng(seed).integers(0, slots, count) * block
    lat = np.empty(count, np.float64)
    nxt = iter(range(count))
    lock = threading.Lock()

    def reader() -> None:
        buf = mmap.mmap(-1, block)
        view = memoryview(buf)
        fd = _open_for_read(path, direct)
        try:
            while True:
                with lock:
                    i = next(nxt, None)
                if i is None:
                    return
                t = time.perf_counter()
                os.preadv(fd, [view], int(offsets[i]))
                lat[i] = time.perf_counter() - t
        finally:
            os.close(fd)
            view.release()
            buf.close()

    t0 = time.perf_counter()
    if threads <= 1:
        reader()
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(threads) as pool:
            for f in [pool.submit(reader) for _ in range(threads)]:
                f.result()
    return time.perf_counter() - t0, lat


def memcpy_seconds(nbytes: int, *, repeat: int = 3) -> float:
    """Best-of-``repeat`` seconds for one memcpy of ``nbytes`` between warm buffers."""
    n = max(1, min(nbytes, 1 << 30))
    src = np.ones(n, np.uint8)
    dst = np.empty_like(src)
    dst[:] = 0  # fault the pages in before timing
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return best * (nbytes / n)
