"""Zero-copy batches for uncompressed local datasets: shards mapped, rows gathered from memory.

Each selected column is an :class:`~bigstore.io.MappedArray`: its shard files mapped back to
back into one flat region, inner chunk ``k`` starting at ``chunk_base[k]``, so a batch is one
``nogil`` numba gather per column straight from the page cache into the batch: no chunk slots,
no reads into them, no second copy.

Integrity: every inner chunk is checked against its crc32c the first time a loader of this
process reaches it (the mapped array's record of checked chunks), on the producer thread, before
any of its rows is handed out. Cold reads: upcoming chunks (at least two shuffle windows ahead)
get ``madvise(MADV_WILLNEED)``, so the disk has many requests in flight while earlier chunks are
checked and gathered.

Mappings belong to one process: a forked child (a DataLoader worker) maps again on first use.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import bigstore_native.data as kernels
import numpy as np

from ..io import BufferPool, MappedArray, Producer, get_executor
from ..plan.order import Order, Runs, sub_stream
from ._schema import ColumnSpec, DatasetLayout

__all__ = ["MappedPrefetcher"]

Arr = np.ndarray[Any, Any]
_GROUP_BYTES = 8 << 20  # batch bytes gathered per producer step (measured best: 4-16 MiB)
_MAX_GROUP = 32  # batches
_SPLIT_BYTES = 1 << 20  # gathers larger than this use two threads


class MappedPrefetcher(Producer):
    """Batches gathered from mapped columns by a producer thread, several per hand-over.

    Each batch's arrays are views of one array per column and producer step (at most
    ``_GROUP_BYTES`` of batches), from a :class:`~bigstore.io.BufferPool`: a set is written
    again only when no batch viewing it is alive, so the caller owns its batches as with freshly
    allocated arrays.
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
        row_bytes = max(1, sum(m.layout.row_bytes for m in self.maps))
        self.per_group = max(1, min(_MAX_GROUP, _GROUP_BYTES // (batch * row_bytes)))
        window = order.spec.window * layout.chunk_rows
        self.ahead = max(ahead_bytes // row_bytes, 2 * window if order.spec.shuffle else 0)
        super().__init__(-(-prefetch // self.per_group), "bigstore-mapped")
        self.ready: deque[dict[str, Any]] = deque()
        self.pool = BufferPool(self.queue.maxsize + 3, alloc)

    # -- consumer side ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if not self.ready:
            self.ready.extend(self.next_item())
        return self.ready.popleft()

    def close(self) -> None:
        self.stop()
        self.ready.clear()

    def __del__(self) -> None:
        self.stopping.set()

    def _groups(self) -> Iterator[tuple[int, Arr]]:
        """(batches, their samples back to back) per producer step, in order."""
        total = int(self.runs[:, 1].sum()) if len(self.runs) else 0
        B, g = self.batch, self.per_group
        for j in range(self.first, self.count, g):
            n = min(g, self.count - j)
            yield n, self.order.samples(sub_stream(self.runs, j * B, min((j + n) * B, total)))

    def _produce(self) -> None:
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
                        m.prefetch(new)
                pending.append(got)
                queued += got[1].shape[0]
            if not pending or self.stopping.is_set():
                return
            n, samples = pending.popleft()
            queued -= samples.shape[0]
            if not self._put(self._gather(n, samples, mark)):
                return

    def _buffers(self, n: int) -> list[Arr]:
        """One array per column for ``n`` samples (pooled: see BufferPool)."""
        return self.pool.take([((n, *c.shape), c.dtype.storage) for c in self.columns])

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
            rb = m.layout.row_bytes
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
