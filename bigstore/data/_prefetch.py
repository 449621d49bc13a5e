"""The prefetch engine: reads the chunks of upcoming batches and gathers batches ahead.

One producer thread per iteration walks the batches in groups. A group is as many next batches
as fit in half the chunk slots (and ``read_ahead`` bytes); its missing chunks are read by the
shared I/O pool (neighbours coalesced into one request) while the previous group is gathered.
A slot is reused only when its chunk is needed by neither the group being gathered nor the one
being read, so no read ever lands in a slot a gather is using. Memory: the slots (fixed at
start) plus at most ``prefetch`` finished batches waiting in the queue, whatever the dataset
size.

The thread is a :class:`~bigstore.io.Producer` (its states and transitions are documented
there); the consumer sees the end, the error, or nothing more after ``close()``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import bigstore_native.data as kernels
import numpy as np

from ..config import PrefetchConfig
from ..errors import BudgetError
from ..io import ChunkReader, Producer, get_executor
from ._chunks import ChunkPools, gather_fixed, gather_var, load_chunks
from ._schema import ColumnSpec, DatasetLayout

__all__ = ["Prefetcher"]

Arr = np.ndarray[Any, Any]
_TASK_CHUNKS = 16  # chunks per read task (neighbours inside one become one request)


@dataclass
class _Batch:
    samples: Arr
    uniq: Arr
    which: Arr
    rows: Arr


@dataclass
class _Group:
    batches: list[_Batch] = field(default_factory=list)
    chunks: set[int] = field(default_factory=set)


class Prefetcher(Producer):
    """Iterate batches (dicts of arrays) for the sample-id arrays ``batches`` yields."""

    def __init__(
        self,
        layout: DatasetLayout,
        reader: ChunkReader,
        columns: list[ColumnSpec],
        batches: Iterator[Arr],
        cfg: PrefetchConfig,
        alloc: Callable[[tuple[int, ...], np.dtype[Any]], Arr] | None = None,
    ) -> None:
        self.layout = layout
        self.reader = reader
        self.columns = columns
        self.batches = batches
        self.cfg = cfg
        self.alloc = alloc
        self.pools = ChunkPools(layout, columns, cfg.n_slots)
        self.slot_of: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()  # resident chunks, oldest first
        self.free = list(range(cfg.n_slots - 1, -1, -1))
        self.slot_futs: dict[int, list[Future[None]]] = {}
        super().__init__(cfg.prefetch, "bigstore-prefetch")
        row_bytes = sum(layout.main_array(c).row_bytes for c in columns)
        self.batch_bytes = max(1, row_bytes)

    # -- consumer side ------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        batch: dict[str, Any] = self.next_item()
        return batch

    def close(self) -> None:
        self.stop()
        for futs in self.slot_futs.values():  # never free slots a read is still filling
            for f in futs:
                f.cancel()
                if not f.cancelled():
                    f.exception()

    def __del__(self) -> None:
        self.stopping.set()

    # -- producer side ------------------------------------------------------------------------
    def _produce(self) -> None:
        prev: _Group | None = None
        for group in self._groups():
            if self.stopping.is_set():
                return
            self._schedule(group, prev)
            if prev is not None and not self._emit(prev):
                return
            prev = group
        if prev is not None:
            self._emit(prev)

    def _groups(self) -> Iterator[_Group]:
        half = max(1, self.cfg.n_slots // 2)
        per_group = max(1, self.cfg.read_ahead // self.batch_bytes)  # in samples
        group = _Group()
        samples_in_group = 0
        n_chunks = max(1, self.layout.n_chunks)
        for samples in self.batches:
            uniq, which, rows = kernels.split_by_chunk(samples, self.layout.chunk_rows, n_chunks)
            if len(uniq) > half:
                raise BudgetError(
                    f"one batch needs {len(uniq)} chunks but the loader's memory holds "
                    f"{self.cfg.n_slots} ({half} per read-ahead group): raise memory= or lower "
                    "the batch size or the shuffle window"
                )
            b = _Batch(samples, uniq, which, rows)
            new = group.chunks.union(uniq.tolist())
            if group.batches and (len(new) > half or samples_in_group >= per_group):
                yield group
                group, samples_in_group, new = _Group(), 0, set(uniq.tolist())
            group.batches.append(b)
            group.chunks = new
            samples_in_group += samples.shape[0]
        if group.batches:
            yield group

    def _schedule(self, group: _Group, prev: _Group | None) -> None:
        keep = group.chunks | (prev.chunks if prev is not None else set())
        missing = sorted(c for c in group.chunks if c not in self.slot_of)
        for c in group.chunks:
            if c in self.slot_of:
                self.lru.move_to_end(c)
        slots = []
        for c in missing:
            if self.free:
                s = self.free.pop()
            else:
                victim = next(v for v in self.lru if v not in keep)
                del self.lru[victim]
                s = self.slot_of.pop(victim)
            self.slot_of[c] = s
            self.lru[c] = None
            slots.append(s)
        ex = get_executor(self.cfg.threads)
        for lo in range(0, len(missing), _TASK_CHUNKS):
            cs, ss = missing[lo : lo + _TASK_CHUNKS], slots[lo : lo + _TASK_CHUNKS]
            futs = [ex.submit(load_chunks, self.reader, self.layout, col, cs, self.pools, ss)
                    for col in self.columns]
            for s in ss:
                self.slot_futs[s] = futs

    def _emit(self, group: _Group) -> bool:
        for b in group.batches:
            slots_of_uniq = np.array([self.slot_of[int(c)] for c in b.uniq], np.int64)
            for s in slots_of_uniq.tolist():
                for f in self.slot_futs.get(s, ()):
                    f.result()
            slots = slots_of_uniq[b.which]
            out: dict[str, Any] = {}
            for col in self.columns:
                if col.variable:
                    out[col.name] = gather_var(self.pools, col, slots, b.rows)
                else:
                    out[col.name] = gather_fixed(self.pools, col, slots, b.rows, self.alloc)
            if self.stopping.is_set() or not self._put(out):
                return False
        return True
