"""Device fillers: stored arrays -> a device buffer, behind one small interface.

A fill reads from storage, or - when the caller kept the unit's :class:`HostCopy` (the host RAM
tier) - from host memory; asked to, it hands back a host copy for the caller to keep.

:class:`CpuFiller`: uncompressed chunks on local disk are memory-mapped straight into the
destination tensors (zero copies; ``posix_fadvise(WILLNEED)`` first, so the disk has every
chunk of the request in flight) and checked against their crc32c - on every fill when the
pages are dropped after use (each fill then really reads the disk), else the first time this
process maps them (the bytes then come from the page cache that was checked). Other stores are
read through the :class:`~bigstore.io.reader.ChunkReader` into host buffers, reused across
passes once nothing holds them (:class:`~bigstore.io.buffers.HostBufferPool`).

:class:`CudaFiller`: a ring of pinned host slots. Its worker takes a free slot (first waiting on
the slot's event, so no slot is overwritten while a host->device copy still reads it), fills it
through the reader, queues the copies on a dedicated copy stream and records the slot's event.
The request's "ready" event is recorded after its last copy; the compute stream waits on it
before the first kernel that reads the buffer. The copy stream first waits on an event recorded
when the destination was allocated, so memory the caching allocator hands back is never written
while earlier kernels may still read it.
"""

from __future__ import annotations

import queue
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from ..format import ArrayLayout, QuantizedLayout
from .buffers import HostBufferPool, StagingPool, host_buffer, pinned_buffer
from .executor import Executor
from .mapping import MappedArray, mappable, readahead, verify_many
from .producer import Worker
from .reader import ChunkReader, Fetch, RowRequest

__all__ = ["CpuFiller", "CudaFiller", "FillRequest", "Filled", "Filler", "HostCopy", "Piece",
           "Staged", "make_filler", "plan_pieces"]


@dataclass(frozen=True)
class FillRequest:
    """All rows of array ``layout`` land at byte ``dst_offset`` of the destination."""

    layout: ArrayLayout
    dst_offset: int

    @property
    def nbytes(self) -> int:
        return self.layout.nbytes


@dataclass(frozen=True)
class Piece:
    """Rows [row_start, row_stop) of request ``req``: staged at ``slot_offset``, copied to
    ``dst_offset``."""

    req: int
    row_start: int
    row_stop: int
    slot_offset: int
    dst_offset: int
    nbytes: int


def plan_pieces(requests: Sequence[FillRequest], slot_bytes: int) -> list[list[Piece]]:
    """Pack the requests' rows into slot-sized groups, in order. Pure: the staging I/O plan.

    A tensor larger than a slot is split by rows; a group never exceeds ``slot_bytes``.
    Every row must fit in one slot (the filler sizes slots so that it does).
    """
    groups: list[list[Piece]] = []
    cur: list[Piece] = []
    used = 0
    for i, r in enumerate(requests):
        rb, rows = r.layout.row_bytes, r.layout.rows
        if rb == 0 or r.nbytes == 0:
            continue
        if rb > slot_bytes:
            raise ValueError(f"array {r.layout.path!r}: a row of {rb} bytes exceeds the slot")
        row = 0
        while row < rows:
            fit = (slot_bytes - used) // rb
            if fit == 0:
                groups.append(cur)
                cur, used = [], 0
                continue
            stop = min(rows, row + fit)
            n = (stop - row) * rb
            cur.append(Piece(i, row, stop, used, r.dst_offset + row * rb, n))
            used += n
            row = stop
    if cur:
        groups.append(cur)
    return groups


@dataclass
class HostCopy:
    """A unit's bytes kept in host RAM between uses (the host tier).

    CPU: the tensors its parameters point to (views of file mappings kept alive, or of
    anonymous buffers). CUDA: one pinned buffer laid out like the device buffer - or, for a
    unit with quantized tensors, holding their packed parts as stored (``packed``), decoded
    on the device at each fill.
    """

    nbytes: int
    tensors: list[torch.Tensor]
    packed: list[_Piece] | None = None


