"""Shards: encode one (writer side) and read inner chunks out of them (reader side).

A shard is zarr's ``sharding_indexed`` layout with the index at the end: the encoded inner
chunks back to back in chunk order, then (offset, nbytes) per inner chunk as little-endian
uint64 and the index's crc32c. Uncompressed chunks all have the same size, so their positions
follow from the chunk number; the index is read only for compressed arrays.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import bigstore_native as native
import numpy as np

from ..errors import CorruptChunkError, StoreNotFoundError, TruncatedChunkError
from ..format.codecs import CRC_BYTES, check_crc
from ..store import ByteRange, Store
from ._schema import EMPTY, INDEX_ENTRY, ArraySpec

__all__ = ["ShardReader", "encode_shard"]

_MAX_REQUEST = 16 << 20


def encode_shard(arr: ArraySpec, rows: np.ndarray[Any, Any]) -> list[Any]:
    """The object for one shard holding ``rows`` (a (n, row_bytes) uint8 array, n <= shard)."""
    n = rows.shape[0]
    parts: list[Any] = []
    index = np.full((arr.chunks_per_shard, 2), EMPTY, dtype="<u8")
    pos = 0
    for j in range(-(-n // arr.chunk_rows)):
        body = rows[j * arr.chunk_rows : (j + 1) * arr.chunk_rows]
        if body.shape[0] < arr.chunk_rows:  # zarr stores edge chunks padded to the full shape
            padded = np.zeros((arr.chunk_rows, rows.shape[1]), np.uint8)
            padded[: body.shape[0]] = body
            body = padded
        enc = arr.codec.encode(memoryview(np.ascontiguousarray(body)).cast("B"))
        size = sum(memoryview(p).nbytes for p in enc)
        index[j] = (pos, size)
        parts.extend(enc)
        pos += size
    idx = index.tobytes()
    parts.append(idx)
    parts.append(np.array([_crc(idx)], dtype="<u4").tobytes())
    return parts


def _crc(data: bytes) -> int:
    from ..format.codecs import crc32c_of

    return crc32c_of([data])


class ShardReader:
    """Reads whole inner chunks of sharded arrays into caller-owned buffers. Thread-safe."""

    def __init__(self, store: Store, *, verify: bool = True) -> None:
        self.store = store
        self.verify = verify
        self._index: dict[tuple[str, int], np.ndarray[Any, Any]] = {}
        self._lock = threading.Lock()

    def _where(self, arr: ArraySpec, k: int) -> str:
        key = arr.shard_key(k // arr.chunks_per_shard)
        return f"array {arr.path!r} chunk {k} ({self.store.url}/{key})"

    def chunk_range(self, arr: ArraySpec, k: int) -> ByteRange:
        """Bytes of inner chunk ``k`` inside its shard object."""
        s, j = divmod(k, arr.chunks_per_shard)
        if arr.codec.raw:
            size = arr.chunk_nbytes + CRC_BYTES
            return ByteRange(j * size, (j + 1) * size)
        off, nbytes = (int(x) for x in self._shard_index(arr, s)[j])
        if off == EMPTY:
            raise CorruptChunkError(f"{self._where(arr, k)}: the shard index has no such chunk")
        return ByteRange(off, off + nbytes)

    def _shard_index(self, arr: ArraySpec, s: int) -> np.ndarray[Any, Any]:
        key = (arr.path, s)
        with self._lock:
            got = self._index.get(key)
        if got is not None:
            return got
        skey = arr.shard_key(s)
        try:
            size = self.store.size(skey)
        except StoreNotFoundError:
            raise CorruptChunkError(f"{self.store.url}/{skey}: shard is missing") from None
        if size < arr.index_nbytes:
            raise TruncatedChunkError(f"{self.store.url}/{skey}: {size} bytes, too short")
        (raw,) = self.store.get_ranges(skey, [ByteRange(size - arr.index_nbytes, size)])
        view = memoryview(raw).cast("B")
        body = view[: arr.chunks_per_shard * INDEX_ENTRY]
        check_crc([body], view[-CRC_BYTES:], f"{self.store.url}/{skey} (shard index)")
        index = np.frombuffer(bytes(body), dtype="<u8").reshape(-1, 2)
        with self._lock:
            if len(self._index) > 4096:  # bounded: indexes are re-read if ever needed again
                self._index.clear()
            self._index[key] = index
        return index

    def read_chunks(
        self, arr: ArraySpec, chunks: Sequence[int], outs: Sequence[memoryview]
    ) -> None:
        """Decode inner chunks ``chunks`` of ``arr`` into ``outs`` (each ``chunk_nbytes``).

        Neighbouring chunks of one shard are read with one request: on local disk, one scatter
        ``preadv`` straight into the output buffers.
        """
        by_shard: dict[int, list[int]] = {}
        for i, k in enumerate(chunks):
            by_shard.setdefault(int(k) // arr.chunks_per_shard, []).append(i)
        for s, members in by_shard.items():
            try:
                self._read_shard_chunks(
                    arr, s, [int(chunks[i]) for i in members], [outs[i] for i in members]
                )
            except StoreNotFoundError:
                raise CorruptChunkError(
                    f"{self.store.url}/{arr.shard_key(s)}: shard is missing"
                ) from None

    def _read_shard_chunks(
        self, arr: ArraySpec, s: int, chunks: list[int], outs: list[memoryview]
    ) -> None:
        key = arr.shard_key(s)
        ranges = [self.chunk_range(arr, k) for k in chunks]
        if arr.codec.raw and self.store.zero_copy_reads:
            starts = np.array([r.start for r in ranges], np.int64)
            ends = np.array([r.end for r in ranges], np.int64)
            order = np.argsort(starts, kind="stable")
            group, m_start, _m_end = native.coalesce_ranges(
                starts[order], ends[order], 0, _MAX_REQUEST
            )
            crcs = [memoryview(bytearray(CRC_BYTES)) for _ in chunks]
            views_by_group: list[list[memoryview]] = [[] for _ in range(len(m_start))]
            for pos, i in enumerate(order.tolist()):
                views_by_group[int(group[pos])].extend([outs[i].cast("B"), crcs[i]])
            for g, views in enumerate(views_by_group):
                try:
                    self.store.read_into(key, int(m_start[g]), views)
                except TruncatedChunkError as e:
                    raise TruncatedChunkError(f"{self.store.url}/{key}: truncated ({e})") from None
            if self.verify:
                for k, out, crc in zip(chunks, outs, crcs):
                    check_crc([out], crc, self._where(arr, k))
            return
        blobs = self.store.get_ranges(key, ranges)
        for k, blob, out in zip(chunks, blobs, outs):
            arr.codec.decode_into(
                blob, out.cast("B"), verify=self.verify, where=self._where(arr, k)
            )
