"""Lossless compression of float weights: Blosc(zstd, byte-shuffle), chosen per chunk.

The chain is Zarr v3's own ``blosc`` codec (numcodecs' c-blosc underneath), so zarr-python and
every other Zarr v3 reader decode the chunks on their own::

    bytes[little] -> blosc{cname: zstd, clevel: 1, shuffle: shuffle, typesize, blocksize: 1 MiB}
                  -> crc32c

Why this chain (measured by ``benchmarks/bench_codecs.py``, see NOTES.md): byte-shuffling puts
the exponent bytes of every value apart from the near-random mantissa bytes, so zstd's Huffman
stage codes the exponents near their entropy. zstd level 1 (blosc ``clevel=1``) beats higher
levels on both ratio and decode speed here: on near-random mantissas higher levels find false
matches that cost bits and decode time. Blocks of 1 MiB amortise zstd's per-block tables (the
automatic block size at level 1 is far smaller and loses ~2 points of ratio).

The parameters and their defaults are :class:`bigstore.config.LosslessConfig`.

Per chunk, when compression saves less than ``min_saving`` of the raw bytes, the chunk is stored
as a Blosc *memcpy frame* instead (``clevel=0``: a 16-byte header followed by the raw bytes).
That is still a valid frame of the same ``blosc`` codec (Blosc frames are self-describing), so
the array keeps one codec chain, and a reader may copy -- or map -- the raw bytes straight from
offset 16 (:func:`raw_payload`) without running the decompressor.

The crc32c of the chain is the chunk reader's business (``format.codecs``): :func:`encode` and
:func:`decode` see only the Blosc payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numcodecs import blosc as _blosc

from ..config import LosslessConfig
from ..errors import CorruptChunkError, TruncatedChunkError, UnsupportedCodecError

__all__ = [
    "HEADER_BYTES", "FrameInfo", "blosc_codec", "decode", "encode", "frame_info", "raw_payload",
]

HEADER_BYTES = 16  # the Blosc 1 frame header
_MEMCPYED = 0x02  # header flag: the payload after the header is the raw bytes
_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}
_MAX_CHUNK = int(_blosc.MAX_BUFFERSIZE)  # a Blosc frame holds at most ~2 GiB
_DEFAULT = LosslessConfig()


@dataclass(frozen=True)
class FrameInfo:
    """What a Blosc frame's 16-byte header says."""

    nbytes: int  # decoded size
    cbytes: int  # frame size, header included
    typesize: int
    blocksize: int
    memcpyed: bool  # payload after the header is the raw bytes


def blosc_codec(itemsize: int, config: LosslessConfig = _DEFAULT) -> Any:
    """zarr's ``BloscCodec`` for an array of ``itemsize``-byte values (its document entry)."""
    from zarr.codecs import BloscCodec, BloscShuffle

    return BloscCodec(typesize=itemsize, cname="zstd", clevel=config.clevel,
                      shuffle=BloscShuffle(config.shuffle), blocksize=config.blocksize)


def _as_items(raw: Any, itemsize: int, where: str) -> np.ndarray[Any, Any]:
    """The raw bytes viewed as unsigned ints of ``itemsize`` (Blosc takes typesize from it)."""
    if itemsize not in (1, 2, 4, 8):
        raise UnsupportedCodecError(f"{where}: itemsize must be 1, 2, 4 or 8, got {itemsize}")
    b = np.frombuffer(memoryview(raw).cast("B"), np.uint8)
    if b.size % itemsize:
        raise TruncatedChunkError(
            f"{where}: {b.size} bytes is not a whole number of {itemsize}-byte values"
        )
    if b.size > _MAX_CHUNK:
        raise UnsupportedCodecError(
            f"{where}: {b.size} bytes exceeds Blosc's {_MAX_CHUNK}-byte frame limit; "
            "use smaller chunks"
        )
    return b.view(f"<u{itemsize}")


