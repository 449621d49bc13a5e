"""Zero-copy arrays: an array's chunk objects mapped back to back into one address range.

Reserve the range, then ``mmap`` each object over its slice with ``MAP_FIXED``. Mappings are
``MAP_PRIVATE``: writing to the memory copies the page and never touches the file. A tensor
chunked into several files is still one contiguous tensor, which needs every chunk but the last
to be a whole number of pages (the writer arranges it, see ``choose_chunk_rows``); a dataset
column's shards are mapped at a page-rounded stride and each inner chunk found at a precomputed
offset (``chunk_base``).

A :class:`MappedArray` also keeps the one record of which chunks were checked against their
crc32c in this process: checking a chunk is what reads it from disk (the crc pass faults the
pages in), and a chunk whose pages stay cached need not be checked again. Fresh mappings of the
same files (each ``load``) share a process-wide record keyed by each file's identity (path,
inode, mtime, size): a chunk checked before is taken as checked again only while every one of
its pages is still in the page cache (``mincore``) - bytes that left the cache come back from
disk and are checked anew.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import posix
from ..errors import CorruptChunkError, StoreNotFoundError, TruncatedChunkError
from ..format import ArrayLayout, QuantizedLayout
from ..format.codecs import CRC_BYTES, check_crc
from ..store import Store
from .executor import get_executor

__all__ = ["MappedArray", "MappedRegion", "map_objects", "mappable", "readahead", "verify_many"]

PAGE = posix.PAGE


def readahead(store: Store, layout: ArrayLayout) -> int:
    """Start reading every stored byte of ``layout`` into the page cache, asynchronously
    (``posix_fadvise(WILLNEED)`` on its files; nothing is mapped, checked or reserved).

    For bytes needed soon whose destination cannot be reserved yet (a budget is full until
    the unit computing now is done): the disk works on them meanwhile. Only for callers that
    keep their own record of checked chunks: pages brought in here must not make a chunk look
    "still cached since it was checked" to the process-wide record. Returns the bytes asked
    for (0 where the store has no local files). A quantized layout: its parts' bytes."""
    if isinstance(layout, QuantizedLayout):  # its stored parts are ordinary arrays
        return sum(readahead(store, part) for _, part in layout.parts)
    if not posix.available() or not layout.n_chunks:
        return 0
    asked = 0
    for i, key in enumerate(layout.object_keys()):
        loc = store.local_file(key)
        if loc is None:
            return asked
        path, off = loc
        n = layout.raw_object_nbytes(i)  # compressed objects are smaller: a hint may ask more
        _willneed(path, off, n)
        asked += n
    return asked


