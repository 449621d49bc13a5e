"""Pure planners behind the pager: no I/O, no torch state; every decision here is testable alone.

- :func:`plan_layout`: where each tensor of a unit lives inside the unit's one device buffer.
- :class:`Schedule`: the recorded execution order of units, and distances to each next use.
- :func:`plan_resident`: which units stay resident for good ("don't stream what fits").
- :func:`choose_victims`: which loaded units to evict to make room (farthest next use first).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["Schedule", "choose_victims", "plan_layout", "plan_resident"]

NEVER = math.inf


def plan_layout(sizes: Sequence[int], align: int) -> tuple[tuple[int, ...], int]:
    """Offsets of tensors of ``sizes`` bytes packed in one buffer, each aligned to ``align``.

    Alignment keeps every tensor's address as aligned as a separate allocation would be, so
    vectorised kernels take the same code paths as on the resident model (bit-identical output).
    """
    offsets: list[int] = []
    pos = 0
    for n in sizes:
        pos = -(-pos // align) * align
        offsets.append(pos)
        pos += n
    return tuple(offsets), pos


@dataclass(frozen=True)
class Schedule:
    """One forward pass as the sequence of unit acquisitions, replayed cyclically.

    ``provisional`` marks a guess (module registration order) used before the first pass has
    been recorded; it only steers prefetching, never correctness.
    """

    seq: tuple[int, ...]
    provisional: bool = False
    _pos: Mapping[int, tuple[int, ...]] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        pos: dict[int, list[int]] = {}
        for i, u in enumerate(self.seq):
            pos.setdefault(u, []).append(i)
        object.__setattr__(self, "_pos", {u: tuple(p) for u, p in pos.items()})

    def __len__(self) -> int:
        return len(self.seq)

    def uses(self, unit: int) -> int:
        return len(self._pos.get(unit, ()))

    def distance(self, unit: int, cursor: int) -> float:
        """Steps from ``cursor`` to the next acquisition of ``unit`` (0: it is next), cyclic."""
        p = self._pos.get(unit)
        if not p:
            return NEVER
        n = len(self.seq)
        cursor %= n
        i = bisect.bisect_left(p, cursor)
        return p[i] - cursor if i < len(p) else p[0] + n - cursor

    def upcoming(self, cursor: int, depth: int) -> list[int]:
        """The next ``depth`` acquisitions from ``cursor`` (wrapping into the next pass)."""
        n = len(self.seq)
        if not n:
            return []
        return [self.seq[(cursor + k) % n] for k in range(min(depth, n))]

    def resync(self, unit: int, cursor: int) -> int:
        """The cursor just after the next acquisition of ``unit`` from ``cursor``."""
        d = self.distance(unit, cursor)
        return cursor if d == NEVER else int(cursor + d + 1) % max(1, len(self.seq))


def plan_resident(
    schedule: Schedule, sizes: Mapping[int, int], budget: int, prefetch: int,
    costs: Mapping[int, int] | None = None,
) -> frozenset[int]:
    """Units to keep resident for good: those whose keeping saves the most reading per pass.

    ``costs``: bytes a load of each unit reads from storage (default: its size; a quantized
    unit reads ~1/4 of what it takes once decoded). Streamed units need a reserve: the
    ``depth + 1`` largest of them in flight at once. ``depth`` is ``prefetch`` unless a
    shallower window lets units be kept that save more reading (a large unit such as a tied
    embedding and head, whose keeping would otherwise be refused for the last few bytes of a
    deep window): the pager's storage hints still start reads past the window. With a budget
    at least the model's size, everything is kept.
    """
    units = sorted(sizes)
    if sum(sizes.values()) <= budget:
        return frozenset(units)
    cost = costs if costs is not None else sizes
    best: tuple[int, frozenset[int]] | None = None
    for depth in range(prefetch, min(prefetch, 1) - 1, -1):
        kept = _keep(schedule, sizes, cost, budget, depth)
        saved = sum(schedule.uses(u) * cost[u] for u in kept)
        if best is None or saved > best[0]:  # a shallower window only for strictly more
            best = (saved, kept)
    assert best is not None
    return best[1]


def _keep(schedule: Schedule, sizes: Mapping[int, int], cost: Mapping[int, int], budget: int,
          depth: int) -> frozenset[int]:
    """Greedy: most reading saved per byte kept first (each use of a streamed unit reads its
    cost again); a unit is kept only if the rest can still stream through what is left."""

    def reserve(streamed: list[int]) -> int:
        top = sorted((sizes[u] for u in streamed), reverse=True)
        return sum(top[: depth + 1]) if top else 0

    used = [u for u in sorted(sizes) if schedule.uses(u) > 0]
    # among equals the larger saves more reading per decision
    order = sorted(used, key=lambda u: (-schedule.uses(u) * cost[u] / max(1, sizes[u]),
                                        -sizes[u], u))
    kept: list[int] = []
    kept_bytes = 0
    streamed = list(order)
    for u in order:
        rest = [v for v in streamed if v != u]
        if kept_bytes + sizes[u] + reserve(rest) <= budget:
            kept.append(u)
            kept_bytes += sizes[u]
            streamed = rest
    return frozenset(kept)


def choose_victims(
    loaded: Mapping[int, int], distance: Mapping[int, float], need: int, free: int,
    *, nearer_than: float = NEVER,
) -> list[int] | None:
    """Evict the units whose next use is farthest until ``need`` bytes are free.

    ``loaded``: evictable unit -> bytes. Only units used later than ``nearer_than`` may go
    (a prefetch must never evict what is needed before the unit it fetches). Returns the
    victims, or None when even evicting all allowed units would not free enough.
    """
    if free >= need:
        return []
    victims: list[int] = []
    for u in sorted(loaded, key=lambda u: (-distance[u], u)):
        if distance[u] <= nearer_than and nearer_than != NEVER:
            break
        victims.append(u)
        free += loaded[u]
        if free >= need:
            return victims
    return None
