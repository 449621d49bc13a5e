"""Executors: they carry out plans with bounded concurrency into buffers the caller owns."""

from .chunks import can_map, map_tensor, read_chunk_rows, verify_chunk, verify_mapped_chunk
from .executor import Executor, get_executor

__all__ = [
    "Executor", "can_map", "get_executor", "map_tensor", "read_chunk_rows", "verify_chunk",
    "verify_mapped_chunk",
]
