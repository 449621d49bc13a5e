"""The tasks of a distributed dataset write, as they run on Dask workers (module-level, pickled
by reference). The driver and the plan are in :mod:`bigstore.data.ingest` and
:mod:`bigstore.plan.ingest`.

Every task turns one computed partition into batches exactly as ``write_dataset`` turns any
source into batches (:func:`~bigstore.data._source.iter_batches`) and checks them with the same
:class:`~bigstore.data._conform.Conformer`, so the values stored are the single-process writer's.
Shards are written with atomic puts of bytes that depend only on the rows: a task that Dask runs
twice (a retry, a worker wrongly presumed dead) writes the same bytes under the same keys, and a
retry first verifies and keeps the shards its failed attempt already wrote.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..config import DatasetWriteConfig
from ..errors import BigstoreError, CorruptChunkError, DistributedError, StoreNotFoundError
from ..format import EMPTY, ArrayLayout, encode_shard
from ..io import ChunkReader, get_executor
from ..plan.ingest import PartitionWork, Segment, Stitch
from ..store import Store
from ._conform import Conformer, Stored, Target, VarBatch
from ._schema import ColumnSpec, DatasetLayout
from ._sizing import Sizer
from ._source import Batch, iter_batches

__all__ = [
    "Scan", "Source", "WriteSpec", "arrays_partition", "infer_task", "scan_task",
    "shard_complete", "size_task", "stitch_task", "verify_task", "write_task",
]

Arr = np.ndarray[Any, Any]
Kind = Literal["frame", "bag", "arrays", "parquet"]
_IN_FLIGHT = 4  # shards being encoded/put at once per task (bounded memory)


@dataclass(frozen=True)
class Source:
    """How a computed partition becomes batches: a pandas DataFrame ("frame"), a list of record
    batches ("bag"), a dict of numpy blocks ("arrays") or a Parquet file path ("parquet")."""

    kind: Kind
    columns: tuple[str, ...] | None = None
    variable: tuple[str, ...] = ()

    def batches(self, value: Any) -> Iterator[Batch]:
        kw: dict[str, Any] = {"columns": self.columns, "variable": self.variable}
        if self.kind == "bag":
            for item in value:  # each element is one record batch, of any kind write_dataset takes
                yield from iter_batches(item, **kw)
        else:
            yield from iter_batches(value, **kw)


@dataclass(frozen=True)
class WriteSpec:
    """What every write task needs: where to write and the final layout (rows included)."""

    source: Source
    stage: Store
    layout: DatasetLayout


@dataclass(frozen=True)
class Scan:
    """One partition counted: samples, elements of each variable-length column's values array,
    and each category column's values in the order the partition first shows them."""

    rows: int
    elements: dict[str, int]
    categories: dict[str, tuple[Any, ...]]


def arrays_partition(names: Sequence[str], *blocks: Arr) -> dict[str, Arr]:
    """One partition of a dict of Dask Arrays: the same samples of every column."""
    return dict(zip(names, blocks))


def _where(p: int, e: BigstoreError) -> BigstoreError:
    """The same error, naming the partition (batch numbers count from its start)."""
    try:
        return type(e)(f"partition {p}: {e}")
    except TypeError:  # an error class with another signature: keep it as it is
        return e


def _conformed(
    src: Source, conformer: Conformer, p: int, value: Any
) -> Iterator[dict[str, Stored]]:
    try:
        for b, batch in enumerate(src.batches(value)):
            yield conformer.conform(batch, b)
    except BigstoreError as e:
        raise _where(p, e) from None


# -- pass 0: the columns and the sizing sample -------------------------------------------------
def infer_task(
    src: Source, targets: Mapping[str, Target], cfg: DatasetWriteConfig, p: int, value: Any
) -> tuple[tuple[ColumnSpec, ...], Sizer] | None:
    """The columns the first batch implies (as for one process) and the sizing sample so far;
    None when the partition holds no batch."""
    it = src.batches(value)
    try:
        first = next(it, None)
        if first is None:
            return None
        conformer = Conformer.infer(first, targets)
    except BigstoreError as e:
        raise _where(p, e) from None
    columns = conformer.columns  # categories still empty: the scan collects them
    sizer = Sizer(columns, cfg)
    if not sizer.done:
        for batch in _conformed(src, conformer, p, value):
            if sizer.feed(batch):
                break
    return columns, sizer


