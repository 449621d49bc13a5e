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


__all__ += ["QuantizeConfig"]
