"""``write_dataset`` on a Dask cluster: a Dask DataFrame, a Bag of record batches, a dict of Dask
Arrays, or a directory of Parquet files (one partition per file). Needs ``bigstore[dask]``.

The protocol (each step is Dask tasks; the driver only plans and commits):

1. **Columns and chunk size.** The first batch of the first non-empty partition fixes the
   columns, as the first batch does for one process (``schema=`` declares dtypes up front);
   ``chunk_rows`` follows :mod:`bigstore.data._sizing` (the first rows of the dataset, whatever
   the partitioning). A dict of numeric Dask Arrays needs no data for this: dtypes and chunks say.
2. **Scan.** Every partition is counted and every value checked against the columns (a value
   that does not fit its column raises the single-process writer's ``DTypeError`` naming the
   partition, before anything is written): samples, elements of variable-length columns (a
   prefix sum gives each partition its offsets), category values in order of appearance (merged
   in partition order: the codes one process would give).
3. **Plan** (:mod:`bigstore.plan.ingest`, pure): each shard of each array gets one writer, the
   partition holding all its rows or one stitch task fed the pieces of the partitions it spans.
4. **Write** into a staging location named by the job token, with Dask ``retries``: a retried
   task keeps the shards its failed attempt wrote (verified), never another task's.
5. **Commit**, only after every task succeeded: the array documents and the root (the commit
   marker) are written by the driver into the stage, which is then published under the store's
   writer lock like every other write. Until then the previous dataset stays as it was.

**Resume.** The stage is ``<url>.bigstore-ingest-<token>`` beside the target (hidden locally),
``token`` = ``job_token`` or Dask's deterministic hash of the collection and the write options.
It holds the plan once the scan is done; a job run again with the same token finds it, keeps
every staged shard that verifies (index and every chunk's crc32c) and computes only the
partitions still needed. One driver per token at a time (a lock on the stage).
"""

from __future__ import annotations

import json
import operator
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import accumulate
from pathlib import Path
from typing import Any

import numpy as np

from ..config import DATASET_MAX_CATEGORIES, DatasetWriteConfig
from ..errors import (
    DistributedError,
    DTypeError,
    MissingDependencyError,
    ShapeError,
    UnsupportedSourceError,
)
from ..plan.ingest import ArrayRows, plan_ingest
from ..progress import progress_bar
from ..store import Store, open_store
from ..store.publish import check_replaceable, discard, publish
from ._conform import Conformer, Target, parse_schema
from ._ingest_tasks import (
    Scan,
    Source,
    WriteSpec,
    arrays_partition,
    infer_task,
    scan_task,
    size_task,
    stitch_task,
    verify_task,
    write_task,
)
from ._kinds import encode
from ._schema import ColumnSpec, DatasetLayout
from ._sizing import Sizer
from ._source import Batch, parquet_files
from .writer import _commit, _new_layout

__all__ = ["PLAN_KEY", "STAGE_TAG", "is_distributed_source", "write_distributed"]

STAGE_TAG = ".bigstore-ingest-"
PLAN_KEY = "bigstore-ingest.json"
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_DATA_ERRORS = (DTypeError, ShapeError, UnsupportedSourceError)


def _require_dask() -> Any:
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError as e:
        raise MissingDependencyError(
            f"writing a dataset on a Dask cluster needs Dask ({e.name} is missing): "
            "pip install 'bigstore[dask]'"
        ) from None
    return distributed


def is_distributed_source(source: Any) -> bool:
    """A Dask collection, or a dict of Dask Arrays (without importing Dask when it is not)."""
    import sys

    if "dask" not in sys.modules:
        return False
    from dask import is_dask_collection

    if is_dask_collection(source):
        return True
    return (isinstance(source, Mapping) and bool(source)
            and all(is_dask_collection(v) for v in source.values()))


# -- partitions of each kind of source ------------------------------------------------------
@dataclass
class _Partitions:
    source: Source
    parts: list[Any]  # one Delayed (or plain value) per partition, in order
    counts: list[int] | None  # samples per partition when known without computing (arrays)
    meta: Batch | None  # a zero-row batch of the data's columns (arrays)
    identity: Any  # what the default job token hashes


def _partitions(source: Any, columns: Iterable[str] | None,
                variable: Iterable[str]) -> _Partitions:
    cols = tuple(columns) if columns is not None else None
    var = tuple(variable)
    if isinstance(source, str | os.PathLike):
        files = parquet_files(os.fspath(source))
        ident = [(f, Path(f).stat().st_mtime_ns, Path(f).stat().st_size) for f in files]
        return _Partitions(Source("parquet", cols, var), list(files), None, None, ident)
    import dask.bag as db

    if isinstance(source, db.Bag):
        return _Partitions(Source("bag", cols, var), list(source.to_delayed()), None, None,
                           source)
    if isinstance(source, Mapping):
        return _array_partitions(source, cols, var)
    import dask.dataframe as dd

    if isinstance(source, dd.DataFrame):
        return _Partitions(Source("frame", cols, var), list(source.to_delayed()), None, None,
                           source)
    raise UnsupportedSourceError(
        f"cannot write a dataset from the Dask collection {type(source).__name__}: pass a Dask "
        "DataFrame, a Dask Bag of record batches, a dict of Dask Arrays, or a Parquet directory"
    )


