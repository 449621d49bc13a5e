"""Every kind of source ``write_dataset`` accepts, turned into one stream of column batches.

A batch maps column name -> ``np.ndarray`` (fixed-shape: first axis = samples) or ``VarBatch``
(variable length: all elements back to back plus each sample's length). Sources are read batch
by batch (Parquet record batch by record batch), so memory stays bounded by one batch.
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DTypeError, ShapeError, UnsupportedSourceError
from ..format.dtypes import dtype_spec
from ._schema import ColumnSpec, Kind

__all__ = ["VarBatch", "Batch", "iter_batches", "infer_column", "conform"]

_SLICE_BYTES = 64 << 20  # in-memory arrays are cut into batches of about this size


@dataclass(frozen=True)
class VarBatch:
    """Variable-length samples: ``values`` (1-D) back to back; ``lengths[i]`` elements each."""

    kind: Kind  # "list" | "bytes" | "str"
    values: np.ndarray[Any, Any]
    lengths: np.ndarray[Any, Any]

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


Column = np.ndarray[Any, Any] | VarBatch
Batch = dict[str, Column]


def iter_batches(
    source: Any, *, columns: Iterable[str] | None = None, variable: Iterable[str] = ()
) -> Iterator[Batch]:
    """Normalise ``source`` into batches, keeping only ``columns`` when given."""
    keep = list(columns) if columns is not None else None
    var = set(variable)
    for raw in _raw_batches(source):
        if keep is not None:
            missing = [c for c in keep if c not in raw]
            if missing:
                raise ShapeError(f"source has no column(s) {missing}; it has {sorted(raw)}")
            raw = {c: raw[c] for c in keep}
        batch = {name: _to_column(name, value, name in var) for name, value in raw.items()}
        lengths = {name: len(col) for name, col in batch.items()}
        if len(set(lengths.values())) > 1:
            raise ShapeError(f"columns have different numbers of samples: {lengths}")
        if batch:
            yield batch


def _raw_batches(source: Any) -> Iterator[Mapping[str, Any]]:
    import pyarrow as pa

    if isinstance(source, pa.Table):
        for rb in source.to_batches(max_chunksize=65536):
            yield _arrow_batch(rb)
    elif isinstance(source, pa.RecordBatchReader):
        for rb in source:
            yield _arrow_batch(rb)
    elif isinstance(source, pa.RecordBatch):
        yield _arrow_batch(source)
    elif isinstance(source, str | os.PathLike):
        yield from _parquet_batches(os.fspath(source))
    elif isinstance(source, Mapping):
        yield from _slice_mapping(source)
    elif isinstance(source, Iterable):
        for i, item in enumerate(source):
            if not isinstance(item, Mapping):
                raise UnsupportedSourceError(
                    f"batch {i} of the source is a {type(item).__name__}, not a mapping of "
                    "column name -> values"
                )
            yield item
    else:
        raise UnsupportedSourceError(
            f"cannot read a dataset from {type(source).__name__}: pass a mapping of numpy "
            "arrays, a pyarrow Table or RecordBatchReader, a Parquet file/glob/directory, or "
            "an iterable of dict batches"
        )


def _parquet_batches(path: str) -> Iterator[Mapping[str, Any]]:
    import pyarrow.parquet as pq

    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
    elif any(ch in path for ch in "*?["):
        files = sorted(_glob.glob(path, recursive=True))  # noqa: PTH207 - a user's glob string
    else:
        files = [path]
    if not files or not all(Path(f).is_file() for f in files):
        raise UnsupportedSourceError(f"no Parquet files at {path!r}")
    for f in files:
        with pq.ParquetFile(f) as pf:
            for rb in pf.iter_batches(batch_size=65536):
                yield _arrow_batch(rb)


def _slice_mapping(source: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    arrays = dict(source.items())
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ShapeError(f"columns have different numbers of samples: {lengths}")
    n = next(iter(lengths.values()), 0)
    row_bytes = sum(
        v.dtype.itemsize * int(np.prod(v.shape[1:])) if isinstance(v, np.ndarray) else 64
        for v in arrays.values()
    )
    step = max(1, _SLICE_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        yield {k: v[start : start + step] for k, v in arrays.items()}


def _arrow_batch(rb: Any) -> dict[str, Any]:
    # pandas stores its row index as columns named __index_level_N__: not sample data
    return {
        name: _arrow_column(name, rb.column(i))
        for i, name in enumerate(rb.schema.names)
        if not name.startswith("__index_level_")
    }


def _arrow_column(name: str, arr: Any) -> Column:
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if arr.null_count:
        raise DTypeError(f"column {name!r} has {arr.null_count} nulls; bigstore stores no nulls")
    if (
        pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or (pa.types.is_large_binary(t))
    ):
        kind: Kind = "str" if (pa.types.is_string(t) or pa.types.is_large_string(t)) else "bytes"
        big = arr.cast(pa.large_binary())
        offsets = np.frombuffer(big.buffers()[1], np.int64)[big.offset : big.offset + len(big) + 1]
        data = big.buffers()[2]
        raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        return VarBatch(kind, raw[offsets[0] : offsets[-1]], np.diff(offsets))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        values = _arrow_column(f"{name}[values]", arr.flatten())
        if not isinstance(values, np.ndarray) or values.ndim != 1:
            raise DTypeError(f"column {name!r}: only lists of plain numbers are supported")
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        return VarBatch("list", values, lengths)
    if pa.types.is_fixed_size_list(t):
        inner = _arrow_column(f"{name}[values]", arr.flatten())
        if not isinstance(inner, np.ndarray):
            raise DTypeError(f"column {name!r}: fixed-size lists of variable-length values")
        return inner.reshape(len(arr), t.list_size, *inner.shape[1:])
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return np.asarray(arr.to_numpy(zero_copy_only=False))
    raise DTypeError(
        f"column {name!r} has Arrow type {t}, which bigstore does not store (numbers, bools, "
        "fixed-size lists, lists, strings and binary are supported; select other columns with "
        "columns=[...])"
    )


def _to_column(name: str, value: Any, force_variable: bool) -> Column:
    if isinstance(value, VarBatch):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object and not force_variable:
        if value.ndim == 0:
            raise ShapeError(f"column {name!r} is a scalar; the first axis must be samples")
        dtype_spec(value.dtype)  # raises a DTypeError naming what is unsupported
        return value
    if not isinstance(value, np.ndarray | list | tuple):
        try:
            import pyarrow as pa

            if isinstance(value, pa.Array | pa.ChunkedArray):
                arr = value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value
                return _arrow_column(name, arr)
        except ImportError:  # pragma: no cover
            pass
        if hasattr(value, "numpy"):  # torch tensors
            return _to_column(name, value.numpy(), force_variable)
        raise DTypeError(f"column {name!r}: cannot read values of type {type(value).__name__}")
    items = list(value)
    if items and all(isinstance(x, str) for x in items):
        encoded = [x.encode() for x in items]
        return _var_from("str", encoded)
    if items and all(isinstance(x, bytes | bytearray | memoryview) for x in items):
        return _var_from("bytes", [bytes(x) for x in items])
    arrays = [np.asarray(x) for x in items]
    for i, a in enumerate(arrays):
        if a.dtype == object:
            raise DTypeError(f"column {name!r}, sample {i}: not numbers ({a.dtype})")
    shapes = {a.shape for a in arrays}
    if len(shapes) <= 1 and not force_variable:
        if not arrays:
            return np.empty(0)
        return np.stack(arrays)
    if all(a.ndim == 1 for a in arrays):
        dtypes = {a.dtype for a in arrays}
        if len(dtypes) > 1:
            raise DTypeError(
                f"column {name!r}: samples have different dtypes {sorted(map(str, dtypes))}"
            )
        values = np.concatenate(arrays) if arrays else np.empty(0)
        return VarBatch("list", values, np.array([a.shape[0] for a in arrays], np.int64))
    raise ShapeError(
        f"column {name!r} is ragged: samples have shapes {sorted(shapes)[:4]}...; fixed-shape "
        "columns need one shape, variable-length columns must be 1-D lists, bytes or strings"
    )


def _var_from(kind: Kind, items: list[bytes]) -> VarBatch:
    lengths = np.array([len(b) for b in items], np.int64)
    values = np.frombuffer(b"".join(items), np.uint8).copy()
    return VarBatch(kind, values, lengths)


def infer_column(name: str, col: Column) -> ColumnSpec:
    """The column a first batch implies."""
    if isinstance(col, VarBatch):
        dt = dtype_spec(col.values.dtype if col.kind == "list" else np.uint8)
        return ColumnSpec(name, col.kind, dt)
    return ColumnSpec(name, "fixed", dtype_spec(col.dtype), tuple(int(d) for d in col.shape[1:]))


def conform(spec: ColumnSpec, col: Column, batch_no: int) -> Column:
    """Check a later batch against the column's spec; say exactly what differs."""
    where = f"column {spec.name!r} (batch {batch_no})"
    if spec.variable:
        if isinstance(col, np.ndarray) and spec.kind == "list" and col.ndim == 2:
            col = VarBatch("list", col.reshape(-1), np.full(col.shape[0], col.shape[1], np.int64))
        if not isinstance(col, VarBatch) or col.kind != spec.kind:
            got = col.kind if isinstance(col, VarBatch) else f"fixed shape {col.shape[1:]}"
            raise ShapeError(f"{where}: the dataset stores {spec.kind} values here, got {got}")
        if col.kind == "list" and col.values.dtype != spec.dtype.storage:
            if not np.can_cast(col.values.dtype, spec.dtype.storage, "same_kind"):
                raise DTypeError(
                    f"{where}: dtype {col.values.dtype}, the dataset has {spec.dtype.name}"
                )
            col = VarBatch("list", col.values.astype(spec.dtype.storage), col.lengths)
        return col
    if isinstance(col, VarBatch):
        raise ShapeError(
            f"{where}: the column is fixed-shape {spec.shape}, but this batch is ragged "
            f"({col.kind} values of varying length)"
        )
    if tuple(col.shape[1:]) != spec.shape:
        raise ShapeError(f"{where}: samples of shape {tuple(col.shape[1:])}, expected {spec.shape}")
    if col.dtype != spec.dtype.storage:
        if not np.can_cast(col.dtype, spec.dtype.storage, "same_kind"):
            raise DTypeError(f"{where}: dtype {col.dtype}, the dataset has {spec.dtype.name}")
        col = col.astype(spec.dtype.storage)
    return col
