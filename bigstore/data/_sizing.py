"""The ``chunk_rows`` rule every dataset writer shares: one process or a Dask cluster.

Rows per inner chunk = ``chunk_bytes`` / (stored bytes of one sample). Fixed-shape columns give
their bytes per sample from the columns alone. Variable-length columns (tokens, strings) are
sized on a *sample of the dataset's first rows*: the leading rows ``r`` with
``r < DATASET_SIZING_ROWS`` that start within the first ``DATASET_SIZING_BYTES`` stored bytes.
That sample depends on the rows only, never on how a source happens to be cut into batches or
partitions, so a single-process write and a distributed one of the same rows choose the same
``chunk_rows`` and write byte-identical arrays.

A :class:`Sizer` is fed conformed batches in order until :attr:`Sizer.done`; it is a handful of
integers, so a distributed driver can carry it from one partition's task to the next.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..config import DATASET_SIZING_BYTES, DATASET_SIZING_ROWS, DatasetWriteConfig
from ._conform import Stored, VarBatch
from ._schema import ColumnSpec

__all__ = ["Sizer"]

_OFFSETS_ROW = 16  # a variable-length sample's (start, stop) pair in its offsets array


class Sizer:
    """Accumulates the sizing sample; :meth:`chunk_rows` is the rule's answer."""

    def __init__(self, columns: Sequence[ColumnSpec], cfg: DatasetWriteConfig) -> None:
        self.fixed_bytes = sum(c.row_bytes for c in columns if not c.variable)
        self.var = {c.name: 0 for c in columns if c.variable}  # values bytes in the sample
        self.chunk_rows_given = cfg.chunk_rows
        self.chunk_bytes = cfg.chunk_bytes
        self.rows = 0  # rows in the sample so far
        self.bytes = 0  # their stored bytes
        # nothing to learn from data: the columns (or the caller) fix the answer
        self.done = cfg.chunk_rows is not None or not self.var

    def feed(self, batch: Mapping[str, Stored]) -> bool:
        """Add the leading rows of ``batch`` that belong to the sample; True once complete."""
        if self.done:
            return True
        n = len(next(iter(batch.values()))) if batch else 0
        per_row = np.full(n, self.fixed_bytes, np.int64)
        col_bytes: dict[str, np.ndarray[Any, Any]] = {}
        for name in self.var:
            col = batch[name]
            assert isinstance(col, VarBatch)
            item = col.values.itemsize * int(np.prod(col.values.shape[1:], dtype=np.int64))
            col_bytes[name] = col.lengths.astype(np.int64) * item
            per_row += col_bytes[name]
        before = self.bytes + np.cumsum(per_row) - per_row  # bytes of the rows before each row
        take = min(DATASET_SIZING_ROWS - self.rows,
                   int(np.searchsorted(before, DATASET_SIZING_BYTES, side="left")))
        take = max(0, take)
        self.rows += take
        self.bytes += int(per_row[:take].sum())
        for name, b in col_bytes.items():
            self.var[name] += int(b[:take].sum())
        self.done = (take < n or self.rows >= DATASET_SIZING_ROWS
                     or self.bytes >= DATASET_SIZING_BYTES)
        return self.done

    def chunk_rows(self) -> int:
        """Samples per inner chunk: about ``chunk_bytes`` of all columns together."""
        if self.chunk_rows_given is not None:
            return self.chunk_rows_given
        n = max(1, self.rows)
        row_bytes = self.fixed_bytes + sum(_OFFSETS_ROW + b // n for b in self.var.values())
        return max(1, self.chunk_bytes // max(1, row_bytes))