@dataclass(frozen=True)
class _Piece:
    """One run of bytes of a packed transfer: request ``req``'s tensor (``part`` None) or one
    part span of its quantized tensor, at ``host`` in the pinned buffer."""

    req: int
    part: Any  # a PartSpan, or None for a plain tensor
    host: int
    nbytes: int


def _packed_plan(requests: Sequence[FillRequest]) -> tuple[list[_Piece], int]:
    """Where each tensor (and each quantized tensor's parts) goes in a packed pinned buffer."""
    pieces: list[_Piece] = []
    off = 0
    for i, r in enumerate(requests):
        if isinstance(r.layout, QuantizedLayout):
            for span in r.layout.part_spans(0, r.layout.rows):
                pieces.append(_Piece(i, span, off, span.nbytes))
                off += span.nbytes
        elif r.nbytes:
            pieces.append(_Piece(i, None, off, r.nbytes))
            off += r.nbytes
    return pieces, off


@dataclass
class Filled:
    """What a fill did: the tensors to use (CPU) or the event to wait on (CUDA), the host copy
    to keep (when asked), and where the bytes came from."""

    tensors: list[torch.Tensor] | None = None
    ready: Any = None
    host: HostCopy | None = None
    from_storage: int = 0
    from_host: int = 0
    staged: bool = False  # the stored bytes had been read ahead (:meth:`Filler.hint`)


@dataclass
class Staged:
    """A unit's stored bytes read ahead of its fill (:meth:`Filler.hint`): each fetch's bytes,
    in buffers of the filler's staging pool, unchecked until the fill uses them."""

    views: dict[Fetch, memoryview]
    bufs: list[memoryview]


def _readahead_all(store: Any, requests: Sequence[FillRequest]) -> None:
    for r in requests:
        readahead(store, r.layout)


#: threads reading stored bytes ahead into staging (at least; a store read with more threads
#: gets as many)
STAGE_READERS = 4


def _staged(fut: Future[Staged | None] | None) -> Staged | None:
    """What a stage job read (waiting for it), or None when it read nothing usable."""
    if fut is None:
        return None
    try:
        return fut.result()
    except Exception:  # cancelled (a stopped hinter): the fill reads for itself
        return None


