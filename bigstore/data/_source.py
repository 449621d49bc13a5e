"""Every kind of source ``write_dataset`` accepts, turned into one stream of column batches.

Sources: a mapping of column -> values, a pandas DataFrame, a pyarrow Table / RecordBatch /
RecordBatchReader, a Parquet file, glob or directory, or an iterable of dict batches. Each
batch maps column name -> :class:`~bigstore.data._kinds.Encoded` (what the values are is
:mod:`._kinds`' job). Top-level Arrow structs become one column per field, named "a.b".
Sources are read batch by batch (Parquet record batch by record batch, a DataFrame slice by
slice), so memory stays bounded by one batch.
"""

from __future__ import annotations

import glob as _glob
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ShapeError, UnsupportedSourceError
from ._kinds import Encoded, encode

__all__ = ["Batch", "iter_batches", "parquet_files"]

_SLICE_BYTES = 64 << 20  # in-memory arrays are cut into batches of about this size
_ROWS = 65536  # rows per batch of Arrow and pandas sources

Batch = dict[str, Encoded]


def iter_batches(
    source: Any, *, columns: Iterable[str] | None = None, variable: Iterable[str] = ()
) -> Iterator[Batch]:
    """Normalise ``source`` into batches, keeping only ``columns`` when given (a struct's
    name keeps all its fields)."""
    keep = list(columns) if columns is not None else None
    var = set(variable)
    for raw in _raw_batches(source):
        raw = _flatten_structs(raw)
        if keep is not None:
            raw = _select(raw, keep)
        batch = {name: encode(name, value, name in var) for name, value in raw.items()}
        lengths = {name: len(col) for name, col in batch.items()}
        if len(set(lengths.values())) > 1:
            raise ShapeError(f"columns have different numbers of samples: {lengths}")
        if batch:
            yield batch


def _select(raw: Mapping[str, Any], keep: list[str]) -> dict[str, Any]:
    out = {}
    for k in keep:
        got = {c: v for c, v in raw.items() if c == k or c.startswith(k + ".")}
        if not got:
            raise ShapeError(f"source has no column {k!r}; it has {sorted(raw)}")
        out.update(got)
    return out


def _flatten_structs(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """Arrow struct columns as one column per field ("a.b"); other columns as they are."""
    if not any(_is_struct(v) for v in raw.values()):
        return raw
    out: dict[str, Any] = {}
    for name, value in raw.items():
        _add_flat(name, value, out)
    return out


def _is_struct(value: Any) -> bool:
    if not type(value).__module__.startswith("pyarrow"):
        return False
    import pyarrow as pa

    return isinstance(value, pa.Array | pa.ChunkedArray) and pa.types.is_struct(value.type)


def _add_flat(name: str, value: Any, out: dict[str, Any]) -> None:
    if _is_struct(value):
        import pyarrow as pa

        arr = value.combine_chunks() if isinstance(value, pa.ChunkedArray) else value
        if arr.null_count:
            raise ShapeError(
                f"struct column {name!r} has {arr.null_count} null rows; bigstore stores no nulls"
            )
        for field, child in zip(arr.type, arr.flatten()):
            _add_flat(f"{name}.{field.name}", child, out)
        return
    if name in out:
        raise ShapeError(
            f"column {name!r} appears twice (a struct field flattened to 'a.b' meets a column "
            "of that name); rename one"
        )
    out[name] = value


def _raw_batches(source: Any) -> Iterator[Mapping[str, Any]]:
    import pyarrow as pa

    if type(source).__module__.startswith("pandas") and hasattr(source, "columns"):
        yield from _pandas_batches(source)
    elif isinstance(source, pa.Table):
        for rb in source.to_batches(max_chunksize=_ROWS):
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
            "arrays, a pandas DataFrame, a pyarrow Table or RecordBatchReader, a Parquet "
            "file/glob/directory, or an iterable of dict batches"
        )


def parquet_files(path: str) -> list[str]:
    """The Parquet files a path, glob or directory names, in the order they are written."""
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
    elif any(ch in path for ch in "*?["):
        files = sorted(_glob.glob(path, recursive=True))  # noqa: PTH207 - a user's glob string
    else:
        files = [path]
    if not files or not all(Path(f).is_file() for f in files):
        raise UnsupportedSourceError(f"no Parquet files at {path!r}")
    return files


def _parquet_batches(path: str) -> Iterator[Mapping[str, Any]]:
    import pyarrow.parquet as pq

    for f in parquet_files(path):
        with pq.ParquetFile(f) as pf:
            for rb in pf.iter_batches(batch_size=_ROWS):
                yield _arrow_batch(rb)


def _slice_mapping(source: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    arrays = dict(source.items())
    lengths = {k: _len(k, v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ShapeError(f"columns have different numbers of samples: {lengths}")
    n = next(iter(lengths.values()), 0)
    row_bytes = sum(
        v.dtype.itemsize * int(np.prod(v.shape[1:])) if isinstance(v, np.ndarray) else 64
        for v in arrays.values()
    )
    step = max(1, _SLICE_BYTES // max(1, row_bytes))
    for start in range(0, n, step):
        yield {k: _rows(v, start, start + step) for k, v in arrays.items()}


def _len(name: str, value: Any) -> int:
    try:
        return len(value)
    except TypeError:
        raise ShapeError(
            f"column {name!r} is a {type(value).__name__} without a length: the first axis "
            "must be samples"
        ) from None


def _rows(value: Any, start: int, stop: int) -> Any:
    iloc = getattr(value, "iloc", None)  # pandas: by position, whatever the index
    return iloc[start:stop] if iloc is not None else value[start:stop]


def _pandas_batches(df: Any) -> Iterator[Mapping[str, Any]]:
    """A DataFrame slice by slice; its index is not stored (``df.reset_index()`` keeps it)."""
    names = list(df.columns)
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise UnsupportedSourceError(
            f"DataFrame column names must be strings, got {bad[:4]!r}: rename them "
            "(df.columns = [str(c) for c in df.columns])"
        )
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise UnsupportedSourceError(f"DataFrame has duplicate column names {dup}")
    for start in range(0, len(df), _ROWS):
        part = df.iloc[start : start + _ROWS]
        yield {name: part[name] for name in names}


def _arrow_batch(rb: Any) -> dict[str, Any]:
    names = rb.schema.names
    if len(set(names)) != len(names):
        dup = sorted({c for c in names if names.count(c) > 1})
        raise UnsupportedSourceError(f"the Arrow data has duplicate column names {dup}")
    # pandas stores its row index as columns named __index_level_N__: not sample data
    return {
        name: rb.column(i)
        for i, name in enumerate(rb.schema.names)
        if not name.startswith("__index_level_")
    }
