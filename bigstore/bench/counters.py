"""Where the bytes came from: the process's storage-read counter, page-cache residency of
files (``mincore`` through ctypes), and peak RSS.

A "cold" figure is only cold if the bytes came from the device. ``/proc/self/io``'s
``read_bytes`` counts what this process (all its threads) caused to be fetched from storage;
page-cache residency before a run says how much of it was already in memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "device_read_bytes", "mapped_files", "peak_rss_bytes", "reset_peak_rss", "resident_bytes",
]

_PAGE = mmap.PAGESIZE


def device_read_bytes() -> int | None:
    """Bytes this process caused to be read from storage so far (None where not counted)."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


@functools.cache
def _libc() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return lib


def _file_resident(path: str | os.PathLike[str]) -> int:
    size = Path(path).stat().st_size
    if size == 0:
        return 0
    lib = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        # A fresh shared mapping faults nothing in: mincore then reports the page cache.
        addr = lib.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"mmap of {path} failed")
        try:
            pages = (size + _PAGE - 1) // _PAGE
            vec = (ctypes.c_ubyte * pages)()
            if lib.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"mincore of {path} failed")
            resident = int((np.frombuffer(vec, np.uint8) & 1).sum())
        finally:
            lib.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)
    return min(size, resident * _PAGE)


def resident_bytes(paths: Iterable[str | os.PathLike[str]]) -> int | None:
    """Bytes of the files that sit in the page cache now (None where mincore is unavailable)."""
    total = 0
    try:
        for p in paths:
            total += _file_resident(p)
    except (OSError, AttributeError):
        return None
    return total


def mapped_files(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Those of ``paths`` this process has mapped (their pages cannot be dropped)."""
    wanted = {os.path.realpath(p) for p in paths}
    found: set[str] = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(maxsplit=5)
                if len(parts) == 6 and parts[5].strip() in wanted:
                    found.add(parts[5].strip())
    except OSError:
        return []
    return sorted(found)


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
