"""Frozen configuration: the one home of bigstore's defaults, each with its unit."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .errors import BigstoreError

__all__ = ["KiB", "MiB", "GiB", "ReadConfig", "WriteConfig", "parse_bytes", "default_io_threads"]

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


@dataclass(frozen=True)
class WriteConfig:
    """How tensors are laid out when written.

    chunk_bytes: target bytes per chunk; tensors are chunked along their first axis only.
    codec: None (raw bytes, memory-mappable), "zstd", "zstd:LEVEL", "gzip" or "gzip:LEVEL".
    """

    chunk_bytes: int = 64 * MiB
    codec: str | None = None

    def __post_init__(self) -> None:
        if self.chunk_bytes <= 0:
            raise BigstoreError(f"chunk_bytes must be positive, got {self.chunk_bytes}")


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


# A category (dictionary) column keeps its categories in the dataset's root document, which
# every open reads: past this many distinct values store the column as plain strings instead.
DATASET_MAX_CATEGORIES = 1 << 16
