"""The on-disk format: Zarr v3 metadata in and out, dtypes, chunk codecs, shards. See FORMAT.md."""

from .array import ArrayLayout, check_name, choose_chunk_rows, parse_array_doc
from .codecs import ChunkCodec, crc32c_of, parse_codec
from .dtypes import DTypeSpec, dtype_spec
from .quantized import PartSpan, QuantizedLayout, QuantSpec, is_quantized_doc
from .root import (
    FORMAT_VERSION,
    QUANTIZED_VERSION,
    ROOT_KEY,
    RootDoc,
    Stamp,
    read_root,
    read_stamped,
    write_root,
)
from .shard import EMPTY, encode_shard, parse_index

__all__ = [
    "EMPTY", "FORMAT_VERSION", "ROOT_KEY", "ArrayLayout", "ChunkCodec", "DTypeSpec", "PartSpan",
    "QUANTIZED_VERSION", "QuantSpec", "QuantizedLayout", "RootDoc", "Stamp", "check_name",
    "choose_chunk_rows", "crc32c_of", "dtype_spec", "encode_shard", "is_quantized_doc",
    "read_stamped",
    "parse_array_doc", "parse_codec", "parse_index", "read_root", "write_root",
]