def size_task(
    src: Source, columns: tuple[ColumnSpec, ...], sizer: Sizer, p: int, value: Any
) -> Sizer:
    """The sizing sample continued over the next partition."""
    for batch in _conformed(src, Conformer(columns), p, value):
        if sizer.feed(batch):
            break
    return sizer


# -- pass 1: counts ------------------------------------------------------------------------------
def scan_task(src: Source, columns: tuple[ColumnSpec, ...], p: int, value: Any) -> Scan:
    """Count partition ``p``, checking every value against the columns (a value that does not
    fit raises here, before anything is written)."""
    conformer = Conformer(columns)
    rows = 0
    elements = {c.name: 0 for c in columns if c.variable}
    for batch in _conformed(src, conformer, p, value):
        rows += len(next(iter(batch.values())))
        for name in elements:
            col = batch[name]
            assert isinstance(col, VarBatch)
            elements[name] += int(col.values.shape[0])
    cats = {
        c.name: c.logical.categories
        for c in conformer.columns
        if c.logical is not None and c.logical.type == "category"
    }
    return Scan(rows, elements, cats)


# -- pass 2: shards ------------------------------------------------------------------------------
def shard_complete(store: Store, layout: ArrayLayout, s: int) -> bool:
    """Whether shard ``s`` is stored whole: its index checks out and every chunk it should hold
    is there with a matching crc32c (and decodes)."""
    key = layout.shard_key(s)
    try:
        size = store.size(key)
    except StoreNotFoundError:
        return False
    n = layout.chunks_in_shard(s)
    reader = ChunkReader(store)
    try:
        index = reader.shard_index(layout, s)
        written = index[:, 0] != EMPTY
        if not written[:n].all() or written[n:].any():
            return False
        if layout.codec.raw:
            expect = np.arange(n, dtype=np.uint64) * np.uint64(layout.stored_chunk_nbytes)
            if size != n * layout.stored_chunk_nbytes + layout.index_nbytes or not (
                (index[:n, 0] == expect).all()
                and (index[:n, 1] == layout.stored_chunk_nbytes).all()
            ):
                return False
        first = s * layout.chunks_per_shard
        buf = np.empty((n, layout.chunk_nbytes), np.uint8)
        reader.read_chunks(layout, range(first, first + n), list(buf))
    except CorruptChunkError:
        return False
    return True


