"""The one chunk reader: rows or chunks of any array -> buffers the caller owns.

Given an :class:`~bigstore.format.ArrayLayout` and what to read, the reader plans (pure, in
:mod:`bigstore.plan`: rows -> chunks -> byte spans -> coalesced requests) and executes the plan on
the shared pool, several requests in flight: crc32c checked, the codec decoding straight into the
destination. Tensors (``load``, ``open(...)[...]``, offload's fills) and dataset columns (chunk
slots of the copying loader, random access) all read through it.

A quantized tensor (:class:`~bigstore.format.QuantizedLayout`) is read chunk by chunk: each job
reads the rows' parts (packed values, scales, zero points) and dequantizes them into the
destination with the numba kernels (``io/dequant.py``), so callers get the logical dtype.

Uncompressed chunks on a store with zero-copy reads (local files) are read with one scatter
``preadv`` per request straight into the destinations; the rows of a chunk outside the request
land in scratch buffers only so the crc32c can cover the whole chunk (with ``verify=False`` only
the wanted rows are read).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from ..config import ReadConfig
from ..errors import (
    CorruptChunkError,
    StoreChangedError,
    StoreNotFoundError,
    TruncatedChunkError,
)
from ..format import EMPTY, ROOT_KEY, ArrayLayout, QuantizedLayout, parse_index
from ..format.codecs import CRC_BYTES, check_crc
from ..plan import ChunkPiece, ChunkRead, ReadOp, plan_reads, plan_rows
from ..store import ByteRange, Store
from .dequant import dequantize_rows
from .executor import get_executor

__all__ = ["ChunkReader", "RowRequest", "byte_view"]


@dataclass(frozen=True)
class RowRequest:
    """Rows [start, stop) of ``layout`` into ``out`` (exactly those rows' bytes)."""

    layout: ArrayLayout
    start: int
    stop: int
    out: memoryview


def byte_view(out: Any, nbytes: int, what: str) -> memoryview:
    """A flat writable byte view of a caller's buffer (numpy array, tensor memory, bytearray)
    of exactly ``nbytes``; a clear error otherwise."""
    from ..errors import ShapeError

    if isinstance(out, np.ndarray):
        if not out.flags.c_contiguous:
            raise ShapeError(f"{what}: output buffer must be C-contiguous")
        if not out.flags.writeable:
            raise ShapeError(f"{what}: output buffer is read-only")
        view = memoryview(out.reshape(-1).view(np.uint8))
    else:
        view = memoryview(out).cast("B")
        if view.readonly:
            raise ShapeError(f"{what}: output buffer is read-only")
    if view.nbytes != nbytes:
        raise ShapeError(f"{what}: output buffer holds {view.nbytes} bytes, the rows need {nbytes}")
    return view


class ChunkReader:
    """Reads chunks of a store's arrays into caller-owned buffers. Thread-safe.

    ``root_version``: the commit marker's version when the caller opened the store; a read that
    finds chunks missing or wrong then tells whether the store was replaced since.
    """

    def __init__(
        self, store: Store, config: ReadConfig | None = None, *, root_version: str | None = None
    ) -> None:
        self.store = store
        self.config = config or ReadConfig()
        self.root_version = root_version
        self._index: dict[tuple[str, int], np.ndarray[Any, Any]] = {}
        self._lock = threading.Lock()

    @property
    def verify(self) -> bool:
        return self.config.verify

    # -- public -------------------------------------------------------------------------------
    def read_rows(self, requests: Iterable[RowRequest], *, progress: Any = None) -> None:
        """Fill each request's buffer with its rows (every request may name another array)."""
        jobs: list[tuple[ArrayLayout, list[ChunkRead], list[memoryview]]] = []
        quantized: list[Callable[[], int]] = []
        for req in requests:
            lay = req.layout
            out = byte_view(req.out, (req.stop - req.start) * lay.row_bytes,
                            f"array {lay.path!r}")
            pieces = plan_rows(lay, req.start, req.stop)
            if isinstance(lay, QuantizedLayout):
                quantized += [partial(self._run_quantized, lay, p, out) for p in pieces]
                continue
            reads = [ChunkRead(p.chunk, p.lo, p.hi, 0, p.dst * lay.row_bytes) for p in pieces]
            if reads:
                jobs.append((lay, reads, [out]))
        self._execute(jobs, progress, quantized)

    def read_chunks(
        self, layout: ArrayLayout, chunks: Sequence[int], outs: Sequence[Any],
        *, progress: Any = None,
    ) -> None:
        """Decode whole chunks ``chunks`` of ``layout`` into ``outs`` (``chunk_nbytes`` each)."""
        views = [byte_view(o, layout.chunk_nbytes, f"array {layout.path!r}") for o in outs]
        reads = [ChunkRead(int(k), 0, layout.chunk_rows, i, 0) for i, k in enumerate(chunks)]
        if reads:
            self._execute([(layout, reads, views)], progress)

    def check_chunk(self, layout: ArrayLayout, k: int) -> None:
        """Re-check chunk ``k`` completely: present, its size, its checksum, that it decodes."""
        if isinstance(layout, QuantizedLayout):
            for _, part in layout.parts:
                self.check_chunk(part, k)
            return
        strict = ChunkReader(self.store, ReadConfig(threads=self.config.threads, verify=True),
                             root_version=self.root_version)
        strict._index = self._index
        strict._lock = self._lock
        if layout.codec.raw and not layout.sharded:  # a chunk object is exactly its size
            key = layout.chunk_key(k)
            try:
                size = self.store.size(key)
            except StoreNotFoundError:
                raise CorruptChunkError(
                    f"{layout.where(k, self.store.url)}: chunk is missing"
                ) from None
            if size != layout.stored_chunk_nbytes:
                raise TruncatedChunkError(f"{layout.where(k, self.store.url)}: {size} bytes "
                                          f"stored, expected {layout.stored_chunk_nbytes}")
        scratch = memoryview(bytearray(layout.chunk_nbytes))
        strict._run_one(layout, [ChunkRead(k, 0, layout.chunk_rows)], [scratch])

    def shard_index(self, layout: ArrayLayout, s: int) -> np.ndarray[Any, Any]:
        """Shard ``s``'s index (checked against its crc32c), cached (bounded)."""
        key = (layout.path, s)
        with self._lock:
            got = self._index.get(key)
        if got is not None:
            return got
        skey = layout.shard_key(s)
        where = f"{self.store.url}/{skey}"
        try:
            size = self.store.size(skey)
            if size < layout.index_nbytes:
                raise TruncatedChunkError(f"{where}: {size} bytes, too short to be a shard")
            (raw,) = self.store.get_ranges(skey, [ByteRange(size - layout.index_nbytes, size)])
        except StoreNotFoundError:
            self._check_unchanged()
            raise CorruptChunkError(f"{where}: shard is missing") from None
        index = parse_index(layout, raw, size, where)
        with self._lock:
            if len(self._index) > 4096:  # bounded: indexes are re-read if ever needed again
                self._index.clear()
            self._index[key] = index
        return index

    # -- planning -----------------------------------------------------------------------------
    def _locate(self, layout: ArrayLayout) -> Any:
        """``chunk -> (key, span | None)`` for the plan; shard indexes are fetched here."""
        raw = layout.codec.raw
        narrow = raw and not self.verify  # without a checksum to check, read only the rows
        rb = layout.row_bytes
        size = layout.stored_chunk_nbytes

        def locate(r: ChunkRead) -> tuple[str, ByteRange | None]:
            k = r.chunk
            key = layout.chunk_key(k)
            if layout.sharded and not raw:
                off, n = (int(x) for x in self.shard_index(
                    layout, k // layout.chunks_per_shard)[k % layout.chunks_per_shard])
                if off == EMPTY:
                    raise CorruptChunkError(
                        f"{layout.where(k, self.store.url)}: the shard index has no such chunk"
                    )
                return key, ByteRange(off, off + n)
            if not raw:
                return key, None
            start = layout.raw_chunk_offset(k)
            if narrow:
                return key, ByteRange(start + r.lo * rb, start + r.hi * rb)
            return key, ByteRange(start, start + size)

        return locate

    # -- execution ----------------------------------------------------------------------------
    def _execute(
        self, jobs: list[tuple[ArrayLayout, list[ChunkRead], list[memoryview]]], progress: Any,
        extra: Sequence[Callable[[], int]] = (),
    ) -> None:
        """Run the plans of ``jobs`` and the ``extra`` jobs (each returns the bytes it filled),
        several at once on the shared pool."""
        work: list[Callable[[], int]] = []
        for layout, reads, outs in jobs:
            try:
                ops = plan_reads(reads, self._locate(layout),
                                 max_gap=self.config.max_gap, max_request=self.config.max_request)
            except StoreNotFoundError:
                self._check_unchanged()
                raise
            work.extend(partial(self._run_op, layout, op, reads, outs) for op in ops)
        work.extend(extra)
        if len(work) == 1:
            n = work[0]()
            if progress is not None:
                progress.update(n)
            return
        for n in get_executor(self.config.threads).map(_call, work):
            if progress is not None:
                progress.update(n)

    def _run_quantized(self, layout: QuantizedLayout, piece: ChunkPiece, out: memoryview) -> int:
        """Logical rows [lo, hi) of chunk ``piece.chunk``: read the parts' rows, dequantize."""
        k = piece.chunk
        first = k * layout.chunk_rows
        parts: dict[str, memoryview] = {}
        for span in layout.part_spans(first + piece.lo, first + piece.hi):
            base = k * span.layout.chunk_rows
            buf = memoryview(np.empty(span.nbytes, np.uint8))
            self._run_one(span.layout, [ChunkRead(k, span.start - base, span.stop - base)],
                          [buf])
            parts[span.part] = buf
        n = (piece.hi - piece.lo) * layout.row_bytes
        dst = out[piece.dst * layout.row_bytes : piece.dst * layout.row_bytes + n]
        dequantize_rows(layout, first + piece.lo, first + piece.hi, parts, dst)
        return n

    def _run_one(self, layout: ArrayLayout, reads: list[ChunkRead],
                 outs: list[memoryview]) -> None:
        for op in plan_reads(reads, self._locate(layout),
                             max_gap=self.config.max_gap, max_request=self.config.max_request):
            self._run_op(layout, op, reads, outs)

    def _run_op(
        self, layout: ArrayLayout, op: ReadOp, reads: list[ChunkRead], outs: list[memoryview]
    ) -> int:
        """Carry out one request; returns the destination bytes it filled."""
        try:
            if op.request is None:
                (i, _), = op.members
                blob = self.store.get(op.key)
                self._decode(layout, reads[i], memoryview(blob).cast("B"), outs)
            elif layout.codec.raw and self.store.zero_copy_reads:
                self._scatter(layout, op, reads, outs)
            else:
                (blob,) = self.store.get_ranges(op.key, [op.request])
                view = memoryview(blob).cast("B")
                base = op.request.start
                for i, span in op.members:
                    assert span is not None
                    self._decode(layout, reads[i], view[span.start - base : span.end - base],
                                 outs)
        except StoreNotFoundError:
            self._check_unchanged()
            k = reads[op.members[0][0]].chunk
            where = layout.where(k, self.store.url)
            raise CorruptChunkError(f"{where}: chunk is missing") from None
        except CorruptChunkError:
            self._check_unchanged()
            raise
        return sum((reads[i].hi - reads[i].lo) * layout.row_bytes for i, _ in op.members)

    def _dst(self, layout: ArrayLayout, r: ChunkRead, outs: list[memoryview]) -> memoryview:
        n = (r.hi - r.lo) * layout.row_bytes
        return outs[r.out][r.dst : r.dst + n]

    def _scatter(
        self, layout: ArrayLayout, op: ReadOp, reads: list[ChunkRead], outs: list[memoryview]
    ) -> None:
        """One ``preadv`` for the whole request, straight into the destinations."""
        assert op.request is not None
        rb = layout.row_bytes
        checked = self.verify and layout.codec.checksum
        views: list[memoryview] = []
        checks: list[tuple[int, list[memoryview], memoryview]] = []
        pos = op.request.start
        overlapping: list[tuple[int, ByteRange | None]] = []
        for i, span in sorted(op.members, key=lambda m: m[1].start if m[1] else 0):
            assert span is not None
            r = reads[i]
            if span.start < pos:  # the same chunk asked for twice: a request of its own
                overlapping.append((i, span))
                continue
            if span.start > pos:
                views.append(_scratch(span.start - pos))
            dst = self._dst(layout, r, outs)
            if self.verify:  # the whole stored chunk: head and tail rows go to scratch
                head, tail = _scratch(r.lo * rb), _scratch((layout.chunk_rows - r.hi) * rb)
                views += [head, dst, tail]
                if checked:
                    crc = _scratch(CRC_BYTES)
                    views.append(crc)
                    checks.append((r.chunk, [head, dst, tail], crc))
            else:
                views.append(dst)
            pos = span.end
        try:
            self.store.read_into(op.key, op.request.start, views)
        except TruncatedChunkError as e:
            k = reads[op.members[0][0]].chunk
            raise TruncatedChunkError(
                f"{layout.where(k, self.store.url)}: truncated ({e})"
            ) from None
        for k, parts, crc in checks:
            check_crc(parts, crc, layout.where(k, self.store.url))
        for i, span in overlapping:
            assert span is not None
            self._scatter(layout, ReadOp(op.key, span, ((i, span),)), reads, outs)

    def _decode(
        self, layout: ArrayLayout, r: ChunkRead, stored: memoryview, outs: list[memoryview]
    ) -> None:
        """One stored chunk (or, unverified and uncompressed, just the wanted rows) -> dst."""
        where = layout.where(r.chunk, self.store.url)
        dst = self._dst(layout, r, outs)
        rb = layout.row_bytes
        if layout.codec.raw:
            if not self.verify:
                if stored.nbytes != dst.nbytes:
                    raise TruncatedChunkError(f"{where}: {stored.nbytes} bytes stored, "
                                              f"expected {dst.nbytes}")
                dst[:] = stored
                return
            if stored.nbytes != layout.stored_chunk_nbytes:
                raise TruncatedChunkError(
                    f"{where}: {stored.nbytes} bytes stored, expected {layout.stored_chunk_nbytes}"
                )
            if layout.codec.checksum:
                check_crc([stored[: layout.chunk_nbytes]], stored[layout.chunk_nbytes :], where)
            dst[:] = stored[r.lo * rb : r.hi * rb]
            return
        if r.lo == 0 and r.hi == layout.chunk_rows:
            layout.codec.decode_into(stored, dst, verify=self.verify, where=where)
            return
        layout.codec.decode_range_into(stored, dst, r.lo * rb, layout.chunk_nbytes,
                                       verify=self.verify, where=where)

    def _check_unchanged(self) -> None:
        """Raise StoreChangedError when the store was replaced since the caller opened it."""
        if self.root_version is None:
            return
        try:
            now = self.store.version(ROOT_KEY)
        except StoreNotFoundError:
            now = None
        if now != self.root_version:
            raise StoreChangedError(
                f"{self.store.url} was replaced after it was opened: open it again"
            )


def _call(job: Callable[[], int]) -> int:
    return job()


def _scratch(n: int) -> memoryview:
    return memoryview(bytearray(n))
