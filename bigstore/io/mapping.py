"""Zero-copy tensors over chunk files: several files mapped back to back into one address range.

A tensor chunked into several files is still one contiguous tensor: reserve its address range,
then ``mmap`` each chunk file over its slice with ``MAP_FIXED``. Mappings are ``MAP_PRIVATE``:
writing to the tensor copies the page and never touches the file. This needs every chunk but the
last to be a whole number of pages, which the writer arranges (see ``choose_chunk_rows``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import mmap
import os
from collections.abc import Sequence
from typing import Any

__all__ = [
    "MADV_POPULATE_READ", "MADV_WILLNEED", "PAGE", "MappedRegion", "map_files", "mmap_supported",
]

PAGE = mmap.PAGESIZE
MADV_WILLNEED = getattr(mmap, "MADV_WILLNEED", 3)
# Linux >= 5.14: fill the page tables now, read-only, without copying a page (MAP_POPULATE
# would copy every page of a writable private mapping). Older kernels refuse it harmlessly.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)
_libc: Any = None


def _lib() -> Any:
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _libc = lib
    return _libc


@functools.cache
def mmap_supported() -> bool:
    # cached: find_library runs `ldconfig -p` in a subprocess (~2 ms) every time
    return os.name == "posix" and bool(ctypes.util.find_library("c"))


class MappedRegion:
    """Owns one address range; numpy arrays made from it keep it (and the mapping) alive."""

    def __init__(self, addr: int, length: int) -> None:
        self.addr, self.length = addr, length

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.length,), "typestr": "|u1", "data": (self.addr, False),
                "version": 3}

    def view(self, start: int = 0, stop: int | None = None) -> memoryview:
        stop = self.length if stop is None else stop
        return memoryview((ctypes.c_char * (stop - start)).from_address(self.addr + start)).cast(
            "B"
        )

    def advise(self, advice: int, start: int = 0, stop: int | None = None) -> None:
        """``madvise`` bytes [start, stop) of the region (widened to whole pages)."""
        lo = (start // PAGE) * PAGE
        hi = self.length if stop is None else min(self.length, stop)
        if hi > lo:
            _lib().madvise(self.addr + lo, hi - lo, advice)

    def __del__(self) -> None:
        if self.length and _libc is not None:
            _libc.munmap(self.addr, self.length)
            self.length = 0


def map_files(
    paths: Sequence[str | os.PathLike[str]], stride: int, lengths: Sequence[int]
) -> MappedRegion:
    """Map file ``i``'s first ``lengths[i]`` bytes at offset ``i * stride`` of one region.

    Raises EOFError when a file is shorter than its length (touching such a mapping past the
    end of the file would kill the process with SIGBUS, so it is never mapped).
    """
    lib = _lib()
    if len(paths) > 1 and stride % PAGE:
        raise ValueError(f"chunk stride {stride} is not a multiple of the page size {PAGE}")
    total = (len(paths) - 1) * stride + lengths[-1] if paths else 0
    if total == 0:
        return MappedRegion(0, 0)
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    prot_none = 0  # the mmap module does not export PROT_NONE
    base = lib.mmap(None, total, prot_none, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    if base in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap reserve failed")
    region = MappedRegion(base, total)  # unmaps everything on failure below
    map_fixed = 0x10  # MAP_FIXED on Linux and the BSDs
    for i, (p, n) in enumerate(zip(paths, lengths)):
        fd = os.open(p, os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < n:
                raise EOFError(f"{p}: {size} bytes, expected at least {n}")
            # no MAP_POPULATE: on a writable private mapping it copies every page (measured 5x
            # slower than faulting pages in while the checksums are computed)
            addr = lib.mmap(base + i * stride, n, prot, mmap.MAP_PRIVATE | map_fixed, fd, 0)
            if addr != base + i * stride:
                raise OSError(ctypes.get_errno(), f"mmap of {p} failed")
        finally:
            os.close(fd)
    return region
