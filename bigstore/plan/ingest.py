"""Pure planner of a distributed dataset write: partitions' rows -> whole shards, one writer each.

Every array of a dataset is a sequence of rows cut into shards of ``shard_rows`` (the last one
shorter). A distributed write computes each partition of the source once and must never let two
tasks write one shard object (concurrent partial writes to one Zarr shard lose data). Given how
many rows each partition adds to each array (a prefix sum gives its global row range), the plan
says, per partition and array, what happens to each run of its rows:

* ``write``: a whole shard lies inside this partition's rows: this partition's task writes it;
* ``piece``: a shard straddles partitions: this partition's rows of it are handed to one
  *stitch* task, which alone writes that shard from the pieces of every partition it spans;
* ``skip``: the shard is already done (a resumed job found it staged and verified).

So each shard has exactly one writer by construction (its owning partition or its stitch),
whatever the partition sizes. A partition with nothing but ``skip`` runs is not computed at all.
No I/O here: the result is the plan the executor (``bigstore.data.ingest``) runs.
"""

from __future__ import annotations

from collections.abc import Sequence, Set
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Literal

__all__ = ["ArrayRows", "IngestPlan", "PartitionWork", "Segment", "Stitch", "plan_ingest"]


@dataclass(frozen=True)
class ArrayRows:
    """One array: the rows each partition adds to it (in partition order), its shard size."""

    path: str
    counts: tuple[int, ...]
    shard_rows: int

    @property
    def total(self) -> int:
        return sum(self.counts)

    @property
    def n_shards(self) -> int:
        return -(-self.total // self.shard_rows)

    def shard_span(self, s: int) -> tuple[int, int]:
        return s * self.shard_rows, min((s + 1) * self.shard_rows, self.total)


@dataclass(frozen=True)
class Segment:
    """Global rows [start, stop) of one array, all in shard ``shard``."""

    kind: Literal["write", "piece", "skip"]
    shard: int
    start: int
    stop: int


@dataclass(frozen=True)
class PartitionWork:
    """What partition ``partition``'s task does: per array, segments tiling its rows in order."""

    partition: int
    segments: dict[str, tuple[Segment, ...]] = field(default_factory=dict)

    def count(self, kind: str) -> int:
        return sum(1 for segs in self.segments.values() for g in segs if g.kind == kind)


@dataclass(frozen=True)
class Stitch:
    """Shard ``shard`` of array ``path`` (rows [start, stop)), written from the pieces of
    ``parts``, in that order."""

    path: str
    shard: int
    start: int
    stop: int
    parts: tuple[int, ...]


@dataclass(frozen=True)
class IngestPlan:
    partitions: tuple[PartitionWork, ...]  # only partitions with something to write or hand on
    stitches: tuple[Stitch, ...]
    shards: int  # shards to write in all (written by partitions + stitches)
    done: int  # shards already done (skipped)


def plan_ingest(
    arrays: Sequence[ArrayRows], done: Set[tuple[str, int]] = frozenset()
) -> IngestPlan:
    """The plan for ``arrays`` (all with the same number of partitions); ``done`` holds the
    (path, shard) pairs already written and verified."""
    n_parts = {len(a.counts) for a in arrays}
    if len(n_parts) > 1:
        raise ValueError(f"arrays disagree on the number of partitions: {sorted(n_parts)}")
    n = n_parts.pop() if n_parts else 0
    per_part: list[dict[str, list[Segment]]] = [{} for _ in range(n)]
    stitches: list[Stitch] = []
    to_write = skipped = 0
    for a in arrays:
        if a.shard_rows < 1:
            raise ValueError(f"array {a.path!r}: shard_rows must be positive")
        bounds = [0, *accumulate(a.counts)]
        p = 0
        for s in range(a.n_shards):
            lo, hi = a.shard_span(s)
            while bounds[p + 1] <= lo:  # the first partition holding row ``lo``
                p += 1
            q = p
            owners = []
            while q < n and bounds[q] < hi:
                if bounds[q + 1] > bounds[q]:  # empty partitions hold no row of it
                    owners.append(q)
                q += 1
            is_done = (a.path, s) in done
            skipped += is_done
            to_write += not is_done
            if len(owners) == 1:
                kind: Literal["write", "piece", "skip"] = "skip" if is_done else "write"
                per_part[owners[0]].setdefault(a.path, []).append(Segment(kind, s, lo, hi))
                continue
            for o in owners:
                seg = Segment("skip" if is_done else "piece", s, max(lo, bounds[o]),
                              min(hi, bounds[o + 1]))
                per_part[o].setdefault(a.path, []).append(seg)
            if not is_done:
                stitches.append(Stitch(a.path, s, lo, hi, tuple(owners)))
    work = tuple(
        PartitionWork(i, {k: tuple(v) for k, v in segs.items()})
        for i, segs in enumerate(per_part)
        if any(g.kind != "skip" for v in segs.values() for g in v)
    )
    return IngestPlan(work, tuple(stitches), to_write, skipped)
