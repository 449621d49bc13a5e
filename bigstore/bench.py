"""Hardware bounds measured in the same run as what they bound.

Benchmarks and the demo report ratios against these: the machines are shared and noisy, so an
absolute figure means little and a ratio measured side by side means a lot.
"""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "buffered_read_seconds", "direct_read_seconds", "disk_bound_seconds", "drop_page_cache",
    "memcpy_seconds",
    "peak_rss_bytes", "read_seconds", "reset_peak_rss", "store_files",
]

_ALIGN = 4096
_BLOCK = 8 << 20


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


def read_seconds(
    paths: Sequence[str | os.PathLike[str]], *, direct: bool, threads: int = 1
) -> tuple[float, int]:
    """Seconds to read the files once in 8 MiB requests, and the bytes read.

    direct=True: with O_DIRECT, the disk's sequential bound with the page cache bypassed (where
    a filesystem refuses O_DIRECT, e.g. tmpfs, the file's pages are dropped and it is read
    through the cache). direct=False: through the page cache (warm, if the files are cached).
    threads > 1: that many readers share the files (whole files each, in order), keeping
    several requests in flight as a disk or an object store needs to reach its limit.
    """
    if threads <= 1 or len(paths) <= 1:
        t0 = time.perf_counter()
        total = _read_files(paths, direct)
        return time.perf_counter() - t0, total
    from concurrent.futures import ThreadPoolExecutor

    parts = [list(paths[i::threads]) for i in range(threads)]
    with ThreadPoolExecutor(threads) as pool:
        t0 = time.perf_counter()
        total = sum(pool.map(lambda ps: _read_files(ps, direct), parts))
        return time.perf_counter() - t0, total


def _read_files(paths: Sequence[str | os.PathLike[str]], direct: bool) -> int:
    buf = mmap.mmap(-1, _BLOCK)  # page-aligned, as O_DIRECT requires
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
                    if n < _BLOCK:
                        break
            finally:
                os.close(fd)
    finally:
        view.release()
        buf.close()
    return total


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


def peak_rss_bytes() -> int:
    """This process's peak resident set size since the last :func:`reset_peak_rss`."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    """Restart the peak-RSS count from the current RSS (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
