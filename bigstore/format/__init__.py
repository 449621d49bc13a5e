"""The on-disk format: Zarr v3 metadata in and out, dtypes, chunk codecs. See FORMAT.md."""

from .codecs import ChunkCodec, crc32c_of, parse_codec
from .dtypes import DTypeSpec, dtype_spec
from .metadata import TensorMeta, check_tensor_name, choose_chunk_rows
from .root import FORMAT_VERSION, ROOT_KEY, RootDoc, read_root, write_root

__all__ = [
    "FORMAT_VERSION", "ROOT_KEY", "ChunkCodec", "DTypeSpec", "RootDoc", "TensorMeta",
    "check_tensor_name", "choose_chunk_rows", "crc32c_of", "dtype_spec", "parse_codec",
    "read_root", "write_root",
]