def _willneed(path: str, offset: int, length: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # gone meanwhile: the read that needs it will say so
    try:
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


class MappedRegion:
    """Owns one address range; numpy arrays made from it keep it (and the mapping) alive.

    ``addr``/``length``: the data (may start inside the first page, for a single object that
    starts at an unaligned file offset); the whole mapping is unmapped when this object dies.
    """

    def __init__(self, map_addr: int, map_length: int, skip: int = 0, length: int = 0) -> None:
        self._map = (map_addr, map_length)
        self.addr = map_addr + skip
        self.length = length if length else map_length - skip

    @property
    def __array_interface__(self) -> dict[str, Any]:
        return {"shape": (self.length,), "typestr": "|u1", "data": (self.addr, False),
                "version": 3}

    def view(self, start: int = 0, stop: int | None = None) -> memoryview:
        import ctypes

        stop = self.length if stop is None else stop
        return memoryview((ctypes.c_char * (stop - start)).from_address(self.addr + start)).cast(
            "B"
        )

    def advise(self, advice: int, start: int = 0, stop: int | None = None) -> None:
        """``madvise`` bytes [start, stop) of the data (widened to whole pages)."""
        lo = ((self.addr + start) // PAGE) * PAGE
        hi = self.addr + (self.length if stop is None else min(self.length, stop))
        if hi > lo:
            posix.madvise(lo, hi - lo, advice)

    def resident_fraction(self) -> float:
        """The share of the region's pages in memory now (``mincore``)."""
        if not self.length:
            return 1.0
        lo = (self.addr // PAGE) * PAGE
        pages = posix.mincore(lo, self.addr + self.length - lo)
        return sum(b & 1 for b in pages) / max(1, len(pages))

    def __del__(self) -> None:
        addr, length = self._map
        if length:
            posix.munmap(addr, length)
            self._map = (0, 0)


def map_objects(objects: Sequence[tuple[str, int, int]], stride: int) -> MappedRegion:
    """Map each (path, file offset, length) at ``i * stride`` of one region.

    Several objects need page-aligned offsets and stride; a single one may start anywhere.
    Raises TruncatedChunkError-free EOFError when a file is shorter than its part (touching
    such a mapping past the end of the file would kill the process with SIGBUS, so it is never
    mapped).
    """
    if not objects:
        return MappedRegion(0, 0)
    if len(objects) > 1 and (stride % PAGE or any(off % PAGE for _, off, _n in objects)):
        raise ValueError(f"chunk stride {stride} or offsets not multiples of the page size")
    skip = objects[0][1] % PAGE if len(objects) == 1 else 0
    total = skip + (len(objects) - 1) * stride + objects[-1][2]
    if total == 0:
        return MappedRegion(0, 0)
    prot = mmap.PROT_READ | mmap.PROT_WRITE
    base = posix.mmap_at(None, total, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
    region = MappedRegion(base, total, skip)  # unmaps everything on failure below
    for i, (path, off, n) in enumerate(objects):
        if n == 0:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            if os.fstat(fd).st_size < off + n:
                raise EOFError(f"{path}: shorter than {off + n} bytes")
            # no MAP_POPULATE: on a writable private mapping it copies every page (measured 5x
            # slower than faulting pages in while the checksums are computed)
            posix.mmap_at(base + i * stride, skip + n, prot, mmap.MAP_PRIVATE, fd, off - skip)
        finally:
            os.close(fd)
    return region


def mappable(store: Store, layout: ArrayLayout) -> bool:
    """True when ``layout``'s chunks can be mapped: uncompressed, on a local file system, and
    (for tensors of several chunks) every chunk a whole number of pages. Quantized tensors are
    not (their values are computed from their parts at read time)."""
    if isinstance(layout, QuantizedLayout):
        return False
    if not (posix.available() and layout.codec.raw and layout.n_chunks and layout.row_bytes):
        return False
    if not layout.sharded and layout.n_chunks > 1 and layout.chunk_nbytes % PAGE:
        return False
    if os.environ.get("BIGSTORE_NO_MMAP"):
        return False
    return store.local_file(layout.chunk_key(0)) is not None


class _Checked:
    """This process's record of checked chunks per file identity (bounded, least recent out)."""

    limit = 1 << 16

    def __init__(self) -> None:
        self._sets: OrderedDict[tuple[str, int, int, int], set[int]] = OrderedDict()
        self._lock = threading.Lock()

    def has(self, ident: tuple[str, int, int, int], j: int) -> bool:
        with self._lock:
            got = self._sets.get(ident)
            return got is not None and j in got

    def add(self, ident: tuple[str, int, int, int], j: int) -> None:
        with self._lock:
            self._sets.setdefault(ident, set()).add(j)
            self._sets.move_to_end(ident)
            while len(self._sets) > self.limit:
                self._sets.popitem(last=False)


_CHECKED = _Checked()


class MappedArray:
    """One uncompressed array mapped into one region, and the record of its checked chunks."""

    def __init__(self, store: Store, layout: ArrayLayout,
                 verified: np.ndarray[Any, Any] | None = None, *, populate: bool = False) -> None:
        """``verified``: the caller's record of checked chunks to keep (one byte per chunk),
        when mappings of the same array come and go; a fresh one otherwise. ``populate``: fill
        a chunk's page tables in one call before checking it (small chunks: far fewer faults)."""
        self.store = store
        self.populate = populate
        self.layout = layout
        n, stored = layout.n_chunks, layout.stored_chunk_nbytes
        keys = layout.object_keys()
        need = [layout.raw_object_nbytes(i) for i in range(len(keys))]
        if layout.sharded:
            lengths = [m - layout.index_nbytes for m in need]  # the chunks, not the index
            stride = -(-max(lengths) // PAGE) * PAGE
            ks = np.arange(n, dtype=np.int64)
            cps = layout.chunks_per_shard
            self.chunk_base = (ks // cps) * stride + (ks % cps) * stored
        else:  # the data of each chunk file; its crc32c (after the data) is read separately
            lengths = [layout.chunk_nbytes] * len(keys)
            stride = layout.chunk_nbytes
            self.chunk_base = np.arange(n, dtype=np.int64) * stride
        objects = []
        self._files: list[tuple[str, int]] = []
        self._idents: list[tuple[str, int, int, int]] = []
        for i, (key, length, want) in enumerate(zip(keys, lengths, need)):
            loc = store.local_file(key)
            assert loc is not None, "mappable() was not checked"
            path, off = loc
            try:
                st = Path(path).stat()
                have = st.st_size - off
                self._idents.append((path, st.st_ino, st.st_mtime_ns, st.st_size + off))
            except FileNotFoundError:
                first = i * layout.chunks_per_shard if layout.sharded else i
                raise CorruptChunkError(
                    f"{layout.where(first, store.url)}: chunk is missing"
                ) from None
            if have < want or (not layout.sharded and layout.codec.checksum and have != want):
                first = i * layout.chunks_per_shard if layout.sharded else i
                raise TruncatedChunkError(
                    f"{layout.where(first, store.url)}: {have} bytes stored, expected {want}"
                )
            objects.append((path, off, length))
            self._files.append((path, off))
        self.region = map_objects(objects, stride)
        self.flat: np.ndarray[Any, Any] = (
            np.asarray(self.region) if self.region.length else np.empty(0, np.uint8)
        )
        self._shared = verified is None  # the process-wide record (checked by file identity)
        self._suspect: set[int] = set()  # found not cached: checked whatever mincore says later
        self.verified = verified if verified is not None else np.zeros(max(1, n), np.uint8)

    def where(self, k: int) -> str:
        return self.layout.where(k, self.store.url)

    def data(self) -> np.ndarray[Any, Any]:
        """The array's bytes (tensors: contiguous, exactly ``nbytes``)."""
        return self.flat[: self.layout.nbytes] if not self.layout.sharded else self.flat

    def prefetch(self, chunks: Sequence[int] | np.ndarray[Any, Any] | None = None) -> None:
        """Start reading some chunks (all when None) into the page cache now, asynchronously.

        Through the files (``posix_fadvise(WILLNEED)``), not the mapping: the kernel's forced
        readahead of a mapping (``madvise``) fills the cache with single pages, which a mapping
        then reads at half the speed of the large folios ordinary readahead makes (measured
        here: 6.7 vs 10-12 GB/s warm).
        """
        lay = self.layout
        ks = range(lay.n_chunks) if chunks is None else np.asarray(chunks, np.int64).tolist()
        if self._shared:  # decide what is still trusted before reading brings pages back
            ks = [k for k in ks if not self.verified[k] and not self._still_checked(k)]
            self._suspect.update(ks)
        spans: dict[int, list[int]] = {}
        for k in ks:
            i = k // lay.chunks_per_shard if lay.sharded else k
            spans.setdefault(i, []).append(int(k))
        for i, members in spans.items():
            path, off = self._files[i]
            lo = min(lay.raw_chunk_offset(k) for k in members)
            hi = max(lay.raw_chunk_offset(k) for k in members) + lay.stored_chunk_nbytes
            _willneed(path, off + lo, hi - lo)

    def verify(self, chunks: Sequence[int] | np.ndarray[Any, Any] | None = None, *,
               again: bool = False) -> int:
        """Check the crc32c of ``chunks`` (all when None) not checked yet in this process (all
        of them when ``again``: their pages were dropped, so the bytes come from disk anew),
        several at once on the pool: cold, each check is a read, and the disk wants several in
        flight. Returns the bytes checked."""
        ks = range(self.layout.n_chunks) if chunks is None else np.asarray(chunks).tolist()
        todo = [int(k) for k in ks if again or not self.verified[k]]
        if self._shared and not again:  # checked by an earlier mapping, and still cached
            todo = [k for k in todo if not self._still_checked(k)]
        if not todo:
            return 0
        if len(todo) == 1:
            self._verify_one(todo[0])
        else:
            for _ in get_executor().map(self._verify_one, todo):
                pass
        return sum(self.layout.chunk_rows_of(k) * self.layout.row_bytes for k in todo)

    def _verify_one(self, k: int) -> None:
        lay = self.layout
        if lay.codec.checksum:
            b, n = int(self.chunk_base[k]), lay.chunk_nbytes
            if self.populate:
                self.region.advise(posix.MADV_POPULATE_READ, b, b + lay.stored_chunk_nbytes)
            data = self.region.view(b, b + n)
            if lay.sharded:
                crc: Any = self.region.view(b + n, b + n + CRC_BYTES)
            else:
                crc = memoryview(bytearray(CRC_BYTES))
                try:
                    self.store.read_into(lay.chunk_key(k), n, [crc])
                except StoreNotFoundError:
                    raise CorruptChunkError(f"{self.where(k)}: chunk is missing") from None
            check_crc([data], crc, self.where(k))
        self.verified[k] = 1
        if self._shared:
            _CHECKED.add(*self._ident_of(k))

    def _ident_of(self, k: int) -> tuple[tuple[str, int, int, int], int]:
        if self.layout.sharded:
            s, j = divmod(k, self.layout.chunks_per_shard)
            return self._idents[s], j
        return self._idents[k], 0

    def _still_checked(self, k: int) -> bool:
        if k in self._suspect or not _CHECKED.has(*self._ident_of(k)):
            return False
        b = int(self.chunk_base[k])
        pages = posix.mincore((self.region.addr + b) // PAGE * PAGE,
                              (self.region.addr + b) % PAGE + self.layout.chunk_nbytes)
        if bool((np.frombuffer(pages, np.uint8) & 1).all()):
            self.verified[k] = 1
            return True
        return False

    def forget(self) -> None:
        """Forget which chunks were checked (their pages were dropped from the cache)."""
        self.verified[:] = 0


def verify_many(arrays: Iterable[MappedArray], *, again: bool = False, threads: int = 0
                ) -> Iterator[int]:
    """Check the chunks of several arrays together, each chunk a task on the pool: cold, each
    check is a read (the disk wants them all in flight) and the crc work spreads over the
    cores. Chunks already checked are skipped without a task (all are checked when
    ``again``). Yields the bytes each task checked, in order; the first bad chunk raises."""
    jobs = [(a, int(k)) for a in arrays
            for k in (range(a.layout.n_chunks) if again
                      else np.flatnonzero(a.verified[: a.layout.n_chunks] == 0))]
    if len(jobs) == 1:  # no hand-off for one check
        yield jobs[0][0].verify([jobs[0][1]], again=again)
        return
    yield from get_executor(threads).map(lambda j: j[0].verify([j[1]], again=again), jobs)
