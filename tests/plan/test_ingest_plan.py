"""The ingest planner: every shard of every array has exactly one writer, and every
partition's rows are accounted for, for any partition sizes and any set of finished shards."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from bigstore.plan.ingest import ArrayRows, plan_ingest


def _check(arrays: list[ArrayRows], done: set[tuple[str, int]]) -> None:
    plan = plan_ingest(arrays, done)
    writers: dict[tuple[str, int], int] = {}
    for a in arrays:
        bounds = [0]
        for c in a.counts:
            bounds.append(bounds[-1] + c)
        by_part = {w.partition: w for w in plan.partitions}
        for p in range(len(a.counts)):
            segs = by_part[p].segments.get(a.path, ()) if p in by_part else ()
            if p in by_part:  # a computed partition's segments tile its rows exactly
                pos = bounds[p]
                for g in segs:
                    assert g.start == pos and g.stop > g.start
                    lo, hi = a.shard_span(g.shard)
                    assert lo <= g.start and g.stop <= hi
                    pos = g.stop
                assert pos == bounds[p + 1]
            for g in segs:
                if g.kind == "write":
                    key = (a.path, g.shard)
                    writers[key] = writers.get(key, 0) + 1
                    assert (g.start, g.stop) == a.shard_span(g.shard)
    for s in plan.stitches:
        key = (s.path, s.shard)
        writers[key] = writers.get(key, 0) + 1
        a = next(x for x in arrays if x.path == s.path)
        pieces = []
        for p in s.parts:
            w = next(x for x in plan.partitions if x.partition == p)
            pieces += [g for g in w.segments[s.path] if g.kind == "piece" and g.shard == s.shard]
        assert [(g.start, g.stop) for g in pieces] == sorted((g.start, g.stop) for g in pieces)
        assert pieces[0].start == s.start and pieces[-1].stop == s.stop
        assert all(x.stop == y.start for x, y in pairwise(pieces))
        assert len(s.parts) >= 2
    expected = {(a.path, s) for a in arrays for s in range(a.n_shards)} - done
    assert set(writers) == expected and all(v == 1 for v in writers.values())
    assert plan.shards == len(expected)


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=0, max_size=12),
    elems=st.lists(st.integers(0, 90), min_size=12, max_size=12),
    shard_a=st.integers(1, 50),
    shard_b=st.integers(1, 70),
    done_bits=st.integers(0, 2**20),
)
def test_one_writer_per_shard(
    counts: list[int], elems: list[int], shard_a: int, shard_b: int, done_bits: int
) -> None:
    arrays = [
        ArrayRows("x", tuple(counts), shard_a),
        ArrayRows("tok/values", tuple(elems[: len(counts)]), shard_b),
    ]
    done = set()
    for i, a in enumerate(arrays):
        for s in range(a.n_shards):
            if done_bits >> ((i * 10 + s) % 20) & 1:
                done.add((a.path, s))
    _check(arrays, done)


def test_examples() -> None:
    # one partition holding everything: every shard is its own, nothing to stitch
    plan = plan_ingest([ArrayRows("x", (10,), 4)])
    assert plan.stitches == () and plan.partitions[0].count("write") == 3
    # shards straddling partitions are stitched; a finished shard is skipped; a partition
    # with nothing left to do is not computed
    plan = plan_ingest([ArrayRows("x", (3, 3, 3, 3), 6)], done={("x", 0)})
    assert [(s.shard, s.parts) for s in plan.stitches] == [(1, (2, 3))]
    assert [w.partition for w in plan.partitions] == [2, 3]
    # empty partitions hold no rows of anything
    plan = plan_ingest([ArrayRows("x", (0, 4, 0, 4, 0), 4)])
    assert [w.partition for w in plan.partitions] == [1, 3] and plan.stitches == ()
