"""The few libc calls Python's standard library does not expose, through one cached handle.

``mmap`` at a fixed address (to map several files back to back), ``madvise`` on such a range,
``renameat2(RENAME_EXCHANGE)`` (atomic swap of two directories) and ``mincore`` (which pages of
a mapping are in memory). Each degrades to a clear answer where the platform lacks it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
from typing import Any

__all__ = [
    "MADV_HUGEPAGE", "MADV_POPULATE_READ", "MADV_WILLNEED", "PAGE", "available", "fsync_dir",
    "libc", "madvise", "mincore", "mmap_at", "munmap", "renameat2_exchange",
]

PAGE = mmap.PAGESIZE
MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", 3)
MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", 14)
# Linux >= 5.14: fill the page tables now, read-only, without copying a page (MAP_POPULATE
# would copy every page of a writable private mapping). Older kernels refuse it harmlessly.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_MAP_FIXED = 0x10  # Linux and the BSDs
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def available() -> bool:
    # cached: find_library runs `ldconfig -p` in a subprocess (~2 ms) every time
    return os.name == "posix" and bool(ctypes.util.find_library("c"))


@functools.cache
def libc() -> Any:
    lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    lib.mmap.restype = ctypes.c_void_p
    lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                         ctypes.c_int, ctypes.c_long]
    lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    return lib


_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int) -> None:
    """Start writing a file's dirty pages to disk now, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``); a later fsync then has little left to wait
    for. Does nothing where the call is missing."""
    if not available():
        return
    fn = getattr(libc(), "sync_file_range", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        fn(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def mmap_at(addr: int | None, length: int, prot: int, flags: int, fd: int, offset: int) -> int:
    """``mmap`` (``addr`` given: MAP_FIXED there); returns the address or raises OSError."""
    lib = libc()
    if addr is not None:
        flags |= _MAP_FIXED
    got = lib.mmap(addr, length, prot, flags, fd, offset)
    if got in (None, ctypes.c_void_p(-1).value) or (addr is not None and got != addr):
        raise OSError(ctypes.get_errno(), f"mmap of {length} bytes failed")
    return int(got)


def munmap(addr: int, length: int) -> None:
    libc().munmap(addr, length)


def madvise(addr: int, length: int, advice: int) -> None:
    """Advice on a page-aligned range; refused advice (an older kernel) is ignored."""
    libc().madvise(addr, length, advice)


def mincore(addr: int, length: int) -> bytes:
    """One byte per page of the range: bit 0 set when the page is in memory."""
    n = -(-length // PAGE)
    vec = (ctypes.c_ubyte * n)()
    if libc().mincore(addr, length, vec) != 0:
        raise OSError(ctypes.get_errno(), "mincore failed")
    return bytes(vec)


def renameat2_exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Swap two paths atomically; False where the kernel or libc cannot."""
    fn = getattr(libc(), "renameat2", None) if available() else None
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (renames, new files) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
