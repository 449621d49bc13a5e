"""Before anything is allocated for an array: can its stored objects hold what its document says?

A document edited (or damaged) to claim 10**12 rows would otherwise make a load allocate
terabytes, and a loader size its chunk slots for chunks that do not exist. The check is cheap
(a ``stat``/HEAD or two per array, plus a few bytes of one chunk for compressed arrays) and
bounds every allocation by the bytes really stored:

- the last chunk (or shard) object exists: the chunk count is real;
- uncompressed chunks are exactly their stored size (first and last chunk objects; in shards,
  every index entry of the first and last shard): rows per chunk and row size are real;
- compressed chunks: the first chunk's frame says how big it decodes (zstd's content size,
  gzip's ISIZE) and that must be a chunk's size; when the frame does not say, the chunk may
  claim at most the codec's ceiling ratio (zstd 32,768x, gzip 1,032x) of its stored bytes;
- in shards, the index (checked by its crc32c) must hold every chunk the document counts.

Anything else raises :class:`~bigstore.errors.MetadataError` naming the array.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptChunkError, MetadataError, StoreNotFoundError
from ..format import EMPTY, ArrayLayout
from ..format.codecs import CRC_BYTES
from ..store import ByteRange

if TYPE_CHECKING:
    from .reader import ChunkReader

__all__ = ["check_backed"]


def check_backed(reader: ChunkReader, layout: ArrayLayout) -> None:
    """Raise MetadataError unless the stored objects can hold what ``layout`` claims."""
    if layout.n_chunks == 0:
        return
    if layout.sharded:
        _check_shards(reader, layout)
    else:
        _check_chunks(reader, layout)


def _lie(layout: ArrayLayout, url: str, what: str) -> MetadataError:
    return MetadataError(
        f"array {layout.path!r} of {url}: its document claims shape "
        f"{layout.shape} in chunks of {layout.chunk_rows} rows, but {what}: the document does "
        "not describe the stored data (edited or damaged); refusing to read it"
    )


def _check_chunks(reader: ChunkReader, layout: ArrayLayout) -> None:
    store = reader.store
    n = layout.n_chunks
    for k in sorted({0, n - 1}):
        key = layout.chunk_key(k)
        try:
            size = store.size(key)
        except StoreNotFoundError:
            raise _lie(layout, store.url, f"chunk {k} ({key}) does not exist") from None
        if layout.codec.raw:
            if size != layout.stored_chunk_nbytes:
                raise _lie(layout, store.url, f"chunk {k} ({key}) holds {size} bytes, not "
                                              f"{layout.stored_chunk_nbytes}")
        elif k == 0:
            _check_decoded(reader, layout, key, ByteRange(0, size))


def _check_shards(reader: ChunkReader, layout: ArrayLayout) -> None:
    store = reader.store
    last = layout.n_shards - 1
    for s in sorted({0, last}):
        try:
            index = reader.shard_index(layout, s)  # crc-checked, inside the object
        except CorruptChunkError as e:  # missing, short, or an index of another length
            raise _lie(layout, store.url, f"shard {s} does not match it ({e})") from None
        need = layout.chunks_in_shard(s)
        written = index[:need, 0] != np.uint64(EMPTY)
        if not written.all():
            raise _lie(layout, store.url, f"shard {s} ({layout.shard_key(s)}) holds "
                                          f"{int(written.sum())} of the {need} chunks counted")
        sizes = index[:need, 1]
        if layout.codec.raw:
            bad = sizes != np.uint64(layout.stored_chunk_nbytes)
            if bad.any():
                raise _lie(layout, store.url, f"shard {s} holds chunks of {int(sizes[bad][0])} "
                                              f"bytes, not {layout.stored_chunk_nbytes}")
        elif s == 0:
            off, nbytes = (int(x) for x in index[0])
            _check_decoded(reader, layout, layout.shard_key(0), ByteRange(off, off + nbytes))


def _check_decoded(reader: ChunkReader, layout: ArrayLayout, key: str, span: ByteRange) -> None:
    """The compressed chunk stored at ``span`` of ``key`` must decode to one chunk's bytes."""
    codec = layout.codec
    stored = span.length
    payload = stored - (CRC_BYTES if codec.checksum else 0)
    if payload <= 0:
        raise _lie(layout, reader.store.url, f"its first chunk ({key}) holds {stored} bytes")
    head = ByteRange(span.start, span.start + min(stored, codec.HEAD_BYTES))
    tail = ByteRange(max(span.start, span.end - codec.TAIL_BYTES), span.end)
    got: list[Any] = reader.store.get_ranges(key, [head, tail])
    size = codec.decoded_size(got[0], got[1], stored)
    want = layout.chunk_nbytes
    if size is not None and (size != want if codec.compressor == "zstd"
                             else size != want % (1 << 32)):
        raise _lie(layout, reader.store.url, f"its first chunk ({key}) decodes to {size} "
                                             f"bytes, not {want}")
    if want > codec.max_ratio * payload + 1024:  # what a frame that does not say could hold
        raise _lie(layout, reader.store.url, f"its first chunk ({key}) holds {stored} bytes, "
                                             f"too few to decode to {want}")
