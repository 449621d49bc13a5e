"""Read one chunk's rows into the caller's buffer: fetch, verify, decode.

Uncompressed chunks on local disk are read with one scatter ``preadv`` straight into the
destination (rows outside the request land in small scratch buffers, needed only so the crc32c
can cover the whole chunk): no intermediate copy at all.
"""

from __future__ import annotations

from typing import Any

from ..errors import CorruptChunkError, StoreNotFoundError, TruncatedChunkError
from ..format import TensorMeta
from ..format.codecs import CRC_BYTES, check_crc
from ..store import Store

__all__ = ["can_map", "map_tensor", "read_chunk_rows", "verify_chunk", "verify_mapped_chunk"]


def _where(store: Store, meta: TensorMeta, i: int) -> str:
    return f"tensor {meta.name!r} chunk {i} ({store.url}/{meta.chunk_key(i)})"


def read_chunk_rows(
    store: Store, meta: TensorMeta, i: int, lo: int, hi: int, out: memoryview, *, verify: bool
) -> None:
    """Rows [lo, hi) of chunk ``i`` of ``meta`` into ``out`` (exactly (hi-lo)*row_bytes)."""
    try:
        _read_chunk_rows(store, meta, i, lo, hi, out, verify=verify)
    except StoreNotFoundError:
        raise CorruptChunkError(f"{_where(store, meta, i)}: chunk is missing") from None


def _read_chunk_rows(
    store: Store, meta: TensorMeta, i: int, lo: int, hi: int, out: memoryview, *, verify: bool
) -> None:
    rb = meta.row_bytes
    out = out.cast("B")
    if out.nbytes != (hi - lo) * rb:
        raise ValueError(f"output buffer of {out.nbytes} bytes for {(hi - lo) * rb}")
    key = meta.chunk_key(i)
    where = _where(store, meta, i)
    if meta.codec.raw and store.zero_copy_reads:
        if not verify:
            store.read_into(key, lo * rb, [out])
            return
        head = memoryview(bytearray(lo * rb))
        tail = memoryview(bytearray((meta.chunk_rows - hi) * rb))
        crc = memoryview(bytearray(CRC_BYTES))
        try:
            store.read_into(key, 0, [head, out, tail, crc])
        except TruncatedChunkError as e:
            raise TruncatedChunkError(f"{where}: truncated ({e})") from None
        check_crc([head, out, tail], crc, where)
        return
    blob = memoryview(store.get(key)).cast("B")
    if meta.codec.raw:
        if blob.nbytes != meta.raw_chunk_size:
            raise TruncatedChunkError(
                f"{where}: {blob.nbytes} bytes stored, expected {meta.raw_chunk_size}"
            )
        if verify:
            check_crc([blob[: meta.chunk_nbytes]], blob[meta.chunk_nbytes :], where)
        out[:] = blob[lo * rb : hi * rb]
        return
    if lo == 0 and hi == meta.chunk_rows:
        meta.codec.decode_into(blob, out, verify=verify, where=where)
        return
    full = memoryview(bytearray(meta.chunk_nbytes))
    meta.codec.decode_into(blob, full, verify=verify, where=where)
    out[:] = full[lo * rb : hi * rb]


def verify_chunk(store: Store, meta: TensorMeta, i: int) -> None:
    """Re-check one stored chunk completely: size, checksum, and that it decodes."""
    where = _where(store, meta, i)
    try:
        blob = store.get(meta.chunk_key(i))
    except StoreNotFoundError:
        raise CorruptChunkError(f"{where}: chunk is missing") from None
    if meta.codec.raw and len(memoryview(blob).cast("B")) != meta.raw_chunk_size:
        raise TruncatedChunkError(
            f"{where}: {len(memoryview(blob).cast('B'))} bytes stored, "
            f"expected {meta.raw_chunk_size}"
        )
    scratch = memoryview(bytearray(meta.chunk_nbytes))
    meta.codec.decode_into(blob, scratch, verify=True, where=where)


def can_map(store: Store, meta: TensorMeta) -> bool:
    """True when ``meta``'s chunks can be mapped into one zero-copy tensor."""
    from ..store import LocalStore
    from .mapping import PAGE, mmap_supported

    return (
        isinstance(store, LocalStore)
        and meta.codec.raw
        and meta.nbytes > 0
        and (meta.n_chunks == 1 or meta.chunk_nbytes % PAGE == 0)
        and mmap_supported()
    )


def map_tensor(store: Store, meta: TensorMeta) -> Any:
    """Map every chunk file of ``meta`` into one region (see ``can_map``); no bytes are read."""
    from ..store import LocalStore
    from .mapping import map_files

    assert isinstance(store, LocalStore)
    paths = [store.root / meta.chunk_key(i) for i in range(meta.n_chunks)]
    for i, p in enumerate(paths):
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            raise CorruptChunkError(f"{_where(store, meta, i)}: chunk is missing") from None
        if size != meta.raw_chunk_size:
            raise TruncatedChunkError(
                f"{_where(store, meta, i)}: {size} bytes stored, expected {meta.raw_chunk_size}"
            )
    return map_files(paths, meta.chunk_nbytes, [meta.chunk_nbytes] * meta.n_chunks)


def verify_mapped_chunk(store: Store, meta: TensorMeta, i: int, region: Any) -> int:
    """Check chunk ``i`` of a mapped tensor against its stored crc32c; returns bytes checked."""
    start = i * meta.chunk_nbytes
    data = region.view(start, start + meta.chunk_nbytes)
    crc = memoryview(bytearray(CRC_BYTES))
    store.read_into(meta.chunk_key(i), meta.chunk_nbytes, [crc])
    check_crc([data], crc, _where(store, meta, i))
    return meta.chunk_rows_of(i) * meta.row_bytes
