"""Before anything is allocated for an array: can its stored objects hold what its document says?

A document edited (or damaged) to claim 10**12 rows would otherwise make a load allocate
terabytes, and a loader size its chunk slots for chunks that do not exist. The check is cheap
(a ``stat``/HEAD or two per array, plus a few bytes of one chunk for compressed arrays) and
bounds every allocation by the bytes really stored. For the chunks at both ends of what is
about to be read (the first and last chunk of the array, or of a slice):

- the chunk's object (or shard) exists: the chunk count is real;
- an uncompressed chunk is exactly its stored size (in shards: the index entry of every chunk of
  that shard): rows per chunk and row size are real;
- a compressed chunk's frame says how big it decodes (zstd's content size, gzip's ISIZE), and
  that must be a chunk's size; when the frame does not say, the chunk may claim at most the
  codec's ceiling ratio (zstd 32,768x, gzip 1,032x) of its stored bytes;
- a shard's index (checked by its crc32c) holds every chunk the document counts in it.

Otherwise a CorruptChunkError (missing) or TruncatedChunkError (sizes) names the array, the
chunk and what the document claims; the document's own sanity (sizes within int64) was checked
when it was parsed (:meth:`~bigstore.format.ArrayLayout.check_sane`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptChunkError, StoreNotFoundError, TruncatedChunkError
from ..format import EMPTY, ArrayLayout, QuantizedLayout
from ..format.codecs import CRC_BYTES
from ..store import ByteRange

if TYPE_CHECKING:
    from .reader import ChunkReader

__all__ = ["check_backed", "end_chunks"]


def end_chunks(layout: ArrayLayout, rows: tuple[int, int] | None = None) -> set[int]:
    """The chunks at both ends of rows [start, stop) (all rows when None); empty when none."""
    start, stop = (0, layout.rows) if rows is None else rows
    if layout.n_chunks == 0 or stop <= start:
        return set()
    if not layout.shape:
        return {0}
    return {start // layout.chunk_rows, (stop - 1) // layout.chunk_rows}


def check_backed(reader: ChunkReader, layout: ArrayLayout, chunk: int) -> None:
    """Raise unless chunk ``chunk`` of ``layout`` is stored as its document says."""
    if isinstance(layout, QuantizedLayout):  # chunk k of the tensor is chunk k of every part
        for _, part in layout.parts:
            check_backed(reader, part, chunk)
        return
    if chunk >= layout.n_chunks:
        raise _unbacked(layout, reader.store.url, chunk, "is past the array's last chunk",
                        CorruptChunkError)
    if layout.sharded:
        _check_shard(reader, layout, chunk // layout.chunks_per_shard)
    else:
        _check_chunk(reader, layout, chunk)


def _unbacked(layout: ArrayLayout, url: str, k: int, what: str,
              cls: type[CorruptChunkError]) -> CorruptChunkError:
    return cls(
        f"{layout.where(k, url)}: {what}; its document claims shape {layout.shape} in chunks "
        f"of {layout.chunk_rows} rows, which the stored objects cannot hold (damaged, or the "
        "document was edited): refusing to read before allocating for it"
    )


def _check_chunk(reader: ChunkReader, layout: ArrayLayout, k: int) -> None:
    store = reader.store
    key = layout.chunk_key(k)
    try:
        size = store.size(key)
    except StoreNotFoundError:
        raise _unbacked(layout, store.url, k, "chunk is missing", CorruptChunkError) from None
    if layout.codec.raw:
        if size != layout.stored_chunk_nbytes:
            raise _unbacked(layout, store.url, k, f"{size} bytes stored, expected "
                            f"{layout.stored_chunk_nbytes}", TruncatedChunkError)
    else:
        _check_decoded(reader, layout, k, key, ByteRange(0, size))


def _check_shard(reader: ChunkReader, layout: ArrayLayout, s: int) -> None:
    store = reader.store
    first = s * layout.chunks_per_shard
    try:
        index = reader.shard_index(layout, s)  # crc-checked and inside the object
    except CorruptChunkError as e:  # missing, short, or an index of another length
        what = "its shard is missing" if "missing" in str(e) else f"its shard: {e}"
        raise _unbacked(layout, store.url, first, what, type(e)) from None
    need = layout.chunks_in_shard(s)
    written = index[:need, 0] != np.uint64(EMPTY)
    if not written.all():
        k = first + int(np.flatnonzero(~written)[0])
        raise _unbacked(layout, store.url, k, "the shard index has no such chunk",
                        CorruptChunkError)
    sizes = index[:need, 1]
    if layout.codec.raw:
        bad = np.flatnonzero(sizes != np.uint64(layout.stored_chunk_nbytes))
        if len(bad):
            raise _unbacked(layout, store.url, first + int(bad[0]),
                            f"{int(sizes[bad[0]])} bytes stored, expected "
                            f"{layout.stored_chunk_nbytes}", TruncatedChunkError)
    else:
        off, nbytes = (int(x) for x in index[0])
        _check_decoded(reader, layout, first, layout.shard_key(s), ByteRange(off, off + nbytes))


def _check_decoded(reader: ChunkReader, layout: ArrayLayout, k: int, key: str,
                   span: ByteRange) -> None:
    """The compressed chunk stored at ``span`` of ``key`` must decode to one chunk's bytes."""
    codec = layout.codec
    url = reader.store.url
    stored = span.length
    payload = stored - (CRC_BYTES if codec.checksum else 0)
    if payload <= 0:
        raise _unbacked(layout, url, k, f"{stored} bytes stored", TruncatedChunkError)
    head = ByteRange(span.start, span.start + min(stored, codec.HEAD_BYTES))
    tail = ByteRange(max(span.start, span.end - codec.TAIL_BYTES), span.end)
    got: list[Any] = reader.store.get_ranges(key, [head, tail])
    size = codec.decoded_size(got[0], got[1], stored)
    want = layout.chunk_nbytes
    if size is not None and size != (want if codec.compressor == "zstd" else want % (1 << 32)):
        raise _unbacked(layout, url, k, f"decodes to {size} bytes, expected {want}",
                        TruncatedChunkError)
    if want > codec.max_ratio * payload + 1024:  # what a frame that does not say could hold
        raise _unbacked(layout, url, k, f"{stored} bytes stored, too few to decode to {want}",
                        TruncatedChunkError)
