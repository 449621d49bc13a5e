"""Fill device buffers from a tensor store: straight into RAM on CPU, via a staging ring on CUDA.

CPU: uncompressed chunks on local disk are memory-mapped straight into the parameters (zero
copies; ``madvise(WILLNEED)`` first, so the disk has every chunk of the unit in flight), and
checked against their crc32c: on every load when the pages are dropped after use (each load
really reads the disk), else the first time this process maps them (the bytes then come from
the page cache that was checked). Other stores are read (``preadv``/ranged gets) into a fresh
buffer per tensor. Either way the bytes land in the budgeted memory: no staging copy.

CUDA: a ring of pinned host slots. A worker thread takes a free slot (first waiting on the
slot's event, so no slot is overwritten while a host->device copy still reads it), fills it
with verified chunk bytes, queues the copies on a dedicated copy stream and records the slot's
event. The unit's own "ready" event is recorded after its last copy; the compute stream waits
on it before the first kernel that reads the unit. The copy stream first waits on an event
recorded when the destination was allocated, so memory the caching allocator hands back is
never written while earlier kernels may still read it.
"""

from __future__ import annotations

import mmap
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .chunks import can_map, map_tensor, verify_mapped_chunk
from .mapping import MADV_WILLNEED

__all__ = ["DeviceLoader", "FillRequest", "Piece", "plan_pieces"]


@dataclass(frozen=True)
class FillRequest:
    """All rows of stored tensor ``name`` land at byte ``dst_offset`` of the destination."""

    name: str
    rows: int
    row_bytes: int
    dst_offset: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class Piece:
    """Rows [row_start, row_stop) of ``name``: staged at ``slot_offset``, copied to
    ``dst_offset``."""

    name: str
    row_start: int
    row_stop: int
    slot_offset: int
    dst_offset: int
    nbytes: int


def plan_pieces(requests: Sequence[FillRequest], slot_bytes: int) -> list[list[Piece]]:
    """Pack the requests' rows into slot-sized groups, in order. Pure: the staging I/O plan.

    A tensor larger than a slot is split by rows; a group never exceeds ``slot_bytes``.
    Every row must fit in one slot (the loader sizes slots so that it does).
    """
    groups: list[list[Piece]] = []
    cur: list[Piece] = []
    used = 0
    for r in requests:
        if r.row_bytes > slot_bytes:
            raise ValueError(f"tensor {r.name!r}: a row of {r.row_bytes} bytes exceeds the slot")
        row = 0
        while row < r.rows:
            fit = (slot_bytes - used) // r.row_bytes
            if fit == 0:
                groups.append(cur)
                cur, used = [], 0
                continue
            stop = min(r.rows, row + fit)
            n = (stop - row) * r.row_bytes
            cur.append(Piece(r.name, row, stop, used, r.dst_offset + row * r.row_bytes, n))
            used += n
            row = stop
    if cur:
        groups.append(cur)
    return groups


def _anonymous(nbytes: int) -> torch.Tensor:
    """Host memory of its own mapping: unmapped (returned to the OS) when the tensor dies.

    malloc would serve these sizes from its heap after the first free (glibc raises its mmap
    threshold dynamically) and keep freed units in the process's RSS; a private mapping makes
    RSS follow the budget exactly.
    """
    if nbytes == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=torch.uint8)


