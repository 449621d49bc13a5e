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
    "drop_page_cache", "direct_read_seconds", "buffered_read_seconds", "memcpy_seconds",
    "store_files", "peak_rss_bytes",
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

    Pages that some process still has memory-mapped stay cached: unmap first.
    """
    for p in paths:
        try:
            fd = os.open(p, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def direct_read_seconds(paths: Sequence[str | os.PathLike[str]]) -> tuple[float, int]:
    """Seconds to read the files once with O_DIRECT in 8 MiB requests (the disk's sequential
    bound, the page cache bypassed), and the bytes read. Falls back to a cold buffered read
    where O_DIRECT is refused (tmpfs, some overlay filesystems)."""
    buf = mmap.mmap(-1, _BLOCK)  # page-aligned, as O_DIRECT requires
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    try:
        for p in paths:
            try:
                fd = os.open(p, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            except OSError:
                drop_page_cache([p])
                fd = os.open(p, os.O_RDONLY)
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
    return time.perf_counter() - t0, total


def buffered_read_seconds(paths: Sequence[str | os.PathLike[str]]) -> tuple[float, int]:
    """Seconds to read the files once through the page cache (warm if they are cached)."""
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
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
    return time.perf_counter() - t0, total


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
    """This process's peak resident set size."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
