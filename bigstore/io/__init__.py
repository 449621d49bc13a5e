"""Executors: they carry out plans with bounded concurrency into buffers the caller owns.

``reader`` (chunks -> buffers: read, crc, decode), ``mapping`` (zero-copy arrays), ``producer``
(the background thread working ahead), ``device`` (CPU fill | CUDA ring), ``buffers`` (host,
huge-page and pinned memory), ``executor`` (the shared, fork-safe pool).
"""

from .buffers import (
    BufferPool,
    HostBufferPool,
    StagingPool,
    host_array,
    host_buffer,
    pinned_buffer,
)
from .device import (
    CpuFiller,
    CudaFiller,
    Filled,
    Filler,
    FillRequest,
    HostCopy,
    Staged,
    make_filler,
    plan_pieces,
)
from .executor import Executor, get_executor
from .mapping import MappedArray, MappedRegion, map_objects, mappable, readahead, verify_many
from .producer import Producer, State, StoppedError, Worker
from .reader import ChunkReader, Fetch, RowRequest, byte_view

__all__ = [
    "BufferPool", "ChunkReader", "CpuFiller", "CudaFiller", "Executor", "Fetch", "FillRequest",
    "Filled", "Filler", "HostBufferPool", "HostCopy", "MappedArray", "MappedRegion", "Producer",
    "RowRequest", "Staged", "StagingPool", "State", "StoppedError", "Worker",
    "byte_view", "get_executor", "host_array", "host_buffer", "make_filler", "map_objects",
    "mappable", "pinned_buffer", "plan_pieces", "readahead", "verify_many",
]