def _run_now(fn: Any, *args: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as e:
        fut.set_exception(e)
    return fut


class DeviceLoader:
    """Runs fills on its own worker threads; reads go through ``ts.read_into`` (shared pool).

    ``ts`` is a :class:`bigstore.TensorStore`. The loader owns its workers, pinned ring and
    copy stream; :meth:`close` frees them all.
    """

    def __init__(
        self,
        ts: Any,
        device: torch.device,
        *,
        workers: int,
        slots: int,
        slot_bytes: int,
        drop_cache: bool,
    ) -> None:
        self.ts = ts
        self.device = device
        self.cuda = device.type == "cuda"
        self.drop_cache = drop_cache
        self.bytes_read = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bigstore-offload")
            if workers > 0 else None
        )
        self.slot_bytes = slot_bytes
        self._ring: list[torch.Tensor] = []
        self._slot_events: list[Any] = []
        self._free: queue.Queue[int] = queue.Queue()
        self._verified: set[tuple[str, int]] = set()  # (tensor, chunk) checked by this process
        self.copy_stream: Any = None
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device=device)
            for i in range(slots):
                self._ring.append(torch.empty(slot_bytes, dtype=torch.uint8, pin_memory=True))
                self._slot_events.append(torch.cuda.Event())
                self._free.put(i)

    @property
    def staging_bytes(self) -> int:
        """Host memory held by the pinned ring (0 on CPU: bytes land in the final buffer)."""
        return len(self._ring) * self.slot_bytes

    # -- main thread --------------------------------------------------------------------------
    def allocate(self, nbytes: int) -> tuple[torch.Tensor, Any]:
        """A fresh destination buffer, and (CUDA) an event marking its allocation point.

        On CPU the fill makes one tensor per request itself (mapped or read), so the unit's
        buffer is empty: the pager only needs it for its accounting.
        """
        if not self.cuda:
            return torch.empty(0, dtype=torch.uint8), None
        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return buf, ev

    def submit(
        self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any
    ) -> Future[Any]:
        """Start filling ``dst``; the future's result is the CUDA ready event, or on CPU one
        uint8 tensor per request holding its bytes."""
        if not self.cuda:
            # Mapping is cheap (~1.5 ms a unit) and done here, on the caller's thread: worker
            # threads would wait for the GIL behind the model's Python code (5 ms switch
            # interval) many times per unit. Only slow work (reads to copy, checksums, which
            # release the GIL) goes to a worker; a warm, already checked unit needs none.
            mapped = self._map_cpu(requests)
            if self._pool is not None and self._cpu_work_left(requests, mapped):
                return self._pool.submit(self._finish_cpu, requests, mapped)
            return _run_now(self._finish_cpu, requests, mapped)
        if self._pool is None:  # prefetch=0: synchronous, on the caller's thread
            return _run_now(self.fill, requests, dst, after)
        return self._pool.submit(self.fill, requests, dst, after)

    # -- worker threads -----------------------------------------------------------------------
    def fill(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any) -> Any:
        if self.cuda:
            done = self._fill_cuda(requests, dst, after)
            self._after_read(requests)
            return done
        return self._finish_cpu(requests, self._map_cpu(requests))

    def _map_cpu(self, requests: Sequence[FillRequest]) -> dict[int, Any]:
        """Map every mappable tensor of the unit, and start reading all of them at once."""
        store = self.ts.store
        regions: dict[int, Any] = {}
        for i, r in enumerate(requests):
            m = self.ts.meta(r.name)
            if can_map(store, m):
                regions[i] = map_tensor(store, m)
                regions[i].advise(MADV_WILLNEED)  # the disk gets the whole unit in flight
        return regions

    def _cpu_work_left(self, requests: Sequence[FillRequest], mapped: dict[int, Any]) -> bool:
        if len(mapped) < len(requests):
            return True  # something to read and copy
        return self.drop_cache or any(
            (r.name, c) not in self._verified
            for r in requests for c in range(self.ts.meta(r.name).n_chunks)
        )

    def _finish_cpu(
        self, requests: Sequence[FillRequest], regions: dict[int, Any]
    ) -> list[torch.Tensor]:
        store = self.ts.store
        metas = [self.ts.meta(r.name) for r in requests]
        out: list[torch.Tensor] = []
        copied: list[FillRequest] = []
        for i, (r, m) in enumerate(zip(requests, metas)):
            region = regions.get(i)
            if region is None:
                buf = _anonymous(r.nbytes)
                if r.nbytes:
                    self.ts.read_into([(r.name, 0, r.rows, buf.numpy())])
                copied.append(r)
                out.append(buf)
                continue
            for c in range(m.n_chunks):
                if self.drop_cache or (m.name, c) not in self._verified:
                    verify_mapped_chunk(store, m, c, region)
                    self._verified.add((m.name, c))
            out.append(torch.from_numpy(np.asarray(region)[: r.nbytes]))
        with self._lock:
            self.bytes_read += sum(r.nbytes for r in requests)
        if copied and self.drop_cache:
            self._drop_pages(copied)  # mapped pages are dropped on release, once unmapped
        return out

    def _fill_cuda(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any) -> Any:
        stream = self.copy_stream
        stream.wait_event(after)
        for group in plan_pieces([r for r in requests if r.nbytes], self.slot_bytes):
            i = self._free.get()
            try:
                self._slot_events[i].synchronize()  # the slot's previous copy has finished
                slot = self._ring[i].numpy()
                self.ts.read_into(
                    (p.name, p.row_start, p.row_stop, slot[p.slot_offset : p.slot_offset + n])
                    for p in group for n in (p.nbytes,)
                )
                with torch.cuda.stream(stream):
                    for p in group:
                        src = self._ring[i][p.slot_offset : p.slot_offset + p.nbytes]
                        dst[p.dst_offset : p.dst_offset + p.nbytes].copy_(src, non_blocking=True)
                    self._slot_events[i].record(stream)
            finally:
                self._free.put(i)
        ready = torch.cuda.Event()
        ready.record(stream)
        return ready

    def _after_read(self, requests: Sequence[FillRequest]) -> None:
        n = sum(r.nbytes for r in requests)
        with self._lock:
            self.bytes_read += n
        if self.drop_cache:
            self._drop_pages(requests)

    def _drop_pages(self, requests: Sequence[FillRequest]) -> None:
        # the bytes now live in the budgeted buffer (or are done with): do not keep a second
        # copy in the page cache (it would count against the machine's memory, not the budget)
        store = self.ts.store
        for r in requests:
            meta = self.ts.meta(r.name)
            for c in range(meta.n_chunks):
                store.drop_cache(meta.chunk_key(c))

    def release(self, requests: Sequence[FillRequest], tensors: list[torch.Tensor]) -> None:
        """A unit was evicted: its last references (``tensors``) die on a worker thread, so
        unmapping (page-table teardown, TLB shootdowns) stays off the compute thread; then, on
        CPU, its pages leave the page cache too when asked to."""

        def drop(ts: list[torch.Tensor]) -> None:
            ts.clear()  # the regions unmap here
            if self.drop_cache and not self.cuda:
                self._drop_pages(requests)

        if self._pool is None:
            drop(tensors)
        else:
            self._pool.submit(drop, tensors)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self.cuda and self.copy_stream is not None:
            self.copy_stream.synchronize()
        self._ring.clear()
        self._slot_events.clear()
        self.copy_stream = None
