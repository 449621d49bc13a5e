"""Where each paging unit lives between uses: device memory, host RAM, or only in storage.

Pure: from the recorded execution order, the units' sizes and the budgets of the two memory
tiers, :func:`plan_tiers` decides a static placement; the pager carries it out.

- **device**: units kept on the device for good (never re-read). The most re-used first, while
  the rest can still stream through what is left (see :func:`plan_resident`).
- **host**: units kept in host RAM between uses (CUDA: pinned buffers; CPU: their mapped file
  pages, or anonymous memory when they had to be decoded or fetched), so a pass after the first
  copies them from RAM instead of reading storage.
- **storage**: everything else, read again each time it is used.

A pass replays the same order cyclically, and for a cyclic order the optimal cache (Belady:
evict what is needed farthest in the future) keeps a fixed subset and streams the rest: an
LRU-style cache smaller than the working set would miss on every access. So the host tier is a
fixed set chosen up front, most uses per pass (most bytes saved per byte kept) first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .schedule import Schedule, plan_resident

__all__ = ["Tiers", "plan_tiers"]


@dataclass(frozen=True)
class Tiers:
    device: frozenset[int]
    host: frozenset[int]

    def tier(self, unit: int) -> str:
        return "device" if unit in self.device else "host" if unit in self.host else "storage"


def plan_tiers(
    schedule: Schedule,
    sizes: Mapping[int, int],
    device_budget: int,
    host_budget: int,
    prefetch: int,
    costs: Mapping[int, int] | None = None,
) -> Tiers:
    """Place every unit of ``sizes``: ``device`` within ``device_budget`` (leaving room for the
    streamed units to pass through), ``host`` within ``host_budget``, the rest in storage.
    ``costs``: bytes a load of each unit reads from storage (default: its size)."""
    device = plan_resident(schedule, sizes, device_budget, prefetch, costs)
    rest = [u for u in sizes if u not in device and schedule.uses(u) > 0]
    # most uses per pass first (each use saves a read of the unit); larger first among equals
    rest.sort(key=lambda u: (-schedule.uses(u), -sizes[u], u))
    host: list[int] = []
    used = 0
    for u in rest:
        if used + sizes[u] <= host_budget:
            host.append(u)
            used += sizes[u]
    return Tiers(frozenset(device), frozenset(host))
