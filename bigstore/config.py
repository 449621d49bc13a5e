"""Frozen configuration: the one home of bigstore's defaults, each with its unit."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import BigstoreError, UnsupportedCodecError

__all__ = [
    "DATASET_CACHE_BYTES", "DATASET_MAX_CATEGORIES", "DATASET_SIZING_BYTES",
    "DATASET_SIZING_ROWS", "EXCHANGE_BYTES", "HOST_FRACTION", "INGEST_RETRIES",
    "LOCK_STALE_AFTER", "LOCK_TIMEOUT", "DatasetWriteConfig", "GiB", "KiB", "LoaderConfig",
    "LosslessConfig", "MiB", "OffloadConfig", "PrefetchConfig", "QuantizeConfig", "ReadConfig",
    "WriteConfig", "available_memory", "default_io_threads", "parse_bytes",
]

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "t": 1000**4, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": 1 << 40,
}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*$")


def parse_bytes(value: int | str) -> int:
    """``"2GiB"`` -> 2147483648; ``"64MB"`` -> 64000000; ints pass through."""
    if isinstance(value, bool):
        raise BigstoreError(f"a byte size must be an int or a string like '2GiB', not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise BigstoreError(f"a byte size cannot be negative: {value}")
        return value
    m = _SIZE_RE.match(str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise BigstoreError(f"cannot parse byte size {value!r} (examples: 4096, '64MiB', '2GiB')")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def default_io_threads() -> int:
    # Reads block in the kernel (or on the network) with the GIL released: more threads than
    # cores keeps several requests in flight, which disks and object stores both need.
    return max(4, min(16, 2 * (os.cpu_count() or 2)))


#: seconds a writer waits for another writer of the same store before ConcurrentWriteError
LOCK_TIMEOUT = 600.0
#: seconds an object-store writer lease may go unrefreshed before waiters take its holder for
#: dead (killed); holders refresh it every quarter of this (see bigstore.store.lock)
LOCK_STALE_AFTER = 120.0


def _check_lock(timeout: float, stale_after: float) -> None:
    if timeout < 0:
        raise BigstoreError(f"lock_timeout must be >= 0 seconds, got {timeout}")
    if stale_after <= 0:
        raise BigstoreError(f"lock_stale_after must be > 0 seconds, got {stale_after}")


@dataclass(frozen=True)
class WriteConfig:
    """How tensors are laid out when written, and how a write commits.

    chunk_bytes: target bytes per chunk; tensors are chunked along their first axis only.
    codec: None (raw bytes, memory-mappable), "lossless" or "lossless:LEVEL" (the Blosc chain
        of :class:`LosslessConfig`, chosen per chunk), "zstd", "zstd:LEVEL", "gzip" or
        "gzip:LEVEL".
    durable: fsync every file and directory before the commit (local stores), so a power loss
        never leaves a commit pointing at unwritten bytes.
    lock_timeout: seconds to wait for another writer of the same store before giving up with
        ConcurrentWriteError.
    quantize: store the tensors its policy selects group-wise quantized (None: none).
    lock_stale_after: object stores: seconds after which a writer lease nobody refreshed is
        taken for a killed writer's and broken (see bigstore.store.lock).
    """

    chunk_bytes: int = 64 * MiB
    codec: str | None = None
    durable: bool = True
    lock_timeout: float = LOCK_TIMEOUT
    lock_stale_after: float = LOCK_STALE_AFTER
    quantize: QuantizeConfig | None = None

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0:
            raise BigstoreError(f"chunk_bytes must be positive, got {self.chunk_bytes}")
        _check_lock(self.lock_timeout, self.lock_stale_after)


@dataclass(frozen=True)
class ReadConfig:
    """How reads are executed.

    threads: concurrent read+decode workers.
    max_gap: byte ranges of one object closer than this are merged into one request.
    max_request: merged requests stop growing at this many bytes.
    verify: check every chunk's crc32c (cheap: ~15 GB/s with the hardware instruction).
    """

    threads: int = 0  # 0: default_io_threads()
    max_gap: int = 64 * KiB
    max_request: int = 16 * MiB
    verify: bool = True

    @property
    def n_threads(self) -> int:
        return self.threads or default_io_threads()


@dataclass(frozen=True)
class DatasetWriteConfig:
    """How a dataset is laid out: rows per inner chunk (or a byte target), shard size, codec.

    chunk_rows: samples per inner chunk (None: about ``chunk_bytes`` of all columns).
    shard_bytes: target bytes per shard object. codec: as WriteConfig.codec.
    durable, lock_timeout, lock_stale_after: as in WriteConfig.
    """

    chunk_rows: int | None = None
    chunk_bytes: int = 1 * MiB
    shard_bytes: int = 128 * MiB
    codec: str | None = None
    durable: bool = True
    lock_timeout: float = LOCK_TIMEOUT
    lock_stale_after: float = LOCK_STALE_AFTER

    def __post_init__(self) -> None:
        if self.chunk_rows is not None and self.chunk_rows <= 0:
            raise BigstoreError(f"chunk_rows must be positive, got {self.chunk_rows}")
        if self.chunk_bytes <= 0 or self.shard_bytes <= 0:
            raise BigstoreError("chunk_bytes and shard_bytes must be positive")
        _check_lock(self.lock_timeout, self.lock_stale_after)


@dataclass(frozen=True)
class OffloadConfig:
    """How a model is paged.

    budget: bytes of weights (parameters and buffers) resident on the device at any time.
    prefetch: units read ahead of the one running (0: load each on demand, synchronously).
    staging_bytes: host memory for staging, outside the budget, in ``prefetch + 1`` (at least
        2) times this: on CUDA a ring of pinned slots of this size; on the CPU, the stored
        bytes of decoded units (quantized, compressed) read ahead of their fills when the
        page cache cannot read ahead for them (``drop_cache`` reads past it; object stores),
        so a fill only checks and decodes. Raw units on the CPU land in the budget directly.
    host_budget: bytes of host RAM that keep units between uses (the host tier: pinned memory on
        CUDA; on CPU the units' mapped file pages, or anonymous memory for units that had to be
        decoded or fetched). None ("auto"): HOST_FRACTION of the RAM available when offloading
        starts, capped at the model's size; 0 turns the tier off.
    drop_cache: drop a local store's file pages from the page cache once a unit that has no
        host copy is evicted, so every use really reads storage (measuring a disk, say, or a
        model larger than RAM). On the CPU, chunks that are decoded (quantized, compressed)
        are then read past the page cache (``O_DIRECT`` where the file system allows): no
        pages to fill, copy and evict for bytes that are not wanted again.
    align: byte alignment of each tensor inside a unit's buffer.
    guard: watch ops while the model runs so weights read outside their module are paged in.
    embedding_rows: an embedding paged as a unit of its own (not tied to another module) loads
        only the rows its lookup needs, when they are at most half of it.
    cache_dir / cache_bytes: for remote stores, keep read chunks in this local directory,
        holding at most ``cache_bytes`` bytes.
    compute_threads: torch's intra-op threads while a pass runs on the CPU that decodes units
        (compressed or quantized ones): decoding and the model's compute share the
        cores, and torch's parallel ops slow down badly when their threads are preempted (a
        cold int4 pass on 2 cores: 0.45 s with torch's 2 threads, 0.37 s with 1). None
        ("auto"): the cores minus those the decoders use (at most half), only for passes that
        decode, never more than torch's own setting; 0: leave torch's setting alone. Restored
        after every pass.
    """

    budget: int = 2 * GiB
    host_budget: int | None = None
    prefetch: int = 2
    staging_bytes: int = 64 * MiB
    drop_cache: bool = False
    align: int = 256
    guard: bool = True
    embedding_rows: bool = True
    cache_dir: str | None = None
    cache_bytes: int = 16 * GiB
    compute_threads: int | None = None

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise BigstoreError(f"prefetch must be >= 0, got {self.prefetch}")
        if self.compute_threads is not None and self.compute_threads < 0:
            raise BigstoreError(f"compute_threads must be >= 0, got {self.compute_threads}")
        if self.align <= 0 or self.align & (self.align - 1):
            raise BigstoreError(f"align must be a power of two, got {self.align}")


@dataclass(frozen=True)
class LoaderConfig:
    """Everything a dataset loader needs besides the dataset.

    window: chunks whose samples are shuffled together (shuffle quality vs memory).
    memory: bytes of chunk slots (None: room for four windows, at least 256 MiB).
    read_ahead: bytes of upcoming batches whose chunks are read in one group.
    prefetch: finished batches kept ready for the consumer.
    rank / world_size: None: from torch.distributed when initialised, else RANK / WORLD_SIZE.
    """

    batch_size: int
    shuffle: bool = False
    seed: int = 0
    columns: tuple[str, ...] | None = None
    drop_last: bool = False
    rank: int | None = None
    world_size: int | None = None
    num_threads: int = 0  # 0: default_io_threads()
    prefetch: int = 4
    window: int = 64
    memory: int | None = None
    read_ahead: int = 128 * MiB
    device: str | None = None
    pin_memory: bool = False
    transform: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BigstoreError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.world_size is not None and self.world_size < 1:
            raise BigstoreError(f"world_size must be >= 1, got {self.world_size}")
        if self.rank is not None and self.world_size is not None and not (
            0 <= self.rank < self.world_size
        ):
            raise BigstoreError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.prefetch < 1:
            raise BigstoreError(f"prefetch must be >= 1, got {self.prefetch}")

    @property
    def threads(self) -> int:
        return self.num_threads or default_io_threads()


@dataclass(frozen=True)
class PrefetchConfig:
    """The copying dataset prefetcher's resources (derived from a LoaderConfig)."""

    n_slots: int
    prefetch: int  # finished batches waiting for the consumer
    read_ahead: int  # bytes of batches per group
    threads: int