def _array_partitions(source: Mapping[str, Any], cols: tuple[str, ...] | None,
                      var: tuple[str, ...]) -> _Partitions:
    import dask
    import dask.array as da

    names = [n for n in source if cols is None or n in cols]
    missing = sorted(set(cols or ()) - set(names))
    if missing:
        raise ShapeError(f"source has no column(s) {missing}; it has {sorted(source)}")
    arrays = {}
    for n in names:
        a = source[n]
        if not isinstance(a, da.Array):
            raise UnsupportedSourceError(f"column {n!r} is a {type(a).__name__}, not a Dask Array")
        if a.ndim == 0 or any(np.isnan(c) for c in a.chunks[0]):
            raise ShapeError(f"column {n!r}: a Dask Array with a known first axis (samples) is "
                             "needed (call .compute_chunk_sizes() first)")
        arrays[n] = a
    lengths = {n: a.shape[0] for n, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ShapeError(f"columns have different numbers of samples: {lengths}")
    first = arrays[names[0]].chunks[0]
    blocks = {}
    for n, a in arrays.items():  # same partitions for every column, whole samples per block
        a = a.rechunk((first, *((d,) for d in a.shape[1:])))
        blocks[n] = a.to_delayed().reshape(-1)
    parts = [dask.delayed(arrays_partition)(names, *[blocks[n][i] for n in names])
             for i in range(len(first))]
    meta = {n: encode(n, np.empty((0, *a.shape[1:]), a.dtype), n in var)
            for n, a in arrays.items()}
    return _Partitions(Source("arrays", cols, var), parts, [int(c) for c in first], meta,
                       tuple(arrays[n] for n in names))


# -- the job -----------------------------------------------------------------------------------
def _job_token(parts: _Partitions, cfg: DatasetWriteConfig, targets: Mapping[str, Target],
               url: str) -> str:
    import dask
    from dask.base import tokenize

    try:
        with dask.config.set({"tokenize.ensure-deterministic": True}):
            return str(tokenize(parts.identity, parts.source, cfg, repr(sorted(targets.items())),
                                url))[:24]
    except Exception:  # dask cannot hash it the same way twice: this run cannot be resumed
        return uuid.uuid4().hex[:24]  # unless the caller names the job (job_token=)


class _Job:
    def __init__(self, client: Any, parts: _Partitions, cfg: DatasetWriteConfig, stage: Store,
                 token: str, retries: int, progress: bool, url: str) -> None:
        self.client, self.parts, self.cfg, self.stage = client, parts, cfg, stage
        self.token, self.retries, self.progress, self.url = token, retries, progress, url

    # -- helpers ------------------------------------------------------------------------------
    def _compute(self, tasks: list[Any], bar: Any = None, sizes: Sequence[int] = (),
                 gather: bool = True) -> list[Any]:
        """Run ``tasks`` on the cluster (with retries); results in order (``gather=False``: the
        results stay on the workers, e.g. stitch pieces). On a failure every other task is let
        finish first, so nothing writes into the stage after we return."""
        import distributed

        futures = self.client.compute(tasks, retries=self.retries)
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        finished: set[Any] = set()
        try:
            for f in distributed.as_completed(futures):
                if f.status == "error":
                    f.result()  # raises the task's own error
                i = index[f.key]
                finished.add(f.key)
                if gather:
                    results[i] = f.result()
                else:  # its data (stitch pieces) stays on the workers only while still needed
                    f.release()
                if bar is not None and sizes:
                    bar.update(sizes[i])
            return results
        except Exception:
            distributed.wait([f for f in futures if f.key not in finished])
            raise
        except BaseException:
            self.client.cancel(futures)
            raise

    def _doc(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"token": self.token, "kind": self.parts.source.kind, "url": self.url,
                "partitions": len(self.parts.parts),
                "config": [cfg.chunk_rows, cfg.chunk_bytes, cfg.shard_bytes, cfg.codec]}

    # -- pass 0 + 1: columns, chunk size, counts ----------------------------------------------
    def plan(self, targets: Mapping[str, Target]) -> tuple[DatasetLayout, dict[str, list[int]]]:
        """The layout and per-partition counts: from the stage when a run of this job got that
        far, else from the data (and saved there)."""
        if self.stage.exists(PLAN_KEY):
            doc = json.loads(bytes(memoryview(self.stage.get(PLAN_KEY)).cast("B")))
            if {k: doc.get(k) for k in self._doc()} != self._doc():
                raise DistributedError(
                    f"job token {self.token!r} was used for another write (its staged state at "
                    f"{self.stage.url} does not match this source and these options): pass "
                    "another job_token, or remove that location"
                )
            columns = tuple(ColumnSpec.from_json(c) for c in doc["columns"])
            counts = {k: [int(x) for x in v] for k, v in doc["counts"].items()}
            return self._layout(columns, int(doc["chunk_rows"]), counts), counts
        self.stage.delete_prefix("")  # a run killed before its plan was saved wrote nothing else
        columns, sizer = self._infer(targets)
        columns, counts = self._scan(columns)
        chunk_rows = sizer.chunk_rows()
        doc = {**self._doc(), "columns": [c.to_json() for c in columns],
               "chunk_rows": chunk_rows, "counts": counts}
        self.stage.put(PLAN_KEY, json.dumps(doc).encode())
        return self._layout(columns, chunk_rows, counts), counts

    def _layout(self, columns: tuple[ColumnSpec, ...], chunk_rows: int,
                counts: Mapping[str, Sequence[int]]) -> DatasetLayout:
        layout = _new_layout(chunk_rows, columns, self.cfg)
        arrays = {p: a.with_rows(sum(counts[p])) for p, a in layout.arrays.items()}
        num_rows = sum(counts[layout.main_array(columns[0]).path]) if columns else 0
        return DatasetLayout(num_rows, chunk_rows, columns, arrays)

    def _infer(self, targets: Mapping[str, Target]) -> tuple[tuple[ColumnSpec, ...], Sizer]:
        import dask

        src = self.parts.source
        if self.parts.meta is not None:
            try:
                columns = Conformer.infer(self.parts.meta, targets).columns
            except (DTypeError, ShapeError):
                columns = ()  # e.g. an empty object column: learn it from the data instead
            sizer = Sizer(columns, self.cfg)
            if columns and sizer.done:
                return columns, sizer
        found: tuple[tuple[ColumnSpec, ...], Sizer] | None = None
        for p, value in enumerate(self.parts.parts):
            if found is None:
                task = dask.delayed(infer_task)(src, dict(targets), self.cfg, p, value)
                found = self._compute([task])[0]
                if found is None:
                    continue
            else:
                task = dask.delayed(size_task)(src, found[0], found[1], p, value)
                found = (found[0], self._compute([task])[0])
            if found[1].done:
                break
        if found is None:
            raise ShapeError("the source holds no samples (no batches)")
        return found

    def _scan(
        self, columns: tuple[ColumnSpec, ...]
    ) -> tuple[tuple[ColumnSpec, ...], dict[str, list[int]]]:
        import dask

        src, known = self.parts.source, self.parts.counts
        needs = any(c.variable or _is_category(c) for c in columns)
        if known is not None and not needs:
            scans = [Scan(n, {}, {}) for n in known]
        else:
            bar = progress_bar(self.progress, f"write_dataset {self.url}: scan", unit="samples")
            try:
                tasks = [dask.delayed(scan_task)(src, columns, p, v)
                         for p, v in enumerate(self.parts.parts)]
                scans = self._compute(tasks)
                if bar is not None:
                    bar.update(sum(s.rows for s in scans))
            finally:
                if bar is not None:
                    bar.close()
        columns = tuple(_merge_categories(c, scans) if _is_category(c) else c for c in columns)
        rows = [s.rows for s in scans]
        counts: dict[str, list[int]] = {}
        for c in columns:
            if c.variable:
                counts[f"{c.name}/values"] = [s.elements[c.name] for s in scans]
                counts[f"{c.name}/offsets"] = rows
            else:
                counts[c.name] = rows
        return columns, counts

    # -- pass 2: shards ---------------------------------------------------------------------
    def write(self, layout: DatasetLayout, counts: Mapping[str, Sequence[int]]) -> None:
        import dask

        done = self._verify(layout)
        arrays = [ArrayRows(p, tuple(counts[p]), a.shard_rows) for p, a in layout.arrays.items()]
        plan = plan_ingest(arrays, done)
        starts = {p: [0, *accumulate(counts[p])] for p in layout.arrays}
        spec = dask.delayed(WriteSpec(self.parts.source, self.stage, layout), traverse=False)
        writes: dict[int, Any] = {}
        sizes: list[int] = []
        main = counts[layout.main_array(layout.columns[0]).path] if layout.columns else []
        for w in plan.partitions:
            first = {p: starts[p][w.partition] for p in layout.arrays}
            writes[w.partition] = dask.delayed(write_task)(
                spec, w, first, self.parts.parts[w.partition],
                dask_key_name=f"bigstore-write-{self.token}-{w.partition}")
            sizes.append(int(main[w.partition]))
        stitches = []
        for st in plan.stitches:
            pieces = [dask.delayed(operator.getitem)(writes[p], (st.path, st.shard))
                      for p in st.parts]
            stitches.append(dask.delayed(stitch_task)(
                spec, st, *pieces,
                dask_key_name=f"bigstore-stitch-{self.token}-{st.path}-{st.shard}"))
            sizes.append(0)
        total = layout.num_rows - sum(int(main[p]) for p in range(len(main)) if p not in writes)
        bar = progress_bar(self.progress, f"write_dataset {self.url}", total, unit="samples")
        try:
            if writes or stitches:
                self._compute([*writes.values(), *stitches], bar, sizes, gather=False)
        finally:
            if bar is not None:
                bar.close()

    def _verify(self, layout: DatasetLayout) -> set[tuple[str, int]]:
        """Shards a previous run of this job staged, that check out whole."""
        import dask

        have = set(self.stage.list())
        candidates = [(p, s) for p, a in layout.arrays.items() for s in range(a.n_shards)
                      if a.shard_key(s) in have]
        if not candidates:
            return set()
        step = max(1, -(-len(candidates) // 16))
        tasks = [dask.delayed(verify_task)(self.stage, layout.arrays, candidates[i : i + step])
                 for i in range(0, len(candidates), step)]
        return {(str(x[0]), int(x[1])) for ok in self._compute(tasks) for x in ok}


def _is_category(c: ColumnSpec) -> bool:
    return c.logical is not None and c.logical.type == "category"


def _merge_categories(c: ColumnSpec, scans: Sequence[Scan]) -> ColumnSpec:
    """The dictionary one process would build: values in order of first appearance."""
    seen: dict[Any, int] = {}
    for s in scans:
        for v in s.categories.get(c.name, ()):
            seen.setdefault(v, len(seen))
    if len(seen) > DATASET_MAX_CATEGORIES:
        raise DTypeError(
            f"column {c.name!r}: more than {DATASET_MAX_CATEGORIES} distinct categories; store "
            "the column as plain values instead"
        )
    assert c.logical is not None
    return replace(c, logical=replace(c.logical, categories=tuple(seen)))


def _finish(stage: Store, layout: DatasetLayout) -> None:
    """Leave exactly the dataset's objects in the stage, then commit it (root last)."""
    expected = {a.shard_key(s) for a in layout.arrays.values() for s in range(a.n_shards)}
    have = set(stage.list())
    missing = sorted(expected - have)
    if missing:  # never commit a dataset with a hole in it
        raise DistributedError(f"{stage.url}: shards {missing[:4]} were not written")
    for k in sorted(have - expected):  # the plan, a killed worker's temporary files
        stage.delete(k)
    _commit(stage, layout)


def write_distributed(
    url: str | os.PathLike[str] | Store,
    source: Any,
    *,
    cfg: DatasetWriteConfig,
    columns: Iterable[str] | None,
    variable: Iterable[str],
    schema: Any,
    storage_options: Mapping[str, Any] | None,
    client: Any,
    job_token: str | None,
    retries: int,
    progress: bool,
    overwrite: bool,
) -> DatasetLayout:
    """``write_dataset`` for Dask sources (see the module docstring)."""
    distributed = _require_dask()
    if client is None:
        try:
            client = distributed.get_client()
        except ValueError:
            raise DistributedError(
                "writing a Dask collection needs a Dask cluster: start a client first "
                "(distributed.Client(...) or Client(LocalCluster())) or pass client="
            ) from None
    if job_token is not None and not _TOKEN.match(job_token):
        raise DistributedError(f"job_token must be 1-64 of [A-Za-z0-9_-], got {job_token!r}")
    parts = _partitions(source, columns, variable)
    targets = parse_schema(schema)
    target = open_store(url, storage_options)
    check_replaceable(target, "dataset", overwrite=overwrite)
    token = job_token or _job_token(parts, cfg, targets, target.url)
    stage = target.staging(STAGE_TAG + token)
    job = _Job(client, parts, cfg, stage, token, retries, progress, target.url)
    with stage.write_lock(cfg.lock_timeout, stale_after=cfg.lock_stale_after):  # one driver
        try:
            layout, counts = job.plan(targets)
            job.write(layout, counts)
        except _DATA_ERRORS:
            discard(stage)  # the data itself is refused: running it again cannot help
            raise
        _finish(stage, layout)
        with target.write_lock(cfg.lock_timeout, stale_after=cfg.lock_stale_after) as held:
            check_replaceable(target, "dataset", overwrite=overwrite)
            held.check()  # a lease broken while we waited: fail rather than publish
            publish(stage, target, durable=cfg.durable)
    return layout
