"""Pure planner of a multi-rank load: which rank reads which chunks, and where bytes land.

Every tensor gets a place in one flat buffer (the *arena*, each tensor aligned); the chunks of
all tensors, in arena order, are split into ``world`` contiguous runs of about equal bytes (whole
chunks: a chunk is the unit of reading and checking). Rank ``r`` reads its run straight into its
arena region, then broadcasts that region; so every chunk is read from storage by exactly one
rank, and every rank ends with the whole arena. Balance is within one chunk of ideal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

__all__ = ["GroupPlan", "RankReads", "TensorPiece", "TensorRows", "plan_group_load",
           "split_contiguous"]

ALIGN = 64  # tensor offsets in the arena: any dtype's alignment, and cache lines


@dataclass(frozen=True)
class TensorRows:
    """A tensor as the planner sees it: rows along axis 0 in chunks of ``chunk_rows``."""

    name: str
    rows: int
    chunk_rows: int
    row_bytes: int

    @property
    def nbytes(self) -> int:
        return self.rows * self.row_bytes


@dataclass(frozen=True)
class TensorPiece:
    """Rows [start, stop) of tensor ``name`` (whole chunks), at arena bytes [offset, +nbytes)."""

    name: str
    start: int
    stop: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class RankReads:
    """What one rank reads, and the arena bytes [start, stop) it then broadcasts."""

    pieces: tuple[TensorPiece, ...]
    start: int
    stop: int

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.pieces)


@dataclass(frozen=True)
class GroupPlan:
    offsets: dict[str, int]  # tensor -> arena offset
    nbytes: int  # arena size
    ranks: tuple[RankReads, ...]


def split_contiguous(weights: Sequence[int], n: int) -> list[tuple[int, int]]:
    """``n`` contiguous index ranges covering ``weights``, each about ``sum / n``: each cut is
    the boundary nearest its ideal place (ranges may be empty when items are few or big)."""
    if n < 1:
        raise ValueError(f"cannot split into {n} parts")
    prefix = [0, *accumulate(weights)]
    total = prefix[-1]
    cuts = [0]
    for r in range(1, n):
        ideal = total * r / n
        i = cuts[-1]
        while i < len(weights) and abs(prefix[i + 1] - ideal) <= abs(prefix[i] - ideal):
            i += 1
        cuts.append(i)
    cuts.append(len(weights))
    return [(cuts[r], cuts[r + 1]) for r in range(n)]


def plan_group_load(tensors: Sequence[TensorRows], world: int) -> GroupPlan:
    offsets: dict[str, int] = {}
    pos = 0
    units: list[TensorPiece] = []  # one per chunk, in arena order
    for t in tensors:
        pos = -(-pos // ALIGN) * ALIGN
        offsets[t.name] = pos
        if t.nbytes:
            for lo in range(0, t.rows, t.chunk_rows):
                hi = min(lo + t.chunk_rows, t.rows)
                units.append(TensorPiece(t.name, lo, hi, pos + lo * t.row_bytes,
                                         (hi - lo) * t.row_bytes))
        pos += t.nbytes
    ranks = []
    for a, b in split_contiguous([u.nbytes for u in units], world):
        merged: list[TensorPiece] = []
        for u in units[a:b]:  # consecutive chunks of one tensor: one request
            last = merged[-1] if merged else None
            if last is not None and last.name == u.name and last.stop == u.start:
                merged[-1] = TensorPiece(u.name, last.start, u.stop, last.offset,
                                         last.nbytes + u.nbytes)
            else:
                merged.append(u)
        start = merged[0].offset if merged else 0
        stop = merged[-1].offset + merged[-1].nbytes if merged else 0
        ranks.append(RankReads(tuple(merged), start, stop))
    return GroupPlan(offsets, pos, tuple(ranks))
