"""The chunk codec chains bigstore writes and reads:
``bytes`` [+ blosc | zstd | gzip] [+ ``crc32c``].

Compression is numcodecs' (the same implementation zarr's BloscCodec/ZstdCodec/GzipCodec call),
so zarr-python decodes every chunk on its own. ``blosc`` is the lossless chain of
:mod:`bigstore.format.lossless` (zstd after a byte shuffle of ``typesize``-byte values), chosen
per chunk: a chunk that does not compress is a Blosc memcpy frame of the same codec. The crc32c
is the Zarr v3 ``crc32c`` codec: 4 little-endian bytes appended to the encoded chunk. bigstore
always writes it; a chain without it is read (arrays bigstore did not write, e.g. a safetensors
file seen as a store) but then nothing can be checked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import crc32c as _crc32c
import numpy as np

from ..config import LosslessConfig
from ..errors import ChecksumError, TruncatedChunkError, UnsupportedCodecError
from . import lossless

__all__ = ["ChunkCodec", "crc32c_of", "parse_codec"]

CRC_BYTES = 4
_COMPRESSORS = ("lossless", "zstd", "gzip")
_DEFAULT_LEVEL = {"zstd": 3, "gzip": 5}


def crc32c_of(parts: Sequence[Any]) -> int:
    """crc32c over several buffers, as if they were concatenated."""
    value = 0
    for p in parts:
        value = _crc32c.crc32c(p, value=value)
    return int(value)


def parse_codec(spec: str | None) -> ChunkCodec:
    """``None`` | ``"none"`` | ``"lossless"`` | ``"lossless:3"`` | ``"zstd"`` | ``"zstd:7"`` |
    ``"gzip"`` | ``"gzip:9"`` (names are case-insensitive; lossless levels 1-9, zstd 1-22,
    gzip 0-9). ``lossless`` takes its other parameters from :class:`LosslessConfig`."""
    # the level ranges the libraries accept for the chains bigstore writes
    levels = {"lossless": (1, 9), "zstd": (1, 22), "gzip": (0, 9)}
    if spec is not None and not isinstance(spec, str):
        raise UnsupportedCodecError(f"a codec is a string like 'lossless' or 'zstd:3': {spec!r}")
    text = "" if spec is None else spec.strip()
    if text.lower() in ("", "none", "raw"):
        return ChunkCodec(None, 0)
    name, sep, level = text.partition(":")
    name = name.strip().lower()
    if name not in _COMPRESSORS:
        raise UnsupportedCodecError(
            f"unknown codec {spec!r}; choose one of: none, " + ", ".join(_COMPRESSORS)
        )
    lo, hi = levels[name]
    if sep and not level.strip():
        raise UnsupportedCodecError(f"codec {spec!r} names no level after ':' ({lo}-{hi})")
    try:
        lvl = int(level) if sep else None
    except ValueError:
        raise UnsupportedCodecError(
            f"codec level in {spec!r} is not an integer ({name} levels are {lo}-{hi})"
        ) from None
    if lvl is not None and not lo <= lvl <= hi:
        raise UnsupportedCodecError(
            f"codec level {lvl} in {spec!r} is out of range: {name} levels are {lo}-{hi}"
        )
    if name == "lossless":
        return ChunkCodec.lossless(LosslessConfig() if lvl is None else LosslessConfig(clevel=lvl))
    return ChunkCodec(name, _DEFAULT_LEVEL[name] if lvl is None else lvl)


@dataclass(frozen=True)
class ChunkCodec:
    """How one chunk's raw bytes become a stored object, and back."""

    compressor: str | None  # None: raw bytes (memory-mappable, read with zero copies)
    level: int = 0
    checksum: bool = True  # a crc32c follows the encoded bytes
    # "blosc" only: the width of the values its shuffle groups (0 until bound to an array, see
    # bind), bytes per block, the shuffle; min_saving is the writer's raw-or-compressed rule
    # per chunk (not part of the array document, so not part of equality)
    typesize: int = 0
    blocksize: int = 0
    shuffle: str = "shuffle"
    min_saving: float = field(default=0.0, compare=False)

    @classmethod
    def lossless(cls, config: LosslessConfig) -> ChunkCodec:
        """The lossless chain (``bind`` it to an array's value width before use)."""
        return cls("blosc", config.clevel, True, 0, config.blocksize, config.shuffle,
                   config.min_saving)

    @property
    def raw(self) -> bool:
        return self.compressor is None

    @property
    def spec(self) -> str | None:
        if self.compressor == "blosc":
            return f"lossless:{self.level}"
        return None if self.compressor is None else f"{self.compressor}:{self.level}"

    def bind(self, itemsize: int) -> ChunkCodec:
        """This codec for an array of ``itemsize``-byte values (Blosc shuffles by value width:
        complex128 is shuffled as its two float64 halves)."""
        if self.compressor != "blosc":
            return self
        width = itemsize if itemsize in (1, 2, 4, 8) else 8 if itemsize % 8 == 0 else 1
        return replace(self, typesize=width)

    def _lossless_config(self) -> LosslessConfig:
        return LosslessConfig(clevel=max(1, self.level), blocksize=self.blocksize,
                              min_saving=self.min_saving, shuffle=self.shuffle)

    # -- zarr metadata ------------------------------------------------------------------------
    def zarr_codecs(self) -> list[Any]:
        from zarr.codecs import BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

        chain: list[Any] = [BytesCodec(endian="little")]
        if self.compressor == "blosc":
            if not self.typesize:
                raise UnsupportedCodecError("the lossless codec is not bound to a value width")
            chain.append(lossless.blosc_codec(self.typesize, self._lossless_config()))
        elif self.compressor == "zstd":
            chain.append(ZstdCodec(level=self.level, checksum=False))
        elif self.compressor == "gzip":
            chain.append(GzipCodec(level=self.level))
        if self.checksum:
            chain.append(Crc32cCodec())
        return chain

    @classmethod
    def from_zarr(cls, codecs: Sequence[Any], where: str) -> ChunkCodec:
        """Recognise a chain bigstore can read fast; anything else is refused by name."""
        from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ZstdCodec

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
        if ok and isinstance(body[1], BloscCodec):
            # any cname decodes: a Blosc frame names its own compressor
            b = body[1]
            shuffle = b.shuffle.value if b.shuffle is not None else "noshuffle"
            return cls("blosc", int(b.clevel), checksum, int(b.typesize or 1),
                       int(b.blocksize), shuffle)
        raise UnsupportedCodecError(
            f"{where}: codec chain {names} is not one bigstore reads "
            "(bytes[little] [+ blosc|zstd|gzip] [+ crc32c])"
        )

    # -- bytes --------------------------------------------------------------------------------
    def _numcodec(self) -> Any:
        if self.compressor == "zstd":
            from numcodecs import Zstd

            return Zstd(level=self.level)
        from numcodecs import GZip

        return GZip(level=self.level)

    def encode(self, raw: memoryview, *, where: str = "chunk") -> list[Any]:
        """The stored object as buffers to write back to back (no copy when uncompressed)."""
        payload: Any
        if self.raw:
            payload = raw
        elif self.compressor == "blosc":
            if not self.typesize:
                raise UnsupportedCodecError(f"{where}: the lossless codec is not bound")
            payload = lossless.encode(raw, self.typesize, clevel=self.level,
                                      blocksize=self.blocksize, min_saving=self.min_saving,
                                      shuffle=self.shuffle, where=where)
        else:
            payload = self._numcodec().encode(raw)
        if not self.checksum:
            return [payload]
        crc = np.array([crc32c_of([payload])], dtype="<u4")
        return [payload, crc.tobytes()]

    # -- what a stored chunk can decode to (checked before anything is allocated for it) -----
    #: bytes of a chunk's start and end that :meth:`decoded_size` looks at
    HEAD_BYTES = 18  # a zstd frame header at its longest (a blosc header is 16)
    TAIL_BYTES = 8  # gzip's ISIZE, then the crc32c

    @property
    def max_ratio(self) -> int:
        """The most a chunk can shrink: measured on zeros, zstd (any level) reaches 32,700x on
        256 MiB (1 RLE block of 128 KiB in 4 bytes), gzip 1,029x (deflate's ceiling); a blosc
        frame states its size in its header, so its bound is only a backstop."""
        return {None: 1, "zstd": 32_768, "gzip": 1_032, "blosc": 1 << 20}[self.compressor]

    def decoded_size(self, head: Any, tail: Any, stored: int) -> int | None:
        """The size a stored chunk of ``stored`` bytes decodes to, read from its frame (zstd's
        content size; gzip's ISIZE, modulo 2**32; blosc's header), or None when it does not
        say."""
        if self.raw:
            return stored - (CRC_BYTES if self.checksum else 0)
        h = bytes(memoryview(head).cast("B"))
        if self.compressor == "zstd":
            return _zstd_content_size(h)
        if self.compressor == "blosc":  # version, versionlz, flags, typesize, then nbytes
            return int.from_bytes(h[4:8], "little") if len(h) >= 8 else None
        t = bytes(memoryview(tail).cast("B"))
        if self.checksum:
            t = t[:-CRC_BYTES]
        if len(t) < 4 or h[:2] != b"\x1f\x8b":
            return None
        return int.from_bytes(t[-4:], "little")

    def _payload(self, blob: Any, *, verify: bool, where: str) -> memoryview:
        """The encoded bytes of a stored object, its crc32c checked when ``verify``."""
        view = memoryview(blob).cast("B")
        if not self.checksum:
            return view
        if view.nbytes < CRC_BYTES:
            raise TruncatedChunkError(f"{where}: {view.nbytes} bytes, too short to hold a chunk")
        payload = view[: view.nbytes - CRC_BYTES]
        if verify:
            check_crc([payload], view[view.nbytes - CRC_BYTES :], where)
        return payload

    def decode_range_into(self, blob: Any, out: memoryview, start: int, chunk_nbytes: int, *,
                          verify: bool, where: str) -> None:
        """Bytes [start, start + len(out)) of a chunk of ``chunk_nbytes`` decoded bytes.

        A Blosc memcpy frame is copied from straight (no decoder, no scratch); anything else
        is decoded whole into scratch first (decoders write whole chunks)."""
        if self.compressor == "blosc":
            payload = self._payload(blob, verify=verify, where=where)
            raw = lossless.raw_payload(payload, where=where)
            if raw is not None:
                if raw.nbytes != chunk_nbytes:
                    raise TruncatedChunkError(
                        f"{where}: holds {raw.nbytes} bytes, expected {chunk_nbytes}"
                    )
                out.cast("B")[:] = raw[start : start + out.nbytes]
                return
            full = memoryview(np.empty(chunk_nbytes, np.uint8))
            lossless.decode(payload, full, where=where)
            out.cast("B")[:] = full[start : start + out.nbytes]
            return
        full = memoryview(np.empty(chunk_nbytes, np.uint8))
        self.decode_into(blob, full, verify=verify, where=where)
        out.cast("B")[:] = full[start : start + out.nbytes]

    def decode_into(self, blob: Any, out: memoryview, *, verify: bool, where: str) -> None:
        """Check and decode one stored object into ``out`` (exactly one full chunk of bytes).
        Blosc decodes straight into ``out``."""
        payload = self._payload(blob, verify=verify, where=where)
        if self.compressor == "blosc":
            lossless.decode(payload, out, where=where)
            return
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