def _done(fn: Any, *args: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as e:
        fut.set_exception(e)
    return fut


class Filler(ABC):
    """Fills destination buffers on ``device`` from a reader's store."""

    def __init__(self, reader: ChunkReader, device: torch.device, *, background: bool) -> None:
        self.reader = reader
        self.device = device
        self.bytes_read = 0  # bytes delivered into destinations (device-buffer bytes)
        self._lock = threading.Lock()
        self._verified: dict[str, np.ndarray[Any, Any]] = {}
        self.recheck = False  # check mapped chunks on every use (their pages get dropped)
        self.worker: Worker | None = (
            Worker(8, f"bigstore-fill-{device.type}") if background else None
        )
        # storage hints on a thread of their own: on the shared pool they would queue behind
        # the chunk reads and decodes of the fill in progress while the disk idles
        self.hinter: Worker | None = Worker(64, "bigstore-hint") if background else None

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_read += n

    @property
    def staging_bytes(self) -> int:
        """Host memory held for staging (0 when bytes land in their final buffer)."""
        return 0

    @abstractmethod
    def allocate(self, nbytes: int) -> tuple[torch.Tensor, Any]:
        """A destination of ``nbytes`` and what the fill must wait for before writing it."""

    @abstractmethod
    def submit(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any, *,
               host: HostCopy | None = None, keep: bool = False,
               staged: Future[Staged | None] | None = None) -> Future[Filled]:
        """Start filling ``dst`` (from ``host`` when given, else from storage; ``keep``: also
        hand back a host copy to keep; ``staged``: what :meth:`hint` returned for these
        requests, now the fill's to use and give back). The future's result says what was
        done."""

    def release(self, requests: Sequence[FillRequest], tensors: list[torch.Tensor], *,
                kept: bool = False) -> None:
        """The destination is no longer used; ``tensors`` are its last references (``kept``:
        a host copy still holds the unit)."""
        tensors.clear()

    def hint(self, requests: Sequence[FillRequest]) -> Future[Staged | None] | None:
        """These requests will be submitted soon (their destination is not free yet): let the
        storage start on them. A hint reserves nothing of the budget and checks nothing.
        Local files get a read-ahead hint; a filler that stages (:class:`CpuFiller`) may
        instead read the stored bytes ahead into its staging pool and return their future,
        which the caller passes to :meth:`submit` or :meth:`unstage`."""
        self._start_reads(requests)
        return None

    def unstage(self, staged: Future[Staged | None] | None) -> None:  # noqa: B027 - a hook
        """Staged bytes that no fill will use: back to the staging pool (once read)."""

    def _start_reads(self, requests: Sequence[FillRequest]) -> None:
        """``posix_fadvise(WILLNEED)`` on every byte of ``requests``, off the caller's thread
        when there is a worker: on a cold file the call allocates pages and submits the reads
        before it returns (0.6 ms a call here; 0.2 s of a 1.2 s cold offload pass when the
        model's thread made them)."""
        if self.hinter is None:
            _readahead_all(self.reader.store, requests)
        else:
            self.hinter.submit(_readahead_all, self.reader.store, list(requests))

    def fill_rows(self, layout: ArrayLayout, rows: np.ndarray[Any, Any],
                  host: HostCopy | None = None) -> torch.Tensor:
        """Rows ``rows`` (sorted, distinct) of ``layout`` as a compact uint8 tensor on the
        device, synchronously: from the unit's host copy when it has one, else reading only
        the chunks that hold them (checked)."""
        if host is not None:  # a one-weight unit: its bytes start the host copy
            table = host.tensors[0][: layout.nbytes].view(layout.rows, layout.row_bytes)
            picked = table.index_select(0, torch.from_numpy(np.asarray(rows, np.int64)))
        else:
            picked = self._rows_on_host(layout, rows)
        return picked if self.device.type == "cpu" else picked.to(self.device)

    def _rows_on_host(self, layout: ArrayLayout, rows: np.ndarray[Any, Any]) -> torch.Tensor:
        rb = layout.row_bytes
        out = host_buffer(len(rows) * rb)
        dst = out.numpy().reshape(len(rows), rb)
        store = self.reader.store
        if self.device.type == "cpu" and mappable(store, layout):
            m = MappedArray(store, layout, verified=self._record(layout))
            if self.reader.verify:
                m.verify(np.unique(rows // layout.chunk_rows), again=self.recheck)
            np.take(m.data().reshape(layout.rows, rb), rows, axis=0, out=dst)
        else:  # whole chunks (their checksums cover them), then the rows out of them
            chunks = np.unique(rows // layout.chunk_rows)
            bufs = [np.empty((layout.chunk_rows, rb), np.uint8) for _ in chunks]
            self.reader.read_chunks(layout, chunks.tolist(), bufs)
            where = np.searchsorted(chunks, rows // layout.chunk_rows)
            for i, (c, r) in enumerate(zip(where.tolist(), (rows % layout.chunk_rows).tolist())):
                dst[i] = bufs[c][r]
        self._count(out.numel())
        return out

    def _record(self, layout: ArrayLayout) -> np.ndarray[Any, Any]:
        """This process's record of the checked chunks of ``layout`` (mappings come and go)."""
        return self._verified.setdefault(layout.path, np.zeros(max(1, layout.n_chunks), np.uint8))

    def free_host(self, requests: Sequence[FillRequest], host: HostCopy) -> None:
        """A host copy leaves the host tier."""
        host.tensors.clear()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        if self.hinter is not None:
            self.hinter.stop()
            self.hinter = None


class CpuFiller(Filler):
    """Fills on the CPU: mapped (zero copies) where the store allows, read otherwise.

    On the CPU the host tier and the device are the same memory: a kept unit is its mappings
    (their page tables filled, their checksums checked) or its read buffers, kept alive, and a
    fill from it only points the parameters at them again.
    """

    def __init__(self, reader: ChunkReader, *, background: bool, drop_cache: bool,
                 staging_bytes: int = 0) -> None:
        super().__init__(reader, torch.device("cpu"), background=background)
        self.drop_cache = drop_cache
        self.recheck = drop_cache
        # read or decoded units land in buffers reused across passes once released: a fresh
        # buffer costs its page faults on every fill (~8% of a cold int4 pass here, NOTES)
        self.buffers = HostBufferPool()
        # Units that are decoded are read ahead into staging where the page cache cannot do
        # it: their chunks are read past the cache (drop_cache) or come from an object store.
        # Their fills then only check and decode, so the next fill fits beside the compute;
        # without it one fill reads at a time, as the budget allows
        self.staging = StagingPool(staging_bytes)
        self._stages = background and staging_bytes > 0 and (drop_cache or reader.store.is_remote)
        # The stage's reads run several at once on threads of their own: they use little CPU
        # (the disk's DMA, or the network) and on the shared pool they would wait behind
        # decodes. Reading a unit's part files, 4 readers alone took 1.4 GB/s from this disk
        # against ~1.1 for one thread in turn; inside a pass the two were within the VM's noise
        self._stage_pool = (Executor(max(STAGE_READERS, reader.config.threads), "bigstore-stage")
                            if self._stages else None)
        self._fetches: dict[tuple[str, ...], list[Fetch]] = {}
        self.decode_jobs: int | None = None  # reads and decodes of a fill at once (None: pool)

    @property
    def staging_bytes(self) -> int:
        return self.staging.held_bytes

    def hint(self, requests: Sequence[FillRequest]) -> Future[Staged | None] | None:
        decoded = [r for r in requests if r.layout.decoded] if self._stages else []
        rest = [r for r in requests if not r.layout.decoded] if decoded else requests
        self._start_reads(rest)
        if not decoded:
            return None
        assert self.hinter is not None
        return self.hinter.submit(self._stage, decoded)

    def _stage(self, requests: Sequence[FillRequest]) -> Staged | None:
        """Read the stored bytes of ``requests`` into staging; None when the pool is full or
        a read fails."""
        key = tuple(r.layout.path for r in requests)
        fetches = self._fetches.get(key)
        if fetches is None:  # the plan of a unit's reads is the same every pass
            fetches = self._fetches[key] = self.reader.fetches(r.layout for r in requests)
        bufs: list[memoryview] = []

        def take(n: int) -> memoryview:
            buf = self.staging.take(n)
            bufs.append(buf)  # list.append is atomic: reads run on several threads
            return buf

        def one(f: Fetch) -> memoryview:
            return self.reader.fetch(f, take, direct=self.drop_cache)

        assert self._stage_pool is not None
        try:
            views = dict(zip(fetches, self._stage_pool.map(one, fetches), strict=True))
        except Exception:  # StagingFull, or a read failed: the fill reads (and reports) itself
            self.staging.give(bufs)
            return None
        return Staged(views, bufs)

    def unstage(self, staged: Future[Staged | None] | None) -> None:
        if staged is not None:
            staged.add_done_callback(self._give_back)

    def _give_back(self, fut: Future[Staged | None]) -> None:
        if not fut.cancelled() and fut.exception() is None:
            got = fut.result()
            if got is not None:
                self.staging.give(got.bufs)

    def allocate(self, nbytes: int) -> tuple[torch.Tensor, Any]:
        # one tensor per request is made by the fill itself (mapped or read): the buffer is
        # only for the caller's accounting
        return torch.empty(0, dtype=torch.uint8), None

    def submit(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any, *,
               host: HostCopy | None = None, keep: bool = False,
               staged: Future[Staged | None] | None = None) -> Future[Filled]:
        if host is not None:
            self.unstage(staged)
            return _done(lambda: Filled(tensors=list(host.tensors), from_host=host.nbytes))
        # Mapping is cheap (~1.5 ms a unit) and done here, on the caller's thread: the worker
        # would wait for the GIL behind the model's Python code (5 ms switch interval) many
        # times per unit. Only slow work (reads to copy, checksums; they release the GIL) goes
        # to the worker; a warm, already checked request needs none.
        mapped = self._map(requests)
        # the disk gets the whole unit in flight now: the mapped chunks are checked and the
        # others read and decoded on the worker, one unit after another
        self._start_reads(requests)
        if self.worker is not None and self._work_left(requests, mapped):
            return self.worker.submit(self._finish, requests, mapped, keep, staged)
        return _done(self._finish, requests, mapped, keep, staged)

    def _start_reads(self, requests: Sequence[FillRequest]) -> None:
        if self.drop_cache:  # decoded chunks are read past the page cache: no hint for them
            requests = [r for r in requests if not r.layout.decoded]
        if requests:
            super()._start_reads(requests)

    def _map(self, requests: Sequence[FillRequest]) -> dict[int, MappedArray]:
        store = self.reader.store
        out: dict[int, MappedArray] = {}
        for i, r in enumerate(requests):
            if mappable(store, r.layout):
                out[i] = MappedArray(store, r.layout, verified=self._record(r.layout),
                                     populate=True)
        return out

    def _work_left(self, requests: Sequence[FillRequest], mapped: dict[int, MappedArray]
                   ) -> bool:
        return (len(mapped) < len(requests) or self.drop_cache
                or any(not m.verified.all() for m in mapped.values()))

    def _finish(self, requests: Sequence[FillRequest], mapped: dict[int, MappedArray],
                keep: bool, staged: Future[Staged | None] | None = None) -> Filled:
        try:
            return self._fill(requests, mapped, keep, _staged(staged))
        finally:
            self.unstage(staged)

    def _fill(self, requests: Sequence[FillRequest], mapped: dict[int, MappedArray],
              keep: bool, staged: Staged | None) -> Filled:
        if self.reader.verify and mapped:  # the unit's chunks together, as `load` does
            with self.reader.guard(confirm=False):  # a replaced store says so
                for _ in verify_many(mapped.values(), again=self.drop_cache):
                    pass
        out: list[torch.Tensor] = []
        reads: list[RowRequest] = []
        for i, r in enumerate(requests):
            m = mapped.get(i)
            if m is None:
                buf = self.buffers.take(r.nbytes)
                if r.nbytes:
                    reads.append(RowRequest(r.layout, 0, r.layout.rows, memoryview(buf.numpy())))
                out.append(buf)
                continue
            out.append(torch.from_numpy(m.data()))
        if reads:  # one call: every tensor's reads (and decodes) of the unit in flight at once
            # dropping the cache: decoded chunks are read past it (nothing to fill, then evict)
            self.reader.read_rows(reads, direct=self.drop_cache, jobs=self.decode_jobs,
                                  staged=staged.views if staged is not None else None)
        n = sum(r.nbytes for r in requests)
        self._count(n)
        if self.drop_cache and not keep:  # mapped pages are dropped on release, once unmapped
            self._drop([r for i, r in enumerate(requests) if i not in mapped])
        return Filled(tensors=out, host=HostCopy(n, list(out)) if keep else None,
                      from_storage=n, staged=staged is not None)

    def _drop(self, requests: Sequence[FillRequest]) -> None:
        # the bytes now live in the budgeted buffer (or are done with): no second copy in the
        # page cache (it would count against the machine's memory, not the budget). Decoded
        # chunks read past the cache left nothing there: no call for them (a call per file,
        # twice a unit, had cost 12 ms of CPU a cold int4 pass)
        store = self.reader.store
        direct = store.reads_direct
        for r in requests:
            if direct and r.layout.decoded:
                continue
            for key in r.layout.object_keys():
                store.drop_cache(key)

    def release(self, requests: Sequence[FillRequest], tensors: list[torch.Tensor], *,
                kept: bool = False) -> None:
        # the last references die on the worker, so unmapping (page-table teardown, TLB
        # shootdowns) stays off the compute thread; then the pages leave the cache if asked
        def drop() -> None:
            tensors.clear()
            if self.drop_cache and not kept:
                self._drop(requests)

        if kept:
            tensors.clear()  # the host copy keeps the memory: nothing is unmapped
        elif self.worker is None:
            drop()
        else:
            self.worker.submit(drop)

    def free_host(self, requests: Sequence[FillRequest], host: HostCopy) -> None:
        self.release(requests, host.tensors)

    def close(self) -> None:
        super().close()  # the hinter first: no stage job starts after this
        if self._stage_pool is not None:
            self._stage_pool.shutdown()
            self._stage_pool = None
        self.buffers.clear()


class CudaFiller(Filler):
    """Fills CUDA memory through a ring of pinned host slots and a copy stream."""

    def __init__(self, reader: ChunkReader, device: torch.device, *, background: bool,
                 slots: int, slot_bytes: int) -> None:
        super().__init__(reader, device, background=background)
        self.slot_bytes = slot_bytes
        self.copy_stream: Any = torch.cuda.Stream(device=device)
        self.ring: list[torch.Tensor] = [pinned_buffer(slot_bytes) for _ in range(slots)]
        self._events: list[Any] = [torch.cuda.Event() for _ in range(slots)]
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(slots):
            self._free.put(i)

    @property
    def staging_bytes(self) -> int:
        return len(self.ring) * self.slot_bytes

    def allocate(self, nbytes: int) -> tuple[torch.Tensor, Any]:
        buf = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        ev = torch.cuda.Event()
        ev.record(torch.cuda.current_stream(self.device))
        return buf, ev

    def submit(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any, *,
               host: HostCopy | None = None, keep: bool = False,
               staged: Future[Staged | None] | None = None) -> Future[Filled]:
        # hints stage nothing here (the ring of pinned slots is this filler's staging)
        assert staged is None
        if host is not None:  # host tier -> device: asynchronous copies, queued from here
            if host.packed is not None:
                return _done(self._from_packed, requests, host, dst, after)
            return _done(self._from_host, host, dst, after)
        fill: Callable[[Sequence[FillRequest], torch.Tensor, Any], Filled]
        if any(isinstance(r.layout, QuantizedLayout) for r in requests):
            # quantized tensors cross PCIe packed and are decoded on the device
            fill = partial(self._fill_packed, keep=keep)
        else:
            fill = self._fill_kept if keep else self._fill
        if self.worker is None:  # prefetch=0: synchronous, on the caller's thread
            return _done(fill, requests, dst, after)
        return self.worker.submit(fill, requests, dst, after)

    def _from_host(self, host: HostCopy, dst: torch.Tensor, after: Any) -> Filled:
        stream = self.copy_stream
        stream.wait_event(after)
        with torch.cuda.stream(stream):
            dst.copy_(host.tensors[0][: dst.numel()], non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(stream)
        return Filled(ready=ready, from_host=host.nbytes)

    def _fill_kept(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any
                   ) -> Filled:
        """Read the unit into a new pinned buffer laid out like ``dst`` (it becomes the host
        copy), then one copy to the device."""
        pinned = pinned_buffer(dst.numel())
        arr = pinned.numpy()
        self.reader.read_rows(
            RowRequest(r.layout, 0, r.layout.rows,
                       memoryview(arr[r.dst_offset : r.dst_offset + r.nbytes]))
            for r in requests if r.nbytes
        )
        host = HostCopy(dst.numel(), [pinned])
        done = self._from_host(host, dst, after)
        n = sum(r.nbytes for r in requests)
        self._count(n)
        return Filled(ready=done.ready, host=host, from_storage=n)

    def _fill_packed(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any, *,
                     keep: bool) -> Filled:
        """Read plain tensors and quantized tensors' packed parts into one pinned buffer, copy
        it to the device, decode there (``io.dequant``); the buffer is the host copy if kept."""
        pieces, total = _packed_plan(requests)
        pinned = pinned_buffer(total)
        arr = pinned.numpy()
        reads = []
        for pc in pieces:
            r = requests[pc.req]
            view = memoryview(arr[pc.host : pc.host + pc.nbytes])
            if pc.part is None:
                reads.append(RowRequest(r.layout, 0, r.layout.rows, view))
            else:
                reads.append(RowRequest(pc.part.layout, pc.part.start, pc.part.stop, view))
        self.reader.read_rows(reads)
        host = HostCopy(total, [pinned], pieces)
        done = self._from_packed(requests, host, dst, after)
        n = sum(r.nbytes for r in requests)
        self._count(n)
        return Filled(ready=done.ready, host=host if keep else None, from_storage=total)

    def _from_packed(self, requests: Sequence[FillRequest], host: HostCopy, dst: torch.Tensor,
                     after: Any) -> Filled:
        from .dequant import dequantize_into

        assert host.packed is not None
        stream = self.copy_stream
        stream.wait_event(after)
        with torch.cuda.stream(stream):
            src = host.tensors[0]
            dev = torch.empty(host.nbytes, dtype=torch.uint8, device=self.device)
            dev.copy_(src, non_blocking=True)
            by_req: dict[int, dict[str, torch.Tensor]] = {}
            for pc in host.packed:
                r = requests[pc.req]
                if pc.part is None:
                    dst[r.dst_offset : r.dst_offset + r.nbytes].copy_(
                        dev[pc.host : pc.host + pc.nbytes])
                else:
                    by_req.setdefault(pc.req, {})[pc.part.part] = dev[pc.host : pc.host + pc.nbytes]
            for i, parts in by_req.items():
                r = requests[i]
                assert isinstance(r.layout, QuantizedLayout)
                dequantize_into(r.layout, parts, dst[r.dst_offset : r.dst_offset + r.nbytes])
            ready = torch.cuda.Event()
            ready.record(stream)
        return Filled(ready=ready, from_host=host.nbytes)

    def _fill(self, requests: Sequence[FillRequest], dst: torch.Tensor, after: Any) -> Filled:
        stream = self.copy_stream
        stream.wait_event(after)
        for group in plan_pieces(requests, self.slot_bytes):
            i = self._free.get()
            try:
                self._events[i].synchronize()  # the slot's previous copy has finished
                slot = self.ring[i].numpy()
                self.reader.read_rows(
                    RowRequest(requests[p.req].layout, p.row_start, p.row_stop,
                               memoryview(slot[p.slot_offset : p.slot_offset + p.nbytes]))
                    for p in group
                )
                with torch.cuda.stream(stream):
                    for p in group:
                        src = self.ring[i][p.slot_offset : p.slot_offset + p.nbytes]
                        dst[p.dst_offset : p.dst_offset + p.nbytes].copy_(src, non_blocking=True)
                    self._events[i].record(stream)
            finally:
                self._free.put(i)
        ready = torch.cuda.Event()
        ready.record(stream)
        n = sum(r.nbytes for r in requests)
        self._count(n)
        return Filled(ready=ready, from_storage=n)

    def close(self) -> None:
        super().close()
        if self.copy_stream is not None:
            self.copy_stream.synchronize()
        self.ring.clear()
        self._events.clear()
        self.copy_stream = None


def make_filler(reader: ChunkReader, device: torch.device, *, background: bool,
                drop_cache: bool, slots: int, slot_bytes: int) -> Filler:
    """The filler for ``device``: CPU or CUDA."""
    if device.type == "cuda":
        return CudaFiller(reader, device, background=background, slots=slots,
                          slot_bytes=slot_bytes)
    return CpuFiller(reader, background=background, drop_cache=drop_cache,
                     staging_bytes=slots * slot_bytes)