def encode(raw: Any, itemsize: int, *, clevel: int = LosslessConfig.clevel,
           blocksize: int = LosslessConfig.blocksize, min_saving: float = LosslessConfig.min_saving,
           shuffle: str = LosslessConfig.shuffle, where: str = "chunk") -> bytes:
    """One chunk's raw little-endian bytes -> one Blosc frame.

    Compressed with zstd after the shuffle when that saves at least ``min_saving`` of the bytes,
    else a memcpy frame (header + the raw bytes). Deterministic: the same input and parameters
    always give the same frame (Blosc blocks are compressed independently, whatever the thread
    count).
    """
    items = _as_items(raw, itemsize, where)
    sh = _SHUFFLES[shuffle]
    frame = bytes(_blosc.compress(items, b"zstd", clevel, sh, blocksize, typesize=itemsize))
    if len(frame) - HEADER_BYTES > (1.0 - min_saving) * items.nbytes:
        frame = bytes(_blosc.compress(items, b"zstd", 0, sh, blocksize, typesize=itemsize))
    return frame


def frame_info(stored: Any, *, where: str = "chunk") -> FrameInfo:
    """Parse a Blosc frame's header (the format is c-blosc's documented 16-byte header)."""
    view = memoryview(stored).cast("B")
    if view.nbytes < HEADER_BYTES:
        raise TruncatedChunkError(f"{where}: {view.nbytes} bytes, too short for a Blosc frame")
    version, flags, typesize = view[0], view[2], view[3]
    nbytes, blocksize, cbytes = np.frombuffer(view[4:HEADER_BYTES], "<u4").tolist()
    if version not in (1, 2) or typesize == 0:
        raise CorruptChunkError(f"{where}: not a Blosc frame (header {bytes(view[:4]).hex()})")
    if cbytes != view.nbytes:
        raise TruncatedChunkError(
            f"{where}: Blosc frame of {view.nbytes} bytes, its header says {cbytes}"
        )
    return FrameInfo(nbytes=nbytes, cbytes=cbytes, typesize=typesize, blocksize=blocksize,
                     memcpyed=bool(flags & _MEMCPYED))


def raw_payload(stored: Any, *, where: str = "chunk") -> memoryview | None:
    """The raw bytes of a memcpy frame as a view into ``stored`` (no copy), else None.

    Lets a reader copy (or map) a chunk that was stored raw without calling the decompressor.
    """
    info = frame_info(stored, where=where)
    if not info.memcpyed:
        return None
    view = memoryview(stored).cast("B")[HEADER_BYTES:]
    if view.nbytes != info.nbytes:
        raise TruncatedChunkError(
            f"{where}: memcpy frame holds {view.nbytes} bytes, its header says {info.nbytes}"
        )
    return view


def decode(stored: Any, out: Any, *, where: str = "chunk") -> None:
    """Decode one Blosc frame into ``out`` (a writable buffer of exactly the decoded size).

    Blosc writes straight into ``out``: no intermediate buffer, no copy after. Memcpy frames are
    one copy. Raises ``TruncatedChunkError`` on a size mismatch and ``CorruptChunkError`` when the
    frame does not decode (the chunk's crc32c, checked before, catches most damage first).
    """
    info = frame_info(stored, where=where)
    dst = memoryview(out).cast("B")
    if dst.readonly:
        raise CorruptChunkError(f"{where}: the output buffer is read-only")
    if info.nbytes != dst.nbytes:
        raise TruncatedChunkError(
            f"{where}: decodes to {info.nbytes} bytes, expected {dst.nbytes}"
        )
    raw = raw_payload(stored, where=where) if info.memcpyed else None
    if raw is not None:
        dst[:] = raw
        return
    try:
        _blosc.decompress(stored, dst)
    except Exception as e:  # numcodecs raises RuntimeError/ValueError for bad frames
        raise CorruptChunkError(f"{where}: cannot decompress Blosc frame ({e})") from e
