"""Chunk reads -> store requests. Pure (no I/O): the result is the I/O plan the reader executes.

A :class:`ChunkRead` asks for rows [lo, hi) of one chunk, landing at byte ``dst`` of destination
buffer ``out``. Each chunk lives somewhere in an object: a whole object (``span`` None: a
compressed chunk of its own, read with one get) or a byte span of it (uncompressed chunks; any
chunk of a shard, its span from the shard index). Spans of one object closer than ``max_gap``
are merged into one request of at most ``max_request`` bytes, so neighbouring chunks of a shard
cost one request (on local disk: one scatter ``preadv`` straight into the destinations).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import bigstore_native as native
import numpy as np

from ..store import ByteRange

__all__ = ["ChunkRead", "ReadOp", "plan_reads"]


@dataclass(frozen=True)
class ChunkRead:
    """Rows [lo, hi) of chunk ``chunk`` into buffer ``out`` at byte ``dst``."""

    chunk: int
    lo: int
    hi: int
    out: int = 0
    dst: int = 0


@dataclass(frozen=True)
class ReadOp:
    """One store request: ``key``'s bytes ``request`` (None: the whole object), serving
    ``members``: (index into the chunk reads, that chunk's span in the object or None)."""

    key: str
    request: ByteRange | None
    members: tuple[tuple[int, ByteRange | None], ...]

    @property
    def nbytes(self) -> int:
        return self.request.length if self.request is not None else 0


def plan_reads(
    reads: Sequence[ChunkRead],
    locate: Callable[[ChunkRead], tuple[str, ByteRange | None]],
    *,
    max_gap: int,
    max_request: int,
) -> list[ReadOp]:
    """Group ``reads`` into requests. ``locate(read)`` gives the object holding the read's chunk
    and the span to fetch there (None: the whole object)."""
    whole: list[ReadOp] = []
    spans: dict[str, list[tuple[int, ByteRange]]] = {}
    for i, r in enumerate(reads):
        key, span = locate(r)
        if span is None:
            whole.append(ReadOp(key, None, ((i, None),)))
        else:
            spans.setdefault(key, []).append((i, span))
    ops: list[ReadOp] = []
    for key, members in spans.items():
        starts = np.fromiter((s.start for _, s in members), np.int64, len(members))
        ends = np.fromiter((s.end for _, s in members), np.int64, len(members))
        order = np.argsort(starts, kind="stable")
        group, m_start, m_end = native.coalesce_ranges(
            starts[order], ends[order], max_gap, max_request
        )
        grouped: list[list[tuple[int, ByteRange]]] = [[] for _ in range(len(m_start))]
        for pos, j in enumerate(order.tolist()):
            grouped[int(group[pos])].append(members[j])
        for g, mem in enumerate(grouped):
            ops.append(ReadOp(key, ByteRange(int(m_start[g]), int(m_end[g])), tuple(mem)))
    return whole + ops
