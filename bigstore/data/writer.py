"""``write_dataset``: stream any source into sharded Zarr v3 arrays, crash-safely.

``mode="w"`` writes into a staging location and publishes it atomically (the previous dataset
stays readable until then). ``mode="a"`` adds samples in place: new shards are new objects, the
one partially filled last shard of each array is rewritten whole (an atomic put: its existing
chunks keep their bytes and positions), and the root document, written last, commits the new
length. A writer killed before that leaves the previous dataset readable as it was.

Concurrent writers: an append holds the store's writer lock (:mod:`bigstore.store.lock`) from
reading the layout to its commit, a replacing write while it publishes; so appends from several
processes all land, one after the other, and never commit each other's rows away.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from typing import Any, Literal, TypeVar

import numpy as np

from ..config import INGEST_RETRIES, DatasetWriteConfig, parse_bytes
from ..errors import DistributedError, InvalidKeyError, ShapeError, StoreNotFoundError
from ..format import (
    ROOT_KEY,
    ArrayLayout,
    ChunkCodec,
    encode_shard,
    parse_codec,
    read_root,
    write_root,
)
from ..io import ChunkReader, get_executor
from ..progress import progress_bar
from ..store import Store, open_store
from ..store.lock import WriteLock
from ..store.publish import check_replaceable, discard, make_staging, publish
from ._conform import Conformer, Stored, VarBatch, parse_schema
from ._schema import ColumnSpec, DatasetLayout, group_doc
from ._sizing import Sizer
from ._source import Batch, iter_batches

__all__ = ["write_dataset"]

_MAX_CHUNKS_PER_SHARD = 4096  # the shard index (16 B per chunk) stays <= 64 KiB
_IN_FLIGHT = 4  # shards being encoded/written at once, per dataset write
_T = TypeVar("_T")


class _ArrayWriter:
    """Collects rows of one array and writes a shard whenever one is full."""

    def __init__(
        self, store: Store, spec: ArrayLayout, pending: np.ndarray[Any, Any] | None,
        guard: WriteLock | None = None, durable: bool = False,
    ) -> None:
        self.store = store
        self.durable = durable  # each shard's writeback starts once it is written
        self.guard = guard  # appends write into the live store: only while holding its lock
        self.spec = spec
        self.rows = spec.rows  # rows committed to shards or pending
        self.next_shard = spec.rows // spec.shard_rows
        self.pending: list[np.ndarray[Any, Any]] = [] if pending is None else [pending]
        self.pending_rows = 0 if pending is None else pending.shape[0]
        self.futures: list[Future[None]] = []
        self.written: list[str] = []  # keys put, for a targeted flush before the commit

    def add(self, rows: np.ndarray[Any, Any]) -> None:
        if rows.shape[0] == 0:
            return
        flat = np.ascontiguousarray(rows).reshape(rows.shape[0], -1).view(np.uint8)
        self.pending.append(flat)
        self.pending_rows += flat.shape[0]
        self.rows += flat.shape[0]
        while self.pending_rows >= self.spec.shard_rows:
            self._flush(self.spec.shard_rows)

    def _flush(self, n: int) -> None:
        allrows = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        shard, rest = allrows[:n], allrows[n:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]
        s = self.next_shard
        self.next_shard += 1
        spec = self.spec

        def write() -> None:
            self.store.put(spec.shard_key(s), encode_shard(spec, shard), writeback=self.durable)

        if self.guard is not None:
            self.guard.check()
        self.written.append(spec.shard_key(s))
        self.futures.append(get_executor().submit(write))
        while len(self.futures) > _IN_FLIGHT:  # bounded memory: wait for the oldest shard
            self.futures.pop(0).result()

    def drain(self) -> None:
        """Wait for every in-flight write, ignoring their errors (the caller is failing)."""
        for f in self.futures:
            f.exception()
        self.futures = []

    def finish(self) -> ArrayLayout:
        if self.pending_rows:
            self._flush(self.pending_rows)
        for f in self.futures:
            f.result()
        self.futures = []
        return self.spec.with_rows(self.rows)


def _new_array(
    path: str, spec_dtype: Any, inner: tuple[int, ...], chunk_rows: int, cfg: DatasetWriteConfig,
    codec: ChunkCodec,
) -> ArrayLayout:
    row_bytes = spec_dtype.itemsize * math.prod(inner)
    per_shard = max(
        1, min(_MAX_CHUNKS_PER_SHARD, cfg.shard_bytes // max(1, chunk_rows * row_bytes))
    )
    return ArrayLayout(path, (0, *inner), spec_dtype, chunk_rows, codec.bind(spec_dtype.itemsize),
                       per_shard)


def _new_layout(
    chunk_rows: int, columns: tuple[ColumnSpec, ...], cfg: DatasetWriteConfig
) -> DatasetLayout:
    """Every array of a new dataset: a pure function of the columns, ``chunk_rows`` and
    ``cfg`` (a distributed write builds the same layout from the same three)."""
    arrays: dict[str, ArrayLayout] = {}
    from ..format.dtypes import dtype_spec

    codec = parse_codec(cfg.codec)
    for c in columns:
        if c.variable:
            vrows = max(1, cfg.chunk_bytes // c.dtype.itemsize)
            arrays[f"{c.name}/values"] = _new_array(
                f"{c.name}/values", c.dtype, (), vrows, cfg, codec
            )
            arrays[f"{c.name}/offsets"] = _new_array(
                f"{c.name}/offsets", dtype_spec("int64"), (2,), chunk_rows, cfg, codec
            )
        else:
            arrays[c.name] = _new_array(c.name, c.dtype, c.shape, chunk_rows, cfg, codec)
    return DatasetLayout(0, chunk_rows, columns, arrays)


def _resume_writers(
    store: Store, layout: DatasetLayout, guard: WriteLock, durable: bool
) -> dict[str, _ArrayWriter]:
    """Writers that continue each array, with its partial last shard read back."""
    reader = ChunkReader(store)
    reader.check_backed(layout.arrays.values())  # the tail read back is sized from them
    writers = {}
    for path, spec in layout.arrays.items():
        tail = spec.rows % spec.shard_rows
        pending = None
        if tail:
            s = spec.rows // spec.shard_rows
            first = s * spec.chunks_per_shard
            chunks = list(range(first, first + math.ceil(tail / spec.chunk_rows)))
            buf = np.empty((len(chunks) * spec.chunk_rows, spec.row_bytes), np.uint8)
            outs = [buf[i * spec.chunk_rows : (i + 1) * spec.chunk_rows]
                    for i in range(len(chunks))]
            reader.read_chunks(spec, chunks, outs)
            pending = buf[:tail]
        writers[path] = _ArrayWriter(store, spec, pending, guard, durable)
    return writers


def _write_batches(
    store: Store,
    layout: DatasetLayout | None,
    batches: Iterable[Batch],
    cfg: DatasetWriteConfig,
    bar: Any,
    writers: dict[str, _ArrayWriter],
    schema: Any = None,
    guard: WriteLock | None = None,
) -> DatasetLayout:
    """Write every batch (``writers`` is filled with the array writers used). ``guard``: the
    lock an append (``layout`` given) holds while it writes into the live store."""
    it = iter(batches)
    targets = parse_schema(schema)
    if layout is None:
        first = next(it, None)
        if first is None:
            raise ShapeError("the source holds no samples (no batches)")
        conformer = Conformer.infer(first, targets)
        stored = conformer.stored_batches(_chain(first, it))
        # checked and converted batches until the sizing sample is complete: the layout is
        # sized on stored bytes of the first rows (the rule any writer of these rows follows)
        sizer = Sizer(conformer.columns, cfg)
        head: list[dict[str, Stored]] = []
        for b in stored:
            head.append(b)
            if sizer.feed(b):
                break
        layout = _new_layout(sizer.chunk_rows(), conformer.columns, cfg)
        writers.update({p: _ArrayWriter(store, a, None, None, cfg.durable)
                        for p, a in layout.arrays.items()})
        stored = itertools.chain(head, stored)
    else:
        assert guard is not None, "appends hold the store's writer lock"
        conformer = Conformer.resume(layout.columns, targets)
        stored = conformer.stored_batches(it)
        writers.update(_resume_writers(store, layout, guard, cfg.durable))
    try:
        new = _write_all(layout, writers, stored, bar)
        # category dictionaries may have grown
        return DatasetLayout(new.num_rows, new.chunk_rows, conformer.columns, new.arrays)
    except BaseException:
        for w in writers.values():  # let in-flight shard writes land before anyone cleans up
            w.drain()
        raise


def _write_all(
    layout: DatasetLayout,
    writers: dict[str, _ArrayWriter],
    it: Iterator[dict[str, Stored]],
    bar: Any,
) -> DatasetLayout:
    names = [c.name for c in layout.columns]
    num_rows = layout.num_rows
    for b, batch in enumerate(it):
        if sorted(batch) != sorted(names):
            raise ShapeError(
                f"batch {b} has columns {sorted(batch)}; the dataset has {sorted(names)}"
            )
        for c in layout.columns:
            col = batch[c.name]
            if isinstance(col, VarBatch):
                vw = writers[f"{c.name}/values"]
                ends = vw.rows + np.cumsum(col.lengths, dtype=np.int64)
                offsets = np.stack([ends - col.lengths, ends], axis=1)
                vw.add(col.values.reshape(-1, 1) if col.values.ndim == 1 else col.values)
                writers[f"{c.name}/offsets"].add(offsets)
            else:
                writers[c.name].add(col)
        n = len(next(iter(batch.values())))
        num_rows += n
        if bar is not None:
            bar.update(n)
    arrays = {p: w.finish() for p, w in writers.items()}
    return DatasetLayout(num_rows, layout.chunk_rows, layout.columns, arrays)


def _chain(first: _T, rest: Iterable[_T]) -> Iterator[_T]:
    yield first
    yield from rest


def _write_docs(store: Store, layout: DatasetLayout) -> tuple[list[str], dict[str, Any]]:
    """Write every group and array document: (the keys written, the documents by node path for
    the root's consolidated metadata)."""
    docs: dict[str, Any] = {}
    keys: list[str] = []
    for c in layout.columns:
        if c.variable:
            docs[c.name] = group_doc()
            keys.append(f"{c.name}/zarr.json")
            store.put(keys[-1], json.dumps(group_doc()).encode())
    for path, spec in layout.arrays.items():
        docs[path] = spec.to_json()
        keys.append(spec.meta_key)
        store.put(keys[-1], json.dumps(docs[path], indent=1).encode())
    return keys, docs


def _root_attrs(layout: DatasetLayout) -> dict[str, Any]:
    return {
        "num_rows": layout.num_rows,
        "chunk_rows": layout.chunk_rows,
        "columns": [c.to_json() for c in layout.columns],
    }


def _format_version(layout: DatasetLayout) -> int:
    # a column with a logical type (timestamps, categories) needs a reader that knows them:
    # older readers would see plain integers, so such a store says version 2
    return 2 if any(c.logical is not None for c in layout.columns) else 1


def _commit(store: Store, layout: DatasetLayout) -> None:
    _keys, docs = _write_docs(store, layout)
    write_root(store, "dataset", _root_attrs(layout), docs,  # the commit marker, last
               version=_format_version(layout))


def write_dataset(
    url: str | os.PathLike[str] | Store,
    source: Any,
    *,
    chunk_rows: int | None = DatasetWriteConfig.chunk_rows,
    chunk_bytes: int | str = DatasetWriteConfig.chunk_bytes,
    shard_bytes: int | str = DatasetWriteConfig.shard_bytes,
    codec: str | None = DatasetWriteConfig.codec,
    storage_options: Mapping[str, Any] | None = None,
    mode: Literal["w", "a"] = "w",
    columns: Iterable[str] | None = None,
    variable: Iterable[str] = (),
    schema: Any = None,
    progress: bool = False,
    overwrite: bool = False,
    durable: bool = DatasetWriteConfig.durable,
    lock_timeout: float = DatasetWriteConfig.lock_timeout,
    lock_stale_after: float = DatasetWriteConfig.lock_stale_after,
    client: Any = None,
    job_token: str | None = None,
    retries: int = INGEST_RETRIES,
) -> DatasetLayout:
    """Write ``source`` as a dataset at ``url``; returns the layout written.

    source: a mapping of column -> array (first axis = samples; lists of str/bytes/1-D arrays
    become variable-length columns), a pyarrow Table / RecordBatchReader, a Parquet file, glob
    or directory, or an iterable of such dict batches. ``columns`` selects columns; ``variable``
    names columns to store as variable length even when a batch happens to be rectangular.
    chunk_rows: samples per inner chunk (default: about ``chunk_bytes`` of all columns).
    shard_bytes: target bytes per shard object. codec: None, "lossless[:level]" (bit-exact Blosc,
    per chunk), "zstd[:level]" or "gzip[:level]".
    mode: "w" replaces atomically; "a" appends samples (the layout and codec of the existing
    dataset are kept; ``chunk_rows``/``codec`` are then ignored). Concurrent appends wait for
    each other (up to ``lock_timeout`` seconds, then ConcurrentWriteError) and all land;
    ``lock_stale_after``: on object stores, seconds after which a killed writer's lease is
    broken (see :mod:`bigstore.store.lock`).
    schema: column -> dtype (numpy dtype or name, torch dtype, "bfloat16", "str", "bytes",
    "datetime64[ns]", a pyarrow type), or a ``pyarrow.Schema``: the stored type of those
    columns, the first batch included (other columns take the first batch's type).
    overwrite: replacing a bigstore tensor store with a dataset needs it.
    durable: fsync what was written before the commit (local stores; see
    :class:`~bigstore.config.DatasetWriteConfig`).

    On a Dask cluster (``pip install 'bigstore[dask]'``): ``source`` may be a Dask DataFrame, a
    Dask Bag of record batches (each element one batch of any kind above) or a dict of Dask
    Arrays; with ``client=`` a Parquet directory or glob is written one partition per file.
    Partitions are written in parallel, one writer per shard, committed once when all succeeded
    (see :mod:`bigstore.data.ingest`); the arrays are byte-identical to one process writing the
    same rows. client: a ``distributed.Client`` (default: the current one). job_token: names the
    job (default: a hash of the collection and the options); a killed job run again with the
    same token resumes, keeping the shards it had written. retries: tries of a failed task.

    Values are stored exactly or not at all: a batch whose values do not all fit the
    column's stored type (a later batch, or an append, in another dtype) raises a
    ``DTypeError`` naming the column, batch and value, before anything is committed.
    """
    if mode not in ("w", "a"):
        raise InvalidKeyError(f"mode must be 'w' or 'a', got {mode!r}")
    cfg = DatasetWriteConfig(
        chunk_rows=chunk_rows,
        chunk_bytes=parse_bytes(chunk_bytes),
        shard_bytes=parse_bytes(shard_bytes),
        codec=parse_codec(codec).spec,
        durable=durable,
        lock_timeout=lock_timeout,
        lock_stale_after=lock_stale_after,
    )
    from .ingest import is_distributed_source, write_distributed  # imports this module

    if client is not None or is_distributed_source(source):
        if mode != "w":
            raise DistributedError(
                "appending (mode='a') from a Dask collection is not supported: write the new "
                "rows with one process, or write a new dataset"
            )
        return write_distributed(
            url, source, cfg=cfg, columns=columns, variable=variable, schema=schema,
            storage_options=storage_options, client=client, job_token=job_token,
            retries=retries, progress=progress, overwrite=overwrite,
        )
    batches = iter_batches(source, columns=columns, variable=variable)
    target = open_store(url, storage_options)
    where = target.url if isinstance(url, Store) else os.fspath(url)
    bar = progress_bar(progress, f"write_dataset {where}", unit="samples")
    try:
        if mode == "a":
            # held from reading the layout to the commit
            with target.write_lock(cfg.lock_timeout, stale_after=cfg.lock_stale_after) as held:
                found = _existing(target)
                if found is not None:
                    return _append(target, *found, batches, cfg, bar, schema, held)
                return _replace(target, batches, cfg, bar, overwrite, schema, held=held)
        return _replace(target, batches, cfg, bar, overwrite, schema, held=None)
    finally:
        if bar is not None:
            bar.close()


def _existing(target: Store) -> tuple[DatasetLayout, str | None] | None:
    """The dataset at ``target`` (its layout and write id), or None when there is none."""
    from .dataset import read_layout

    try:
        root = read_root(target, expect_kind="dataset")
    except StoreNotFoundError:
        return None
    return read_layout(target, root), root.write_id


def _append(
    target: Store, layout: DatasetLayout, write_id: str | None, batches: Iterable[Batch],
    cfg: DatasetWriteConfig, bar: Any, schema: Any, held: WriteLock,
) -> DatasetLayout:
    writers: dict[str, _ArrayWriter] = {}
    new = _write_batches(target, layout, batches, cfg, bar, writers, schema, held)
    held.check()  # never commit after losing the lock: another writer may have moved on
    keys, docs = _write_docs(target, new)
    if cfg.durable:  # only what this append wrote: its shards and the array documents
        target.flush([k for w in writers.values() for k in w.written] + keys)
    # the same contents, more rows: readers that opened the dataset before read on
    write_root(target, "dataset", _root_attrs(new), docs, write_id=write_id,
               version=_format_version(new))
    if cfg.durable:
        target.flush([ROOT_KEY])  # the commit itself
    return new


def _replace(
    target: Store, batches: Iterable[Batch], cfg: DatasetWriteConfig, bar: Any,
    overwrite: bool, schema: Any, *, held: WriteLock | None,
) -> DatasetLayout:
    if held is None:  # see TensorWriter.begin
        with target.write_lock(cfg.lock_timeout, stale_after=cfg.lock_stale_after):
            check_replaceable(target, "dataset", overwrite=overwrite)
    else:
        check_replaceable(target, "dataset", overwrite=overwrite)
    stage = make_staging(target)
    try:
        new = _write_batches(stage, None, batches, cfg, bar, {}, schema)
        _commit(stage, new)
        if held is not None:
            held.check()
            publish(stage, target, durable=cfg.durable)
        else:
            with target.write_lock(cfg.lock_timeout, stale_after=cfg.lock_stale_after) as lock:
                check_replaceable(target, "dataset", overwrite=overwrite)
                lock.check()
                publish(stage, target, durable=cfg.durable)
    except BaseException:
        discard(stage)
        raise
    return new
