"""Shard objects: zarr's ``sharding_indexed`` layout with the index at the end.

A shard holds its encoded inner chunks back to back in chunk order, then one (offset, nbytes)
pair per inner chunk as little-endian uint64, then the index's crc32c. An inner chunk that was
never written has the pair (2**64-1, 2**64-1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CorruptChunkError, TruncatedChunkError
from .array import INDEX_ENTRY, ArrayLayout
from .codecs import CRC_BYTES, check_crc, crc32c_of

__all__ = ["EMPTY", "encode_shard", "parse_index"]

EMPTY = (1 << 64) - 1


def encode_shard(layout: ArrayLayout, rows: np.ndarray[Any, Any]) -> list[Any]:
    """The object for one shard holding ``rows`` (an (n, row_bytes) uint8 array, n <= shard)."""
    n = rows.shape[0]
    parts: list[Any] = []
    index = np.full((layout.chunks_per_shard, 2), EMPTY, dtype="<u8")
    pos = 0
    cr = layout.chunk_rows
    for j in range(-(-n // cr)):
        body = rows[j * cr : (j + 1) * cr]
        if body.shape[0] < cr:  # zarr stores edge chunks padded to the full shape
            padded = np.zeros((cr, rows.shape[1]), np.uint8)
            padded[: body.shape[0]] = body
            body = padded
        enc = layout.codec.encode(memoryview(np.ascontiguousarray(body)).cast("B"))
        size = sum(memoryview(p).nbytes for p in enc)
        index[j] = (pos, size)
        parts.extend(enc)
        pos += size
    idx = index.tobytes()
    parts.append(idx)
    parts.append(np.array([crc32c_of([idx])], dtype="<u4").tobytes())
    return parts


def parse_index(
    layout: ArrayLayout, raw: Any, object_size: int, where: str
) -> np.ndarray[Any, Any]:
    """The (chunks_per_shard, 2) index of a shard of ``object_size`` bytes, checked: its crc32c,
    and that every written chunk lies inside the data part of the object."""
    view = memoryview(raw).cast("B")
    if view.nbytes != layout.index_nbytes:
        raise TruncatedChunkError(f"{where}: shard index of {view.nbytes} bytes, "
                                  f"expected {layout.index_nbytes}")
    body = view[: layout.chunks_per_shard * INDEX_ENTRY]
    check_crc([body], view[-CRC_BYTES:], f"{where} (shard index)")
    index = np.frombuffer(bytes(body), dtype="<u8").reshape(-1, 2)
    written = index[:, 0] != EMPTY
    end = np.uint64(max(0, object_size - layout.index_nbytes))
    off, n = index[written, 0], index[written, 1]
    if (off > end).any() or (n > end - np.minimum(off, end)).any():  # no uint64 wrap-around
        raise CorruptChunkError(f"{where}: the shard index points past the shard's data")
    return index
