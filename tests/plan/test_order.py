"""Sample order and splitting: exactly once, deterministic, resumable, elastic (pure)."""

from __future__ import annotations

import bigstore_native._data_jit as jit
import bigstore_native._data_numpy as twin
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from bigstore.data.loader import batch_samples, worker_batches
from bigstore.plan.order import Level, Order, OrderSpec, Split, consumed_per_worker


def _delivered(
    spec: OrderSpec, history: list[Level], split: Split, batches: int
) -> list[np.ndarray]:
    """Every batch each (rank, worker) still delivers, as the loaders would."""
    out: list[np.ndarray] = []
    order = Order(spec)
    for r in range(split.world):
        for w in range(split.workers):
            runs, first, count = worker_batches(spec, history, split, batches, r, w)
            out.extend(batch_samples(order, runs, split.batch, first, count))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 700),
    chunk=st.integers(1, 64),
    world=st.integers(1, 4),
    workers=st.integers(1, 3),
    batch=st.integers(1, 40),
    drop_last=st.booleans(),
    shuffle=st.booleans(),
    window=st.integers(1, 5),
    seed=st.integers(0, 3),
)
def test_every_sample_exactly_once(
    n: int,
    chunk: int,
    world: int,
    workers: int,
    batch: int,
    drop_last: bool,
    shuffle: bool,
    window: int,
    seed: int,
) -> None:
    spec = OrderSpec(n, chunk, seed, 0, shuffle, window)
    split = Split(world, workers, batch, drop_last)
    batches = _delivered(spec, [], split, 0)
    got = np.concatenate(batches) if batches else np.empty(0, np.int64)
    assert len(np.unique(got)) == len(got)  # never twice
    if not drop_last:
        assert sorted(got.tolist()) == list(range(n))
        assert all(0 < len(b) <= batch for b in batches)
    else:
        assert len(got) == (n // (world * batch)) * world * batch
        assert all(len(b) == batch for b in batches)
        per_rank = [
            sum(worker_batches(spec, [], split, 0, r, w)[2] for w in range(workers))
            for r in range(world)
        ]
        assert len(set(per_rank)) == 1  # same number of batches on every rank


def test_deterministic_and_seed_epoch_dependent() -> None:
    def order(seed: int, epoch: int) -> np.ndarray:
        return np.concatenate(
            _delivered(OrderSpec(5000, 50, seed, epoch, True, 8), [], Split(1, 1, 100), 0)
        )

    a = order(0, 0)
    assert (a == order(0, 0)).all()
    assert not (a == order(1, 0)).all() and not (a == order(0, 1)).all()
    assert sorted(a.tolist()) == list(range(5000))
    # chunk-local: the first 8 chunks' worth of samples comes from exactly 8 chunks
    assert len(np.unique(a[:400] // 50)) == 8
    seq = np.concatenate(_delivered(OrderSpec(5000, 50, 0, 0, False, 8), [], Split(1, 1, 100), 0))
    assert (seq == np.arange(5000)).all()


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 400),
    world=st.integers(1, 3),
    workers=st.integers(1, 3),
    world2=st.integers(1, 4),
    workers2=st.integers(1, 3),
    batch=st.integers(1, 17),
    frac=st.floats(0, 1),
    frac2=st.floats(0, 1),
    drop_last=st.booleans(),
)
def test_elastic_resume_covers_rest_exactly_once(
    n: int,
    world: int,
    workers: int,
    world2: int,
    workers2: int,
    batch: int,
    frac: float,
    frac2: float,
    drop_last: bool,
) -> None:
    spec = OrderSpec(n, 7, 3, 2, True, 3)
    s1, s2, s3 = (
        Split(world, workers, batch, drop_last),
        Split(world2, workers2, batch, drop_last),
        Split(2, 1, batch, False),
    )
    full = np.concatenate(_delivered(spec, [], s1, 0) or [np.empty(0, np.int64)])
    per_rank = max(worker_batches(spec, [], s1, 0, 0, w)[2] for w in range(workers)) * workers
    k1 = int(frac * per_rank)
    seen1 = np.concatenate(_first_batches(spec, [], s1, k1) or [np.empty(0, np.int64)])
    hist = [Level(s1, k1)]
    per_rank2 = max(worker_batches(spec, hist, s2, 0, 0, w)[2] for w in range(workers2)) * workers2
    k2 = int(frac2 * per_rank2)
    seen2 = np.concatenate(_first_batches(spec, hist, s2, k2) or [np.empty(0, np.int64)])
    rest = np.concatenate(
        _delivered(spec, [*hist, Level(s2, k2)], s3, 0) or [np.empty(0, np.int64)]
    )
    allseen = np.concatenate([seen1, seen2, rest])
    assert len(np.unique(allseen)) == len(allseen)
    assert (
        sorted(allseen.tolist()) == list(range(n)) if not drop_last else set(full) <= set(allseen)
    )


def _first_batches(spec: OrderSpec, hist: list[Level], split: Split, k: int) -> list[np.ndarray]:
    """The first ``k`` batches each rank delivers (round-robin over its workers)."""
    out: list[np.ndarray] = []
    order = Order(spec)
    for r in range(split.world):
        counts = np.array(
            [worker_batches(spec, hist, split, 0, r, w)[2] for w in range(split.workers)]
        )
        taken = consumed_per_worker(k, counts)
        for w in range(split.workers):
            runs, _, _ = worker_batches(spec, hist, split, 0, r, w)
            out.extend(batch_samples(order, runs, split.batch, 0, int(taken[w])))
    return out


def test_kernels_match_numpy_twins() -> None:
    rng = np.random.default_rng(0)
    chunks = rng.permutation(13).astype(np.int64)
    assert (jit.window_samples(chunks, 7, 88) == twin.window_samples(chunks, 7, 88)).all()
    s = rng.integers(0, 88, 50).astype(np.int64)
    for a, b in zip(jit.split_by_chunk(s, 7, 13), twin.split_by_chunk(s, 7, 13)):
        assert (a == b).all()
    pool = rng.integers(0, 255, (4, 7, 3)).astype(np.uint8)
    slots, rows = rng.integers(0, 4, 20), rng.integers(0, 7, 20)
    o1, o2 = np.empty((20, 3), np.uint8), np.empty((20, 3), np.uint8)
    assert (
        jit.gather_chunk_rows(pool, slots, rows, o1)
        == twin.gather_chunk_rows(pool, slots, rows, o2)
    ).all()
