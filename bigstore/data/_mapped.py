"""Zero-copy batches for uncompressed local datasets: shards mapped, rows gathered from memory.

Each selected column's shard files are mapped back to back into one flat uint8 region
(:func:`bigstore.io.mapping.map_files`, stride = the largest shard rounded up to a page), so
inner chunk ``k`` starts at a precomputed byte offset ``chunk_base[k]`` of the region and a
batch is one ``nogil`` numba gather per column straight from the page cache into the batch: no
chunk slots, no reads into them, no second copy.

Integrity: every inner chunk is checked against its crc32c the first time a loader of this
process reaches it (a per-dataset bitmap remembers which were checked), on the producer thread,
before any of its rows is handed out. Cold reads: upcoming chunks (at least two shuffle windows
ahead) get ``madvise(MADV_WILLNEED)``, so the disk has many requests in flight while earlier
chunks are checked and gathered.

Mappings belong to one process: a forked child (a DataLoader worker) maps again on first use.
``Dataset.close()`` drops the dataset's mappings (a running loader keeps its own reference).
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import bigstore_native.data as kernels
import numpy as np

from ..errors import CorruptChunkError, TruncatedChunkError
from ..format.codecs import CRC_BYTES, check_crc
from ..io import get_executor
from ..io.mapping import (
    MADV_POPULATE_READ,
    MADV_WILLNEED,
    PAGE,
    MappedRegion,
    map_files,
    mmap_supported,
)
from ..store import LocalStore
from ._producer import ProducerThread
from ._schema import ArraySpec, ColumnSpec, DatasetLayout
from .order import Order, Runs, sub_stream

__all__ = ["MappedArray", "MappedPrefetcher", "mapped_arrays"]

Arr = np.ndarray[Any, Any]
_GROUP_BYTES = 8 << 20  # batch bytes gathered per producer step (measured best: 4-16 MiB)
_MAX_GROUP = 32  # batches
_SPLIT_BYTES = 1 << 20  # gathers larger than this use two threads
_FREE_REFS = 3  # sys.getrefcount of a pooled array only the pool holds (list, loop, argument)


class MappedArray:
    """One uncompressed array's shards mapped into one region, and where each chunk starts."""

    def __init__(self, root: str, arr: ArraySpec, url: str) -> None:
        self.arr = arr
        self.url = url
        cps, n_chunks, size = arr.chunks_per_shard, arr.n_chunks, arr.chunk_nbytes + CRC_BYTES
        lengths = [min(cps, n_chunks - s * cps) * size for s in range(arr.n_shards)]
        paths = [Path(root) / arr.shard_key(s) for s in range(arr.n_shards)]
        for s, (p, n) in enumerate(zip(paths, lengths)):
            try:
                have = p.stat().st_size
            except FileNotFoundError:
                raise CorruptChunkError(f"{url}/{arr.shard_key(s)}: shard is missing") from None
            if have < n:
                raise TruncatedChunkError(
                    f"{url}/{arr.shard_key(s)}: truncated ({have} bytes, expected at least {n})"
                )
        stride = -(-max(lengths, default=0) // PAGE) * PAGE
        self.region = map_files(paths, stride, lengths) if paths else MappedRegion(0, 0)
        self.flat: Arr = np.asarray(self.region) if self.region.length else np.empty(0, np.uint8)
        k = np.arange(n_chunks, dtype=np.int64)
        self.chunk_base = (k // cps) * stride + (k % cps) * size
        self.verified = np.zeros(max(1, n_chunks), np.uint8)

    def where(self, k: int) -> str:
        key = self.arr.shard_key(k // self.arr.chunks_per_shard)
        return f"array {self.arr.path!r} chunk {k} ({self.url}/{key})"

    def advise(self, chunks: Arr, advice: int = MADV_WILLNEED) -> None:
        n = self.arr.chunk_nbytes + CRC_BYTES
        for b in self.chunk_base[chunks].tolist():
            self.region.advise(advice, b, b + n)

    def verify(self, chunks: Arr) -> None:
        """Check the crc32c of ``chunks`` not checked yet, several at once on the pool's
        threads: cold, each check is a synchronous read, and the disk wants several in flight.
        """
        todo = [k for k in chunks.tolist() if not self.verified[k]]
        if len(todo) <= 1:
            for k in todo:
                self._verify_one(k)
            return
        for _ in get_executor().map(self._verify_one, todo):
            pass

    def _verify_one(self, k: int) -> None:
        n = self.arr.chunk_nbytes
        b = int(self.chunk_base[k])
        self.region.advise(MADV_POPULATE_READ, b, b + n + CRC_BYTES)  # page in, one call
        check_crc([self.region.view(b, b + n)], self.region.view(b + n, b + n + CRC_BYTES),
                  self.where(k))
        self.verified[k] = 1


def mapped_arrays(ds: Any, columns: list[ColumnSpec]) -> dict[str, MappedArray] | None:
    """The mapped arrays of ``columns`` (made once per process), or None when the dataset is
    not eligible: not on a local filesystem, compressed, variable-length columns, or
    ``BIGSTORE_NO_MMAP=1``."""
    if os.environ.get("BIGSTORE_NO_MMAP") or not mmap_supported():
        return None
    store = ds.store
    if not isinstance(store, LocalStore) or not columns:
        return None
    layout: DatasetLayout = ds.layout
    if any(c.variable or not layout.main_array(c).codec.raw for c in columns):
        return None
    state = ds.__dict__.get("_mapped_state")
    if state is None or state[0] != os.getpid():  # new, or inherited over fork: map again
        state = (os.getpid(), threading.Lock(), {})
        ds.__dict__["_mapped_state"] = state
    _, lock, maps = state
    out: dict[str, MappedArray] = {}
    with lock:
        for c in columns:
            m = maps.get(c.name)
            if m is None:
                m = maps[c.name] = MappedArray(str(store.root), layout.main_array(c), store.url)
            out[c.name] = m
    return out


class MappedPrefetcher(ProducerThread):
    """Batches gathered from mapped columns by a producer thread, several per hand-over.

    Each batch's arrays are views of one array per column and producer step (at most
    ``_GROUP_BYTES`` of batches). Those arrays are pooled, but a set is written again only when
    its reference count shows that no batch viewing it is alive (every view, tensor made with
    ``torch.from_numpy`` or memoryview holds a reference): a batch the caller keeps is never
    overwritten, so the caller owns its batches as with freshly allocated arrays.
    """

    def __init__(
        self,
        layout: DatasetLayout,
        columns: list[ColumnSpec],
        maps: dict[str, MappedArray],
        order: Order,
        runs: Runs,
        batch: int,
        first: int,
        count: int,
        prefetch: int,
        ahead_bytes: int,
        alloc: Callable[[tuple[int, ...], np.dtype[Any]], Arr] | None = None,
        *,
        verify: bool = True,
    ) -> None:
        self.layout = layout
        self.verify = verify
        self.columns = columns
        self.maps = [maps[c.name] for c in columns]
        self.order = order
        self.runs = runs
        self.batch = batch
        self.first, self.count = first, count
        self.alloc = alloc
        row_bytes = max(1, sum(m.arr.row_bytes for m in self.maps))
        self.per_group = max(1, min(_MAX_GROUP, _GROUP_BYTES // (batch * row_bytes)))
        window = order.spec.window * layout.chunk_rows
        self.ahead = max(ahead_bytes // row_bytes, 2 * window if order.spec.shuffle else 0)
        super().__init__(-(-prefetch // self.per_group), "bigstore-mapped")
        self.ready: deque[dict[str, Any]] = deque()
        self.pool: deque[list[Arr]] = deque(maxlen=self.queue.maxsize + 3)

    # -- consumer side ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.ready:
            self.ready.extend(self._next_item())
        return self.ready.popleft()

    def close(self) -> None:
        self._stop_thread()
        self.ready.clear()

    def __del__(self) -> None:
        self.stop.set()

    def _groups(self) -> Iterator[tuple[int, Arr]]:
        """(batches, their samples back to back) per producer step, in order."""
        total = int(self.runs[:, 1].sum()) if len(self.runs) else 0
        B, g = self.batch, self.per_group
        for j in range(self.first, self.count, g):
            n = min(g, self.count - j)
            yield n, self.order.samples(sub_stream(self.runs, j * B, min((j + n) * B, total)))

    def _produce(self) -> bool:
        cr = self.layout.chunk_rows
        n_chunks = max(1, self.layout.n_chunks)
        mark = np.zeros(n_chunks, np.uint8)
        advised = np.zeros(n_chunks, np.uint8)
        pending: deque[tuple[int, Arr]] = deque()
        queued = 0  # samples in ``pending``
        groups = self._groups()
        exhausted = False
        while True:
            while not exhausted and (not pending or queued < self.ahead):
                got = next(groups, None)
                if got is None:
                    exhausted = True
                    break
                new = kernels.new_chunks(got[1], cr, advised, mark)
                if len(new):
                    advised[new] = 1
                    for m in self.maps:  # the disk works on these while we gather
                        m.advise(new)
                pending.append(got)
                queued += got[1].shape[0]
            if not pending or self.stop.is_set():
                break
            n, samples = pending.popleft()
            queued -= samples.shape[0]
            if not self._put(self._gather(n, samples, mark)):
                return False
        return True

    def _buffers(self, n: int) -> list[Arr]:
        """One array per column for ``n`` samples: a pooled set that nobody references any
        more (every batch viewing it was dropped by the caller), else new arrays."""
        for bufs in self.pool:
            if bufs[0].shape[0] == n and all(sys.getrefcount(b) <= _FREE_REFS for b in bufs):
                return bufs
        bufs = []
        for col in self.columns:
            shape, dt = (n, *col.shape), col.dtype.storage
            bufs.append(self.alloc(shape, dt) if self.alloc is not None else np.empty(shape, dt))
        if self.alloc is None:
            self.pool.append(bufs)  # a bounded deque: the oldest set leaves the pool
        return bufs

    def _gather(self, n: int, samples: Arr, mark: Arr) -> list[dict[str, Any]]:
        cr = self.layout.chunk_rows
        outs = []
        jobs = []
        bufs = self._buffers(samples.shape[0])
        for m, out in zip(self.maps, bufs):
            if self.verify:
                new = kernels.new_chunks(samples, cr, m.verified, mark)
                if len(new):
                    m.verify(new)
            if out.size:
                jobs.append((m, out.reshape(samples.shape[0], -1).view(np.uint8)))
            outs.append(out)
        ex = get_executor()
        for m, flat in jobs:  # nogil kernels, page cache -> batch
            rb = m.arr.row_bytes
            half = samples.shape[0] // 2 if samples.shape[0] * rb >= _SPLIT_BYTES else 0
            # big gathers are split in two: one half on a pool thread, one here (the random
            # reads are latency-bound, so two cores nearly double the rate)
            fut = ex.submit(kernels.gather_mapped, m.flat, m.chunk_base, samples[:half], cr, rb,
                            flat[:half]) if half else None
            kernels.gather_mapped(m.flat, m.chunk_base, samples[half:], cr, rb, flat[half:])
            if fut is not None:
                fut.result()
        B = self.batch
        names = [c.name for c in self.columns]
        return [
            {name: o[k * B : (k + 1) * B] for name, o in zip(names, outs)} for k in range(n)
        ]
