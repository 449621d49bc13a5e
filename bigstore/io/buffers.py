"""Where host buffers come from: one place for anonymous, huge-page and pinned memory.

* :func:`host_buffer`: memory of its own mapping, returned to the OS when the last tensor or
  array viewing it dies (malloc would keep freed buffers counted in RSS). Buffers of 2 MiB and
  more ask for transparent huge pages: first-touch page faults are then 512x fewer (measured
  here: a first write at 5.1 GB/s instead of 1.4 GB/s), which is what a fresh destination of a
  read costs.
* :func:`pinned_buffer`: page-locked memory (CUDA's host allocator), the only memory a
  host->device copy runs asynchronously from.
* :class:`BufferPool`: reuses sets of arrays once nothing references them any more.
* :class:`HostBufferPool`: reuses :func:`host_buffer` tensors once nothing references them
  (the CPU offload's read or decoded units: a fresh buffer costs its first-touch page faults on
  every fill).
* :class:`StagingPool`: page-aligned buffers under a byte cap, taken and given back explicitly
  (stored bytes read ahead of the fill that decodes them).
"""

from __future__ import annotations

import mmap
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .. import posix

__all__ = ["BufferPool", "HUGE", "HostBufferPool", "StagingFull", "StagingPool", "host_buffer",
           "pinned_buffer"]

HUGE = 2 << 20


def host_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 CPU tensor of ``nbytes`` in memory of its own mapping (huge pages when large)."""
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= HUGE and hasattr(m, "madvise"):
        m.madvise(posix.MADV_HUGEPAGE)
    return torch.frombuffer(m, dtype=torch.uint8)


def pinned_buffer(nbytes: int) -> torch.Tensor:
    """A uint8 page-locked CPU tensor (CUDA must be available)."""
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)


def host_array(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """A numpy array over :func:`host_buffer` memory."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return host_buffer(n).numpy().view(dtype).reshape(shape)


Alloc = Callable[[tuple[int, ...], np.dtype[Any]], np.ndarray[Any, Any]]

# sys.getrefcount of an array only the pool holds: the pool's list, the loop variable and the
# argument of getrefcount itself
_FREE_REFS = 3


class BufferPool:
    """Sets of arrays (one per column) reused once no one references them.

    A set handed out is written again only when its reference count shows that nothing else
    (no batch view, no ``torch.from_numpy`` tensor, no memoryview) holds it: buffers a caller
    keeps are never overwritten, so callers own what they get, as with fresh arrays.
    """

    def __init__(self, size: int, alloc: Alloc | None = None) -> None:
        self.sets: deque[list[np.ndarray[Any, Any]]] = deque(maxlen=max(1, size))
        self.alloc: Alloc = alloc or (lambda shape, dt: np.empty(shape, dt))
        # Pinned buffers (a custom alloc) are never reused: an asynchronous host->device copy
        # may still read one after its last Python reference is gone.
        self.reuse = alloc is None

    def take(
        self, specs: list[tuple[tuple[int, ...], np.dtype[Any]]]
    ) -> list[np.ndarray[Any, Any]]:
        for bufs in self.sets:
            if [(b.shape, b.dtype) for b in bufs] == specs and all(
                sys.getrefcount(b) <= _FREE_REFS for b in bufs
            ):
                return bufs
        bufs = [self.alloc(shape, dt) for shape, dt in specs]
        if self.reuse:
            self.sets.append(bufs)  # bounded: the oldest set leaves (its owner keeps it)
        return bufs


_use_count = getattr(torch._C, "_storage_Use_Count", None)  # private: without it, no reuse


