"""Merge byte ranges of one object into fewer, larger requests. Pure: the result is the plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import bigstore_native as native
import numpy as np

from ..store import ByteRange

__all__ = ["CoalescedRead", "coalesce"]


@dataclass(frozen=True)
class CoalescedRead:
    """One request, and for each wanted range (by its index in the input) its place inside."""

    request: ByteRange
    members: tuple[int, ...]


def coalesce(ranges: Sequence[ByteRange], *, max_gap: int, max_request: int) -> list[CoalescedRead]:
    """Sort ``ranges`` and merge neighbours closer than ``max_gap`` into requests of at most
    ``max_request`` bytes (a single range larger than that stays whole)."""
    if not ranges:
        return []
    starts = np.fromiter((r.start for r in ranges), np.int64, len(ranges))
    ends = np.fromiter((r.end for r in ranges), np.int64, len(ranges))
    order = np.argsort(starts, kind="stable")
    group, m_start, m_end = native.coalesce_ranges(starts[order], ends[order], max_gap, max_request)
    members: list[list[int]] = [[] for _ in range(len(m_start))]
    for idx, g in zip(order.tolist(), group.tolist()):
        members[g].append(idx)
    return [
        CoalescedRead(ByteRange(int(s), int(e)), tuple(m))
        for s, e, m in zip(m_start, m_end, members)
    ]
