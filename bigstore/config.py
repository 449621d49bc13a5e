"""Frozen configuration: the one home of bigstore's defaults, each with its unit."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import BigstoreError

__all__ = [
    "DATASET_CACHE_BYTES", "DatasetWriteConfig", "GiB", "KiB", "LOCK_STALE_AFTER", "LOCK_TIMEOUT",
    "LoaderConfig", "MiB",
    "OffloadConfig", "PrefetchConfig", "QuantizeConfig", "ReadConfig", "WriteConfig",
    "default_io_threads", "parse_bytes",
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
    codec: None (raw bytes, memory-mappable), "zstd", "zstd:LEVEL", "gzip" or "gzip:LEVEL".
    durable: fsync every file and directory before the commit (local stores), so a power loss
        never leaves a commit pointing at unwritten bytes.
    lock_timeout: seconds to wait for another writer of the same store before giving up with
        ConcurrentWriteError.
    lock_stale_after: object stores: seconds after which a writer lease nobody refreshed is
        taken for a killed writer's and broken (see bigstore.store.lock).
    """

    chunk_bytes: int = 64 * MiB
    codec: str | None = None
    durable: bool = True
    lock_timeout: float = LOCK_TIMEOUT
    lock_stale_after: float = LOCK_STALE_AFTER

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
    staging_bytes: size of one pinned host slot of the CUDA staging ring (ring of
        ``prefetch + 1`` slots, at least 2); unused on CPU, where bytes land in the budget.
    drop_cache: drop a local store's file pages from the page cache once read, so the machine's
        memory use reflects the budget (set False to let repeated runs hit the page cache).
    align: byte alignment of each tensor inside a unit's buffer.
    guard: watch ops while the model runs so weights read outside their module are paged in.
    cache_dir / cache_bytes: for remote stores, keep read chunks in this local directory,
        holding at most ``cache_bytes`` bytes.
    """

    budget: int = 2 * GiB
    prefetch: int = 2
    staging_bytes: int = 64 * MiB
    drop_cache: bool = True
    align: int = 256
    guard: bool = True
    cache_dir: str | None = None
    cache_bytes: int = 16 * GiB

    def __post_init__(self) -> None:
        if self.prefetch < 0:
            raise BigstoreError(f"prefetch must be >= 0, got {self.prefetch}")
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