class HostBufferPool:
    """:func:`host_buffer` tensors handed out again once nothing uses them.

    A buffer is reused only when both counts show that the pool alone holds it: Python
    references to the tensor (a numpy array or memoryview of it holds one) and tensors sharing
    its storage (every view, such as a parameter pointed into it, holds one). So memory a
    caller still sees is never overwritten. What the pool keeps beyond the buffers in use stays
    near what recent takes needed, not a second budget: on a miss, idle buffers of other sizes
    are let go, and a buffer idle through ``IDLE_TAKES`` takes is let go too (CPU offload's
    first passes can hold more units at once than the planned ones: 168 MB of buffers had stayed
    beside a 177 MB budget).
    """

    #: takes an idle buffer waits to be reused before it is let go
    IDLE_TAKES = 256

    def __init__(self) -> None:
        self._bufs: list[torch.Tensor] = []
        self._last: list[int] = []  # the take that last handed each buffer out
        self._takes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.enabled = _use_count is not None
        if self.enabled:  # the counts of a buffer only the pool holds, read the same way
            self._bufs.append(torch.empty(1, dtype=torch.uint8))
            self._idle_counts = self._counts(0)
            self._bufs.clear()

    def _counts(self, i: int) -> tuple[int, int]:
        t = self._bufs[i]
        assert _use_count is not None
        return sys.getrefcount(t), _use_count(t.untyped_storage()._cdata)

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 tensor of ``nbytes`` (contents undefined), reused when one is idle."""
        if not self.enabled or nbytes == 0:
            return host_buffer(nbytes)
        with self._lock:
            self._takes += 1
            idle = [self._counts(i) == self._idle_counts for i in range(len(self._bufs))]
            hit = next((i for i, free in enumerate(idle)
                        if free and self._bufs[i].numel() == nbytes), None)
            if hit is None:
                self.misses += 1
                keep = [not free for free in idle]
            else:
                self.hits += 1
                keep = [not free or i == hit or self._takes - self._last[i] <= self.IDLE_TAKES
                        for i, free in enumerate(idle)]
                self._last[hit] = self._takes
                buf = self._bufs[hit]
            self._bufs = [t for t, k in zip(self._bufs, keep, strict=True) if k]
            self._last = [n for n, k in zip(self._last, keep, strict=True) if k]
            if hit is None:
                buf = host_buffer(nbytes)
                self._bufs.append(buf)
                self._last.append(self._takes)
            return buf

    @property
    def held_bytes(self) -> int:
        """Bytes of every buffer the pool knows (in use or idle)."""
        with self._lock:
            return sum(t.numel() for t in self._bufs)

    def clear(self) -> None:
        """Forget every buffer (those in use stay valid for their holders)."""
        with self._lock:
            self._bufs.clear()
            self._last.clear()


class StagingFull(Exception):
    """A :class:`StagingPool` has no room for a buffer (internal: the caller reads later)."""


class StagingPool:
    """Page-aligned buffers for bytes read ahead, at most ``capacity`` bytes handed out.

    ``take`` hands out a buffer of the size asked (raising :class:`StagingFull` past the cap),
    ``give`` takes buffers back for reuse. Sizes are rounded up to one of 16 steps per power
    of two (at most 1/16 more), and an idle buffer up to a quarter larger is taken before a
    new one is made, so the chunks of a store - whose compressed sizes all differ - find idle
    buffers pass after pass, their pages already faulted in. An idle buffer is let go when
    ``IDLE_TAKES`` takes went by without it (what the early passes staged and the later ones
    keep resident), or when idle and handed-out bytes together would pass the cap.
    Thread-safe.
    """

    #: takes an idle buffer waits to be reused before it is let go
    IDLE_TAKES = 256

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0  # bytes handed out (rounded sizes)
        self.peak = 0  # the most ever handed out at once
        self._takes = 0
        self._idle: list[tuple[int, memoryview]] = []  # (take count when given back, buffer)
        self._lent: dict[int, memoryview] = {}  # id of a lent buffer's memory -> the buffer
        self._lock = threading.Lock()

    @staticmethod
    def step(nbytes: int) -> int:
        """The size a buffer for ``nbytes`` has: whole pages, then 16 steps a power of two."""
        if nbytes <= 16 * mmap.PAGESIZE:
            return -(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE
        unit = 1 << (nbytes.bit_length() - 5)
        return -(-nbytes // unit) * unit

    def take(self, nbytes: int) -> memoryview:
        size = self.step(nbytes)
        with self._lock:
            self._takes += 1
            self._idle = [(t, b) for t, b in self._idle if self._takes - t <= self.IDLE_TAKES]
            # the smallest idle buffer that holds it without wasting more than a quarter
            fits = [i for i, (_, b) in enumerate(self._idle)
                    if size <= b.nbytes <= size + size // 4]
            pick = min(fits, key=lambda i: self._idle[i][1].nbytes) if fits else None
            if pick is not None:
                size = self._idle[pick][1].nbytes
            if self.used + size > self.capacity:
                raise StagingFull(f"{self.used} of {self.capacity} staging bytes in use, "
                                  f"{size} more asked")
            self.used += size
            self.peak = max(self.peak, self.used)
            if pick is not None:
                buf = self._idle.pop(pick)[1]
            else:
                while self._idle and self.idle_bytes + self.used > self.capacity:
                    self._idle.pop(0)  # the longest idle first
                # mmap'd memory: page-aligned, as reads past the page cache need
                buf = memoryview(host_buffer(size).numpy())
            self._lent[id(buf.obj)] = buf
        return buf[:nbytes]

    def give(self, bufs: list[memoryview]) -> None:
        """Buffers from :meth:`take` (or views of them) that nothing reads any more."""
        with self._lock:
            for b in bufs:
                buf = self._lent.pop(id(b.obj))
                self.used -= buf.nbytes
                self._idle.append((self._takes, buf))

    @property
    def idle_bytes(self) -> int:
        return sum(b.nbytes for _, b in self._idle)

    @property
    def held_bytes(self) -> int:
        """Bytes handed out or kept idle."""
        with self._lock:
            return self.used + self.idle_bytes
