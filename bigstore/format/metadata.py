"""Tensor metadata <-> Zarr v3 array metadata (built and parsed by zarr-python itself)."""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidKeyError, NotAStoreError, UnsupportedCodecError
from .codecs import CRC_BYTES, ChunkCodec
from .dtypes import DTypeSpec, dtype_spec

__all__ = ["TensorMeta", "check_tensor_name", "choose_chunk_rows", "parse_array_doc"]

PAGE = mmap.PAGESIZE


def check_tensor_name(name: str) -> str:
    """Tensor names become one Zarr node name each: dots are fine, slashes are not."""
    if not isinstance(name, str) or not name:
        raise InvalidKeyError(f"tensor names must be non-empty strings, got {name!r}")
    bad = any(c in name for c in "/\\\x00") or name in (".", "..") or name.startswith("__")
    if bad:
        raise InvalidKeyError(
            f"invalid tensor name {name!r}: no '/', '\\', NUL, '.', '..' or leading '__'"
        )
    if name == "zarr.json":
        raise InvalidKeyError("'zarr.json' is reserved for the store's own metadata")
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
    spec = dtype_spec(logical or storage.name)
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
class TensorMeta:
    """What bigstore needs to read one tensor: shape, dtype, chunking along axis 0, codec."""

    name: str
    shape: tuple[int, ...]
    dtype: DTypeSpec
    chunk_rows: int
    codec: ChunkCodec

    # -- geometry -----------------------------------------------------------------------------
    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def n_chunks(self) -> int:
        if self.nbytes == 0:
            return 0
        return math.ceil(self.rows / self.chunk_rows)

    @property
    def chunk_nbytes(self) -> int:
        """Decoded bytes of one (full, padded) chunk."""
        return self.chunk_rows * self.row_bytes

    @property
    def raw_chunk_size(self) -> int:
        """Stored size of a chunk when uncompressed: data + crc32c."""
        return self.chunk_nbytes + CRC_BYTES

    def chunk_rows_of(self, i: int) -> int:
        """Valid (unpadded) rows in chunk ``i``."""
        return min(self.chunk_rows, self.rows - i * self.chunk_rows)

    def chunk_key(self, i: int) -> str:
        if not self.shape:
            return f"{self.name}/c"
        return f"{self.name}/c/" + "/".join([str(i)] + ["0"] * (len(self.shape) - 1))

    @property
    def meta_key(self) -> str:
        return f"{self.name}/zarr.json"

    # -- zarr metadata ------------------------------------------------------------------------
    def to_zarr(self) -> Any:
        """A zarr ``ArrayV3Metadata`` describing exactly the bytes bigstore writes."""
        from zarr.core.chunk_grids import RegularChunkGrid
        from zarr.core.chunk_key_encodings import DefaultChunkKeyEncoding
        from zarr.core.dtype import parse_data_type
        from zarr.core.metadata.v3 import ArrayV3Metadata

        chunk_shape = (self.chunk_rows, *(max(1, d) for d in self.shape[1:])) if self.shape else ()
        attrs: dict[str, Any] = {"bigstore": {"dtype": self.dtype.name}}
        return ArrayV3Metadata(
            shape=self.shape,
            data_type=parse_data_type(self.dtype.storage, zarr_format=3),
            chunk_grid=RegularChunkGrid(chunk_shape=chunk_shape),
            chunk_key_encoding=DefaultChunkKeyEncoding(separator="/"),
            fill_value=0,
            codecs=self.codec.zarr_codecs(),
            attributes=attrs,
            dimension_names=None,
        )

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = self.to_zarr().to_dict()
        return d

    @classmethod
    def from_json(cls, name: str, doc: dict[str, Any], where: str) -> TensorMeta:
        """Parse (and let zarr validate) one array's metadata document."""
        md, spec = parse_array_doc(doc, where)
        shape = tuple(int(d) for d in md.shape)
        chunk_shape = tuple(int(c) for c in md.chunks)
        if shape and chunk_shape[1:] != tuple(max(1, d) for d in shape[1:]):
            raise UnsupportedCodecError(
                f"{where}: chunked along more than the first axis ({chunk_shape} for {shape})"
            )
        codec = ChunkCodec.from_zarr(md.codecs, where)
        return cls(check_tensor_name(name), shape, spec, chunk_shape[0] if shape else 1, codec)
