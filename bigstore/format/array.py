"""One array layout for tensors and dataset columns alike: a Zarr v3 array chunked along axis 0.

An :class:`ArrayLayout` is everything a reader needs to find and decode any chunk: shape, dtype,
rows per chunk, the chunk codec, and whether chunks are stored one object each (tensors) or
``chunks_per_shard`` to a shard object (dataset columns; zarr's ``sharding_indexed`` codec with
the index at the end). Its Zarr v3 document is built and parsed by zarr-python itself.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass, replace
from typing import Any

from ..errors import InvalidKeyError, MetadataError, NotAStoreError, UnsupportedCodecError
from .codecs import CRC_BYTES, ChunkCodec
from .dtypes import DTypeSpec, dtype_spec

__all__ = ["ArrayLayout", "check_name", "choose_chunk_rows", "parse_array_doc"]

PAGE = mmap.PAGESIZE
INDEX_ENTRY = 16  # a shard index entry: (offset, nbytes) as two little-endian uint64
# Longest node name: one path component on common file systems is at most 255 bytes, and the
# writer's temporary files add a prefix and suffix to it.
MAX_NAME_BYTES = 200
# Sanity bounds of a document (see ArrayLayout.check_sane): past int64 with room for products,
# and chunk counts no listing of real objects reaches
MAX_BYTES = 1 << 62
MAX_CHUNKS = 1 << 32
MAX_DIMS = 32


def check_name(name: str, what: str = "tensor") -> str:
    """Tensor and column names become one Zarr node name each: dots are fine, slashes are not."""
    if not isinstance(name, str) or not name:
        raise InvalidKeyError(f"{what} names must be non-empty strings, got {name!r}")
    bad = any(c in name for c in "/\\\x00") or name in (".", "..") or name.startswith("__")
    if bad:
        raise InvalidKeyError(
            f"invalid {what} name {name!r}: no '/', '\\', NUL, '.', '..' or leading '__'"
        )
    if name == "zarr.json":
        raise InvalidKeyError("'zarr.json' is reserved for the store's own metadata")
    if len(name.encode()) > MAX_NAME_BYTES:
        raise InvalidKeyError(
            f"{what} name {name[:40]!r}... is {len(name.encode())} bytes long; file systems "
            f"limit a name to 255 bytes and bigstore to {MAX_NAME_BYTES}"
        )
    return name


def parse_array_doc(doc: dict[str, Any], where: str) -> tuple[Any, DTypeSpec]:
    """One array document, validated by zarr-python, and its logical dtype."""
    from zarr.core.metadata.v3 import ArrayV3Metadata

    try:
        md = ArrayV3Metadata.from_dict(dict(doc))
    except Exception as e:  # zarr raises several types for malformed metadata
        raise NotAStoreError(f"{where}: invalid Zarr v3 array metadata ({e})") from e
    attrs = md.attributes.get("bigstore", {}) if isinstance(md.attributes, dict) else {}
    storage = md.data_type.to_native_dtype()
    logical = attrs.get("dtype") if isinstance(attrs, dict) else None
    try:
        spec = dtype_spec(logical or storage.name)
    except Exception as e:
        raise NotAStoreError(f"{where}: {e}") from None
    if spec.storage.itemsize != storage.itemsize:
        raise NotAStoreError(
            f"{where}: logical dtype {spec.name} does not match stored {storage.name}"
        )
    return md, spec


def choose_chunk_rows(shape: tuple[int, ...], itemsize: int, chunk_bytes: int) -> int:
    """Rows per chunk along axis 0: as few chunks as ``chunk_bytes`` allows, evenly sized.

    Evenly sized chunks keep the zero-padding of the last chunk (Zarr pads edge chunks) below
    one row per chunk.
    """
    if not shape:
        return 1
    rows = shape[0]
    row_bytes = itemsize * math.prod(shape[1:])
    if rows == 0 or row_bytes == 0:
        return max(1, rows)
    n_chunks = max(1, math.ceil(rows * row_bytes / chunk_bytes))
    chunk_rows = max(1, math.ceil(rows / n_chunks))
    if chunk_rows < rows:
        # Several chunks: make each a whole number of pages, so that the chunk files can be
        # mapped back to back into one contiguous tensor (bigstore.io.mapping).
        # Skipped when rows are so oddly sized that alignment would more than double the chunk
        # (such tensors load through the copying path instead).
        align = PAGE // math.gcd(row_bytes, PAGE)
        aligned = math.ceil(chunk_rows / align) * align
        if aligned * row_bytes <= max(2 * chunk_bytes, PAGE):
            chunk_rows = aligned
    return min(chunk_rows, rows)


@dataclass(frozen=True)
class ArrayLayout:
    """One stored array: (rows, *inner) elements, chunks of ``chunk_rows`` rows along axis 0.

    path: the array's node path in the store ("model.layers.0.mlp.weight", "image",
    "tokens/values"). chunks_per_shard: 0 when each chunk is its own object (tensors), else the
    inner chunks per shard object (dataset columns). attrs: bigstore's extra attributes of the
    array (beyond its logical dtype), e.g. how a quantized tensor is packed.
    """

    path: str
    shape: tuple[int, ...]
    dtype: DTypeSpec
    chunk_rows: int
    codec: ChunkCodec
    chunks_per_shard: int = 0
    attrs: tuple[tuple[str, Any], ...] = ()  # JSON values: compare layouts, never hash them

    # -- geometry -----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.path

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def inner(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * self.numel

    @property
    def decoded(self) -> bool:
        """Reading it decodes (compressed chunks): CPU work beyond the copy, and bytes worth
        reading past the page cache when they will not be wanted again."""
        return not self.codec.raw

    @property
    def stored_nbytes(self) -> int:
        """Bytes a read of the whole array moves from storage, as far as the metadata tells
        (compressed chunks: their sizes are not in it, so ``nbytes``)."""
        return self.nbytes

    @property
    def n_chunks(self) -> int:
        if self.sharded:  # dataset columns: every row has its (possibly empty) place
            return -(-self.rows // self.chunk_rows) if self.shape and self.rows else 0
        # tensors: an empty tensor has no chunk objects at all
        return 0 if self.nbytes == 0 else -(-self.rows // self.chunk_rows)

    @property
    def chunk_nbytes(self) -> int:
        """Decoded bytes of one (full, padded) chunk."""
        return self.chunk_rows * self.row_bytes

    @property
    def stored_chunk_nbytes(self) -> int:
        """Stored bytes of an uncompressed chunk: data, then its crc32c when checksummed."""
        return self.chunk_nbytes + (CRC_BYTES if self.codec.checksum else 0)

    def chunk_rows_of(self, k: int) -> int:
        """Valid (unpadded) rows in chunk ``k``."""
        return min(self.chunk_rows, self.rows - k * self.chunk_rows)

    # -- where chunks live --------------------------------------------------------------------
    @property
    def sharded(self) -> bool:
        return self.chunks_per_shard > 0

    @property
    def shard_rows(self) -> int:
        return self.chunk_rows * max(1, self.chunks_per_shard)

    @property
    def n_shards(self) -> int:
        if not self.sharded:
            return self.n_chunks
        return -(-self.rows // self.shard_rows) if self.rows and self.n_chunks else 0

    @property
    def index_nbytes(self) -> int:
        return self.chunks_per_shard * INDEX_ENTRY + CRC_BYTES

    def chunk_key(self, k: int) -> str:
        """The object holding chunk ``k`` (its shard, for sharded arrays)."""
        if self.sharded:
            return self.shard_key(k // self.chunks_per_shard)
        if not self.shape:
            return f"{self.path}/c"
        return f"{self.path}/c/" + "/".join([str(k)] + ["0"] * (len(self.shape) - 1))

    def shard_key(self, s: int) -> str:
        return f"{self.path}/c/" + "/".join([str(s)] + ["0"] * len(self.inner))

    def object_keys(self) -> list[str]:
        """Every chunk (or shard) object of the array, in order."""
        if self.sharded:
            return [self.shard_key(s) for s in range(self.n_shards)]
        return [self.chunk_key(k) for k in range(self.n_chunks)]

    def raw_chunk_offset(self, k: int) -> int:
        """Where chunk ``k`` starts inside its object (uncompressed arrays only)."""
        return (k % self.chunks_per_shard) * self.stored_chunk_nbytes if self.sharded else 0

    def chunks_in_shard(self, s: int) -> int:
        return min(self.chunks_per_shard, self.n_chunks - s * self.chunks_per_shard)

    def raw_object_nbytes(self, i: int) -> int:
        """Stored bytes of object ``i`` (of :meth:`object_keys`) when uncompressed: a chunk and
        its crc32c, or a shard's chunks back to back and its index."""
        if self.sharded:
            return self.chunks_in_shard(i) * self.stored_chunk_nbytes + self.index_nbytes
        return self.stored_chunk_nbytes

    def where(self, k: int, url: str = "") -> str:
        """How errors name chunk ``k``."""
        key = self.chunk_key(k)
        noun = "array" if self.sharded else "tensor"  # dataset columns are sharded
        return f"{noun} {self.path!r} chunk {k} ({url + '/' if url else ''}{key})"

    @property
    def meta_key(self) -> str:
        return f"{self.path}/zarr.json"

    def attr(self, key: str, default: Any = None) -> Any:
        return dict(self.attrs).get(key, default)

    def with_rows(self, rows: int) -> ArrayLayout:
        return replace(self, shape=(rows, *self.shape[1:]))

    # -- zarr metadata ------------------------------------------------------------------------
    def to_zarr(self) -> Any:
        """A zarr ``ArrayV3Metadata`` describing exactly the bytes bigstore writes."""
        from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
        from zarr.core.dtype import parse_data_type
        from zarr.core.metadata.v3 import ArrayV3Metadata

        inner = tuple(max(1, d) for d in self.inner)
        chunk_shape = (self.chunk_rows, *inner) if self.shape else ()
        codecs: list[Any] = self.codec.zarr_codecs()
        grid = chunk_shape
        if self.sharded:
            codecs = [ShardingCodec(
                chunk_shape=chunk_shape, codecs=codecs,
                index_codecs=[BytesCodec(endian="little"), Crc32cCodec()],
            )]
            grid = (self.shard_rows, *inner)
        attrs: dict[str, Any] = {"dtype": self.dtype.name, **dict(self.attrs)}
        return ArrayV3Metadata(
            shape=self.shape,
            data_type=parse_data_type(self.dtype.storage, zarr_format=3),
            chunk_grid=RegularChunkGrid(chunk_shape=grid),
            chunk_key_encoding=DefaultChunkKeyEncoding(separator="/"),
            fill_value=0,
            codecs=codecs,
            attributes={"bigstore": attrs},
            dimension_names=None,
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = self.to_zarr().to_dict()
        return d

    @classmethod
    def from_json(cls, path: str, doc: dict[str, Any], where: str) -> ArrayLayout:
        """Parse (and let zarr validate) one array document; refuse what bigstore cannot read."""
        from zarr.codecs import ShardingCodec

        md, spec = parse_array_doc(doc, where)
        shape = tuple(int(d) for d in md.shape)
        codecs = list(md.codecs)
        per_shard = 0
        grid = tuple(int(c) for c in md.chunk_grid.chunk_shape)
        chunk_shape = grid
        if codecs and isinstance(codecs[0], ShardingCodec):
            if len(codecs) != 1:
                raise UnsupportedCodecError(f"{where}: codecs after sharding_indexed")
            sh = codecs[0]
            chunk_shape = tuple(int(c) for c in sh.chunk_shape)
            if grid[0] % max(1, chunk_shape[0]) or grid[1:] != chunk_shape[1:]:
                raise UnsupportedCodecError(f"{where}: shards are not whole inner chunks")
            per_shard = grid[0] // chunk_shape[0]
            codecs = list(sh.codecs)
            idx = list(sh.index_codecs)
            if (sh.index_location.value != "end" or len(idx) != 2
                    or type(idx[1]).__name__ != "Crc32cCodec"):
                raise UnsupportedCodecError(
                    f"{where}: bigstore reads shard indexes at the end, checked by crc32c"
                )
        if shape and chunk_shape[1:] != tuple(max(1, d) for d in shape[1:]):
            raise UnsupportedCodecError(
                f"{where}: chunked along more than the first axis ({chunk_shape} for {shape})"
            )
        chunk_rows = chunk_shape[0] if shape else 1
        if chunk_rows < 1:
            raise MetadataError(f"{where}: chunks of {chunk_rows} rows")
        codec = ChunkCodec.from_zarr(codecs, where)
        own = md.attributes.get("bigstore", {}) if isinstance(md.attributes, dict) else {}
        extra = tuple(sorted(
            (k, v) for k, v in (own.items() if isinstance(own, dict) else ()) if k != "dtype"
        ))
        try:
            layout = cls(path, shape, spec, chunk_rows, codec, per_shard, extra)
        except TypeError as e:  # attributes that are not JSON values compare badly
            raise MetadataError(f"{where}: malformed attributes ({e})") from None
        layout.check_sane(where)
        return layout

    def check_sane(self, where: str) -> None:
        """Refuse geometry no real array has: sizes past int64 (numpy's and every offset's
        type), and more chunks or shard entries than any store could list. Whether the stored
        objects hold what the document claims is :func:`bigstore.io.check_backed`'s part."""
        if len(self.shape) > MAX_DIMS:
            raise MetadataError(f"{where}: {len(self.shape)} dimensions (at most {MAX_DIMS})")
        for name, value in (
            ("bytes", self.nbytes),
            ("bytes per chunk", self.chunk_rows * max(1, self.row_bytes)),
            ("bytes per shard", self.shard_rows * max(1, self.row_bytes)),
        ):
            if value >= MAX_BYTES:
                raise MetadataError(
                    f"array {self.path!r} ({where}): {value} {name} claimed for shape "
                    f"{self.shape}: more than any array can hold (2**62)"
                )
        if self.n_chunks > MAX_CHUNKS or self.chunks_per_shard > MAX_CHUNKS:
            raise MetadataError(
                f"array {self.path!r} ({where}): {self.n_chunks} chunks "
                f"({self.chunks_per_shard} per shard) claimed: more than any store holds"
            )
