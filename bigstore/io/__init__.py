"""Executors: they carry out plans with bounded concurrency into buffers the caller owns."""

from .chunks import read_chunk_rows, verify_chunk
from .executor import Executor, get_executor

__all__ = ["Executor", "get_executor", "read_chunk_rows", "verify_chunk"]
