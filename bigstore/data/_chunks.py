"""Load chunk k of every selected column into slots of caller-owned pools, and gather rows.

A pool is one preallocated (n_slots, chunk_rows, row_bytes) uint8 array per fixed column (for
a variable-length column: its offsets); a slot holds one chunk. Rows are gathered out of the
slots by a numba kernel into the caller's batch arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import bigstore_native.data as kernels
import numpy as np

from ..errors import CorruptChunkError
from ..io import ChunkReader
from ._schema import ColumnSpec, DatasetLayout

__all__ = ["ChunkPools", "decode_var", "gather_fixed", "gather_var", "load_chunks"]

Arr = np.ndarray[Any, Any]


class ChunkPools:
    """Slots for ``n_slots`` chunks of each column, plus each var column's values per slot."""

    def __init__(self, layout: DatasetLayout, columns: Sequence[ColumnSpec], n_slots: int) -> None:
        self.n_slots = n_slots
        self.fixed: dict[str, Arr] = {}
        for c in columns:
            arr = layout.main_array(c)
            self.fixed[c.name] = np.empty((n_slots, arr.chunk_rows, arr.row_bytes), np.uint8)
        # values of the chunk in a slot: (index of its first element, the elements)
        self.values: dict[str, list[tuple[int, Arr]]] = {
            c.name: [(0, np.empty(0, np.uint8))] * n_slots for c in columns if c.variable
        }

    @staticmethod
    def slot_bytes(layout: DatasetLayout, columns: Sequence[ColumnSpec]) -> int:
        return sum(layout.main_array(c).chunk_nbytes for c in columns)


def load_chunks(
    reader: ChunkReader, layout: DatasetLayout, col: ColumnSpec, chunks: Sequence[int],
    pools: ChunkPools, slots: Sequence[int], *, confirm: bool = True,
) -> None:
    """Read chunks ``chunks`` of column ``col`` into ``slots`` of ``pools`` (a variable-length
    column: its offsets, then the values those offsets span). ``confirm``: check the store was
    not replaced meanwhile (see ChunkReader); False when the caller does it once for several."""
    arr = layout.main_array(col)
    pool = pools.fixed[col.name]
    reader.read_chunks(arr, list(chunks), [pool[s] for s in slots], confirm=False)
    if col.variable:
        for k, s in zip(chunks, slots):
            pools.values[col.name][s] = _values_of(reader, layout, col, int(k), pool[s])
    if confirm:
        reader.confirm()


def _values_of(
    reader: ChunkReader, layout: DatasetLayout, col: ColumnSpec, k: int, offsets_raw: Arr
) -> tuple[int, Arr]:
    n = layout.chunk_len(k)
    offs = offsets_raw.view(np.int64).reshape(-1, 2)[:n]
    start, stop = int(offs[:, 0].min()), int(offs[:, 1].max())
    varr = layout.values_array(col)
    if start < 0 or stop > varr.rows or (offs[:, 1] < offs[:, 0]).any():
        raise CorruptChunkError(
            f"{layout.main_array(col).where(k, reader.store.url)}: offsets [{start}, {stop}) "
            f"outside the column's {varr.rows} values"
        )
    if stop <= start:
        return start, np.empty(0, varr.dtype.storage)
    first, last = start // varr.chunk_rows, (stop - 1) // varr.chunk_rows
    chunks = list(range(first, last + 1))
    buf = np.empty(len(chunks) * varr.chunk_nbytes, np.uint8)
    outs = [buf[i * varr.chunk_nbytes : (i + 1) * varr.chunk_nbytes] for i in range(len(chunks))]
    reader.read_chunks(varr, chunks, outs, confirm=False)
    elems = buf.view(varr.dtype.storage)
    lo = start - first * varr.chunk_rows
    return start, elems[lo : lo + (stop - start)].copy()


def gather_fixed(
    pools: ChunkPools,
    col: ColumnSpec,
    slots: Arr,
    rows: Arr,
    alloc: Callable[[tuple[int, ...], np.dtype[Any]], Arr] | None = None,
) -> Arr:
    """A new (n, *shape) array (from ``alloc``: pinned memory, say) of rows (slots[i], rows[i])."""
    shape = (slots.shape[0], *col.shape)
    out = (
        alloc(shape, col.dtype.storage) if alloc is not None else np.empty(shape, col.dtype.storage)
    )
    flat = out.reshape(slots.shape[0], -1).view(np.uint8) if out.size else out
    if out.size:
        kernels.gather_chunk_rows(pools.fixed[col.name], slots, rows, flat)
    return out


def gather_var(pools: ChunkPools, col: ColumnSpec, slots: Arr, rows: Arr) -> list[Any]:
    offsets = pools.fixed[col.name]
    vals = pools.values[col.name]
    out = []
    for s, r in zip(slots.tolist(), rows.tolist()):
        a, b = offsets[s, r].view(np.int64).tolist()
        base, v = vals[s]
        out.append(decode_var(col, v[a - base : b - base]))
    return out


def decode_var(col: ColumnSpec, v: Arr) -> Any:
    if col.kind == "str":
        return v.tobytes().decode()
    if col.kind == "bytes":
        return v.tobytes()
    return v.copy()
