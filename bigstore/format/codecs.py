"""The chunk codec chains bigstore writes and reads: ``bytes`` [+ zstd | gzip] [+ ``crc32c``].

Compression is numcodecs' (the same implementation zarr's ZstdCodec/GzipCodec call), so chunks
are byte-identical to what zarr-python would write. The crc32c is the Zarr v3 ``crc32c`` codec:
4 little-endian bytes appended to the encoded chunk. bigstore always writes it; a chain without
it is read (arrays bigstore did not write, e.g. a safetensors file seen as a store) but then
nothing can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import crc32c as _crc32c
import numpy as np

from ..errors import ChecksumError, TruncatedChunkError, UnsupportedCodecError

__all__ = ["ChunkCodec", "crc32c_of", "parse_codec"]

CRC_BYTES = 4
_COMPRESSORS = ("zstd", "gzip")
_DEFAULT_LEVEL = {"zstd": 3, "gzip": 5}


def crc32c_of(parts: Sequence[Any]) -> int:
    """crc32c over several buffers, as if they were concatenated."""
    value = 0
    for p in parts:
        value = _crc32c.crc32c(p, value=value)
    return int(value)


def parse_codec(spec: str | None) -> ChunkCodec:
    """``None`` | ``"zstd"`` | ``"zstd:7"`` | ``"gzip"`` | ``"gzip:9"``."""
    if spec is None or spec in ("", "none", "raw"):
        return ChunkCodec(None, 0)
    name, _, level = spec.partition(":")
    if name not in _COMPRESSORS:
        raise UnsupportedCodecError(
            f"unknown codec {spec!r}; choose one of: None, " + ", ".join(_COMPRESSORS)
        )
    try:
        lvl = int(level) if level else _DEFAULT_LEVEL[name]
    except ValueError:
        raise UnsupportedCodecError(f"codec level in {spec!r} is not an integer") from None
    return ChunkCodec(name, lvl)


@dataclass(frozen=True)
class ChunkCodec:
    """How one chunk's raw bytes become a stored object, and back."""

    compressor: str | None  # None: raw bytes (memory-mappable, read with zero copies)
    level: int = 0
    checksum: bool = True  # a crc32c follows the encoded bytes

    @property
    def raw(self) -> bool:
        return self.compressor is None

    @property
    def spec(self) -> str | None:
        return None if self.compressor is None else f"{self.compressor}:{self.level}"

    # -- zarr metadata ------------------------------------------------------------------------
    def zarr_codecs(self) -> list[Any]:
        from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

        chain: list[Any] = [BytesCodec(endian="little")]
        if self.compressor == "zstd":
            chain.append(ZstdCodec(level=self.level, checksum=False))
        elif self.compressor == "gzip":
            chain.append(GzipCodec(level=self.level))
        if self.checksum:
            chain.append(Crc32cCodec())
        return chain

    @classmethod
    def from_zarr(cls, codecs: Sequence[Any], where: str) -> ChunkCodec:
        """Recognise a chain bigstore can read fast; anything else is refused by name."""
        from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

        names = [type(c).__name__ for c in codecs]
        checksum = bool(codecs) and isinstance(codecs[-1], Crc32cCodec)
        body = list(codecs[:-1] if checksum else codecs)
        ok = (
            len(body) in (1, 2)
            and isinstance(body[0], BytesCodec)
            and (body[0].endian is None or body[0].endian.value == "little")
        )
        if ok and len(body) == 1:
            return cls(None, 0, checksum)
        if ok and isinstance(body[1], ZstdCodec) and not body[1].checksum:
            return cls("zstd", body[1].level, checksum)
        if ok and isinstance(body[1], GzipCodec):
            return cls("gzip", body[1].level, checksum)
        raise UnsupportedCodecError(
            f"{where}: codec chain {names} is not one bigstore reads "
            "(bytes[little] [+ zstd|gzip] [+ crc32c])"
        )

    # -- bytes --------------------------------------------------------------------------------
    def _numcodec(self) -> Any:
        if self.compressor == "zstd":
            from numcodecs import Zstd

            return Zstd(level=self.level)
        from numcodecs import GZip

        return GZip(level=self.level)

    def encode(self, raw: memoryview) -> list[Any]:
        """The stored object as buffers to write back to back (no copy when uncompressed)."""
        payload: Any = raw if self.raw else self._numcodec().encode(raw)
        if not self.checksum:
            return [payload]
        crc = np.array([crc32c_of([payload])], dtype="<u4")
        return [payload, crc.tobytes()]

    # -- what a stored chunk can decode to (checked before anything is allocated for it) -----
    #: bytes of a chunk's start and end that :meth:`decoded_size` looks at
    HEAD_BYTES = 18  # a zstd frame header at its longest
    TAIL_BYTES = 8  # gzip's ISIZE, then the crc32c

    @property
    def max_ratio(self) -> int:
        """The most a chunk can shrink: measured on zeros, zstd (any level) reaches 32,700x on
        256 MiB (1 RLE block of 128 KiB in 4 bytes), gzip 1,029x (deflate's ceiling)."""
        return {None: 1, "zstd": 32_768, "gzip": 1_032}[self.compressor]

    def decoded_size(self, head: Any, tail: Any, stored: int) -> int | None:
        """The size a stored chunk of ``stored`` bytes decodes to, read from its frame (zstd's
        content size; gzip's ISIZE, modulo 2**32), or None when the frame does not say."""
        if self.raw:
            return stored - (CRC_BYTES if self.checksum else 0)
        h = bytes(memoryview(head).cast("B"))
        if self.compressor == "zstd":
            return _zstd_content_size(h)
        t = bytes(memoryview(tail).cast("B"))
        if self.checksum:
            t = t[:-CRC_BYTES]
        if len(t) < 4 or h[:2] != b"\x1f\x8b":
            return None
        return int.from_bytes(t[-4:], "little")

    def decode_into(self, blob: Any, out: memoryview, *, verify: bool, where: str) -> None:
        """Check and decode one stored object into ``out`` (exactly one full chunk of bytes)."""
        view = memoryview(blob).cast("B")
        payload = view
        if self.checksum:
            if view.nbytes < CRC_BYTES:
                raise TruncatedChunkError(
                    f"{where}: {view.nbytes} bytes, too short to hold a chunk"
                )
            payload = view[: view.nbytes - CRC_BYTES]
            if verify:
                check_crc([payload], view[view.nbytes - CRC_BYTES :], where)
        if self.raw:
            if payload.nbytes != out.nbytes:
                raise TruncatedChunkError(
                    f"{where}: {payload.nbytes} data bytes, expected {out.nbytes}"
                )
            out.cast("B")[:] = payload
            return
        try:
            decoded = self._numcodec().decode(payload)
        except Exception as e:  # the compressor's own error types vary by library
            raise ChecksumError(f"{where}: cannot decompress ({e})") from e
        dv = memoryview(decoded).cast("B")
        if dv.nbytes != out.nbytes:
            raise TruncatedChunkError(
                f"{where}: decodes to {dv.nbytes} bytes, expected {out.nbytes}"
            )
        out.cast("B")[:] = dv


def _zstd_content_size(h: bytes) -> int | None:
    """The frame content size in a zstd frame header (RFC 8878, 3.1.1.1), or None."""
    if len(h) < 6 or h[:4] != b"\x28\xb5\x2f\xfd":
        return None
    fhd = h[4]
    single = (fhd >> 5) & 1
    fcs_len = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]
    if fcs_len == 0 or len(h) < pos + fcs_len:
        return None
    value = int.from_bytes(h[pos : pos + fcs_len], "little")
    return value + 256 if fcs_len == 2 else value


def check_crc(parts: Sequence[Any], stored: Any, where: str) -> None:
    expected = int(np.frombuffer(stored, dtype="<u4", count=1)[0])
    actual = crc32c_of(parts)
    if actual != expected:
        raise ChecksumError(
            f"{where}: checksum mismatch (stored crc32c {expected:#010x}, computed {actual:#010x})"
        )