def verify_task(stage: Store, layouts: Mapping[str, ArrayLayout],
                candidates: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The staged shards among ``candidates`` that are complete (a resumed job keeps those)."""
    return [(path, s) for path, s in candidates if shard_complete(stage, layouts[path], s)]


def _put_shard(stage: Store, layout: ArrayLayout, s: int, rows: Arr) -> None:
    lo = s * layout.shard_rows
    want = min(layout.shard_rows, layout.rows - lo)
    if rows.shape[0] != want:
        raise DistributedError(
            f"array {layout.path!r} shard {s}: {rows.shape[0]} rows arrived, the plan has {want}"
            " (the source gave other rows than in the scan: is it deterministic?)"
        )
    if stage.exists(layout.shard_key(s)) and shard_complete(stage, layout, s):
        return  # written by an earlier attempt of this task: kept, not rewritten
    stage.put(layout.shard_key(s), encode_shard(layout, rows))


class _Cutter:
    """One array's rows of one partition, cut along the plan's segments as they arrive."""

    def __init__(self, spec: WriteSpec, layout: ArrayLayout, segments: Sequence[Segment],
                 pieces: dict[tuple[str, int], Arr], p: int) -> None:
        self.spec, self.layout, self.segs, self.pieces, self.p = spec, layout, segments, pieces, p
        self.i = 0
        self.buf: list[Arr] = []
        self.have = 0
        self.futures: list[Future[None]] = []

    def add(self, rows: Arr) -> None:
        if rows.shape[0] == 0:
            return
        flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1).view(np.uint8)
        pos = 0
        while pos < flat.shape[0]:
            if self.i >= len(self.segs):
                raise DistributedError(
                    f"partition {self.p} gave more rows of {self.layout.path!r} than its scan "
                    "counted: the source is not deterministic"
                )
            seg = self.segs[self.i]
            part = flat[pos : pos + (seg.stop - seg.start) - self.have]
            if seg.kind != "skip":
                self.buf.append(part)
            self.have += part.shape[0]
            pos += part.shape[0]
            if self.have == seg.stop - seg.start:
                self._close(seg)

    def _close(self, seg: Segment) -> None:
        buf, self.buf, self.have = self.buf, [], 0
        self.i += 1
        if seg.kind == "skip":
            return
        rows = np.concatenate(buf) if len(buf) != 1 else buf[0].copy()
        if seg.kind == "piece":
            self.pieces[(self.layout.path, seg.shard)] = rows
        elif seg.kind == "write":
            self.futures.append(get_executor().submit(
                _put_shard, self.spec.stage, self.layout, seg.shard, rows))
            while len(self.futures) > _IN_FLIGHT:
                self.futures.pop(0).result()

    def finish(self) -> None:
        for f in self.futures:
            f.result()
        self.futures = []
        if self.i != len(self.segs) or self.have:
            raise DistributedError(
                f"partition {self.p} gave fewer rows of {self.layout.path!r} than its scan "
                "counted: the source is not deterministic"
            )

    def drain(self) -> None:
        for f in self.futures:
            f.exception()


def write_task(
    spec: WriteSpec, work: PartitionWork, starts: Mapping[str, int], value: Any
) -> dict[tuple[str, int], Arr]:
    """Write the whole shards inside partition ``work.partition``; return its pieces of the
    shards it shares with other partitions, keyed (array path, shard)."""
    p = work.partition
    layout = spec.layout
    pieces: dict[tuple[str, int], Arr] = {}
    cutters = {path: _Cutter(spec, layout.arrays[path], work.segments.get(path, ()), pieces, p)
               for path in layout.arrays}
    elem = {c.name: starts[f"{c.name}/values"] for c in layout.columns if c.variable}
    conformer = Conformer(layout.columns)
    try:
        for batch in _conformed(spec.source, conformer, p, value):
            for c in layout.columns:
                col = batch[c.name]
                if isinstance(col, VarBatch):
                    ends = elem[c.name] + np.cumsum(col.lengths, dtype=np.int64)
                    elem[c.name] = int(ends[-1]) if ends.shape[0] else elem[c.name]
                    values = col.values.reshape(-1, 1) if col.values.ndim == 1 else col.values
                    cutters[f"{c.name}/values"].add(values)
                    cutters[f"{c.name}/offsets"].add(np.stack([ends - col.lengths, ends], 1))
                else:
                    cutters[c.name].add(col)
        for cut in cutters.values():
            cut.finish()
        if conformer.columns != layout.columns:
            raise DistributedError(
                f"partition {p} holds category values its scan did not see: the source is not "
                "deterministic"
            )
    except BaseException:
        for cut in cutters.values():  # let in-flight puts land before the task ends
            cut.drain()
        raise
    return pieces


def stitch_task(spec: WriteSpec, st: Stitch, *pieces: Arr) -> int:
    """Write the shard ``st`` from its pieces, in order; returns its rows."""
    layout = spec.layout.arrays[st.path]
    rows = np.concatenate(pieces) if pieces else np.empty((0, layout.row_bytes), np.uint8)
    _put_shard(spec.stage, layout, st.shard, rows)
    return int(rows.shape[0])