#: where remote datasets keep their local cache, and its size (see bigstore.store.CachedStore)
DATASET_CACHE_BYTES = 10 * GiB
#: the share of available RAM an offloaded model's host tier takes when host_budget is "auto"
HOST_FRACTION = 0.5


def available_memory() -> int:
    """Bytes of RAM available now (Linux MemAvailable; else free physical pages)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KiB
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 0


# -- Quantization (issue 10): appended section, owned by the quantization work --------------------
@dataclass(frozen=True)
class QuantizeConfig:
    """Which tensors are stored group-wise quantized, and how.

    scheme: "int8" (symmetric, one scale per group) or "int4" (scale + zero point per group,
        two values per byte).
    group_size: values per group, consecutive along the last axis (the last group of a row is
        shorter when it does not divide the row; nothing is padded but int4's final nibble).
    scale_dtype: "float16" (more precision; the default, as llama.cpp does) or "bfloat16"
        (float32's range, for weights whose group maxima exceed float16's).
    min_dim: by default only matrices whose two dimensions are both at least this many values
        are quantized: smaller ones are a negligible share of the bytes.
    include / exclude: name patterns that force a tensor in or out (exclude wins). A pattern is
        a glob over the whole name (``"*.mlp.*"``), or a regular expression after ``"re:"``
        (``"re:layers\\.(0|1)\\."``, searched anywhere in the name).
    """

    scheme: str = "int8"
    group_size: int = 64
    scale_dtype: str = "float16"
    min_dim: int = 128
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scheme not in ("int8", "int4"):
            raise BigstoreError(
                f"quantization scheme must be 'int8' or 'int4', got {self.scheme!r}"
            )
        if self.group_size < 1:
            raise BigstoreError(f"group_size must be positive, got {self.group_size}")
        if self.scale_dtype not in ("float16", "bfloat16"):
            raise BigstoreError(
                f"scale_dtype must be 'float16' or 'bfloat16', got {self.scale_dtype!r}"
            )
        if self.min_dim < 1:
            raise BigstoreError(f"min_dim must be positive, got {self.min_dim}")
        for p in (*self.include, *self.exclude):
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    raise BigstoreError(f"bad regular expression in pattern {p!r}: {e}") from None


# A category (dictionary) column keeps its categories in the dataset's root document, which
# every open reads: past this many distinct values store the column as plain strings instead.
DATASET_MAX_CATEGORIES = 1 << 16

# -- Lossless weights (issue 10) ------------------------------------------------------------------
@dataclass(frozen=True)
class LosslessConfig:
    """The lossless chain ``bytes -> blosc(zstd, shuffle, typesize) -> crc32c`` (codec
    ``"lossless"``); see ``bigstore/format/lossless.py`` and NOTES.md for the measurements.

    clevel: Blosc (zstd) level 1..9 for chunks that compress; level 1 measured best on weights
        for both ratio and decode speed. ``"lossless:LEVEL"`` sets it.
    blocksize: bytes per Blosc block (each block is one zstd frame inside the chunk).
    min_saving: a chunk is stored as a Blosc memcpy frame (raw bytes after a 16-byte header)
        unless compression saves at least this fraction of its bytes.
    shuffle: "shuffle" (the bytes of each value grouped), "bitshuffle" or "noshuffle".
    """

    clevel: int = 1
    blocksize: int = 1 * MiB
    min_saving: float = 0.05
    shuffle: str = "shuffle"

    def __post_init__(self) -> None:
        if not 1 <= self.clevel <= 9:
            raise UnsupportedCodecError(f"blosc clevel must be 1..9, got {self.clevel}")
        if self.shuffle not in ("noshuffle", "shuffle", "bitshuffle"):
            raise UnsupportedCodecError(
                f"unknown shuffle {self.shuffle!r}; choose noshuffle, shuffle or bitshuffle"
            )
        if not 0.0 <= self.min_saving < 1.0:
            raise UnsupportedCodecError(f"min_saving must be in [0, 1), got {self.min_saving}")
        if self.blocksize < 0:
            raise UnsupportedCodecError(f"blocksize cannot be negative, got {self.blocksize}")


# -- Scale-out (issue 12): appended section, owned by the distributed ingest / multi-rank work ---
# The chunk_rows rule every dataset writer shares (one process or a Dask cluster): variable-length
# columns are sized on the first rows of the dataset, at most this many rows and the rows that
# start within the first this-many stored bytes; never on how the source happens to be batched.
DATASET_SIZING_ROWS = 65536
DATASET_SIZING_BYTES = 64 * MiB
# Distributed ingest: how often a failed Dask task is tried again before the job fails.
INGEST_RETRIES = 2
# Multi-rank loads: bytes per broadcast over the process group (gloo moves big buffers in
# pieces anyway; bounded pieces keep every collective well below 2**31 elements).
EXCHANGE_BYTES = 256 * MiB
