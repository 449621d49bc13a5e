"""Sample order: pure functions of (seed, epoch, layout) and of how the epoch is split.

The epoch's order ``G`` (a permutation of all samples) is built lazily, window by window: the
chunks are permuted, cut into windows of ``window`` consecutive chunks of that permutation, and
the samples of each window are shuffled together. Reads stay chunk-local (a window's chunks are
read once) while every batch mixes up to ``window`` chunks.

Splitting: a *stream* is a list of runs of positions in ``G``. A :class:`Split` (world size R,
workers per rank K, batch size B, drop_last) cuts a stream into R contiguous rank spans, and each
rank span into K contiguous worker spans of whole batches (a single-process loader has K = 1).
A rank's batches are delivered round-robin over its workers, as torch's DataLoader does, so the
rank's progress is one integer: batches delivered. The samples not yet delivered form the next
stream; resuming with another split (an elastic restart) splits that stream again. The resume
state is therefore the seed, the epoch and one (split, batches) pair per restart.

drop_last=False: every sample exactly once per epoch; rank spans differ by at most one sample,
so ranks may get one batch more than others, and the last batch of a span may be short.
drop_last=True: each rank gets the same number of full batches; the fewer than R*B samples left
at the end of the stream are not delivered this epoch (which ones changes with the epoch).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import bigstore_native.data as kernels
import numpy as np

from ..errors import BigstoreError

__all__ = [
    "OrderSpec",
    "Order",
    "Split",
    "Level",
    "consumer_spans",
    "consumed_per_worker",
    "remaining_stream",
    "sub_stream",
    "consumer_stream",
    "Runs",
]

Arr = np.ndarray[Any, Any]
Runs = Arr  # (k, 2) int64: [start in G, length]


@dataclass(frozen=True)
class OrderSpec:
    """What the epoch's order depends on."""

    num_rows: int
    chunk_rows: int
    seed: int = 0
    epoch: int = 0
    shuffle: bool = False
    window: int = 64  # chunks shuffled together

    def __post_init__(self) -> None:
        if self.window < 1:
            raise BigstoreError(f"the shuffle window must be at least 1 chunk, got {self.window}")
        if self.seed < 0 or self.epoch < 0:
            raise BigstoreError("seed and epoch must be non-negative integers")

    @property
    def n_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_rows) if self.num_rows else 0


class Order:
    """The lazily built permutation G of one epoch (caches a few windows; thread-confined)."""

    def __init__(self, spec: OrderSpec, cached_windows: int = 4) -> None:
        self.spec = spec
        n = spec.n_chunks
        if spec.shuffle:
            rng = np.random.default_rng([spec.seed, spec.epoch, 0])
            self.chunks = rng.permutation(n).astype(np.int64)
        else:
            self.chunks = np.arange(n, dtype=np.int64)
        sizes = np.full(n, spec.chunk_rows, np.int64)
        if n:
            sizes[-1] = spec.num_rows - (n - 1) * spec.chunk_rows
        per_chunk = sizes[self.chunks]
        n_windows = -(-n // spec.window)
        window_sizes = np.add.reduceat(per_chunk, np.arange(0, n, spec.window)) if n else per_chunk
        self.starts = np.zeros(n_windows + 1, np.int64)
        np.cumsum(window_sizes, out=self.starts[1:])
        self._cache: OrderedDict[int, Arr] = OrderedDict()
        self._cached_windows = cached_windows

    def window(self, w: int) -> Arr:
        got = self._cache.get(w)
        if got is not None:
            self._cache.move_to_end(w)
            return got
        spec = self.spec
        chunks = self.chunks[w * spec.window : (w + 1) * spec.window]
        samples = kernels.window_samples(chunks, spec.chunk_rows, spec.num_rows)
        if spec.shuffle:
            rng = np.random.default_rng([spec.seed, spec.epoch, 1, w])
            samples = samples[rng.permutation(samples.shape[0])]
        self._cache[w] = samples
        if len(self._cache) > self._cached_windows:
            self._cache.popitem(last=False)
        return samples

    def samples(self, runs: Runs) -> Arr:
        """Sample ids at the G positions of ``runs``, in order."""
        if not self.spec.shuffle:
            return _positions(runs)
        parts = []
        for start, length in runs.tolist():
            pos, stop = start, start + length
            while pos < stop:
                w = int(np.searchsorted(self.starts, pos, side="right")) - 1
                w_end = int(self.starts[w + 1])
                take = min(stop, w_end) - pos
                base = pos - int(self.starts[w])
                parts.append(self.window(w)[base : base + take])
                pos += take
        return np.concatenate(parts) if parts else np.empty(0, np.int64)


def _positions(runs: Runs) -> Arr:
    if not len(runs):
        return np.empty(0, np.int64)
    return np.concatenate([np.arange(s, s + n, dtype=np.int64) for s, n in runs.tolist()])


@dataclass(frozen=True)
class Split:
    """How one stream is divided: ``world`` ranks x ``workers`` per rank, batches of ``batch``."""

    world: int = 1
    workers: int = 1
    batch: int = 1
    drop_last: bool = False

    def __post_init__(self) -> None:
        if self.world < 1 or self.workers < 1 or self.batch < 1:
            raise BigstoreError(f"world size, workers and batch size must be >= 1: {self}")

    def to_list(self) -> list[int]:
        return [self.world, self.workers, self.batch, int(self.drop_last)]

    @classmethod
    def from_list(cls, v: list[int]) -> Split:
        return cls(int(v[0]), int(v[1]), int(v[2]), bool(v[3]))


@dataclass(frozen=True)
class Level:
    """One split of a stream and the batches each rank has taken from it."""

    split: Split
    batches: int


def consumer_spans(total: int, split: Split) -> tuple[Arr, Arr, int]:
    """For a stream of ``total`` samples: per consumer (rank-major: r * K + w) its
    [start, end) in the stream and its batch count; and where the delivered part ends."""
    R, K, B = split.world, split.workers, split.batch
    if split.drop_last:
        per = (total // (R * B)) * B
        rank_start = np.arange(R, dtype=np.int64) * per
        rank_len = np.full(R, per, np.int64)
    else:
        q, rem = divmod(total, R)
        rank_len = q + (np.arange(R) < rem).astype(np.int64)
        rank_start = np.concatenate([[0], np.cumsum(rank_len)[:-1]]).astype(np.int64)
    spans = np.empty((R * K, 2), np.int64)
    counts = np.empty(R * K, np.int64)
    for r in range(R):
        L = int(rank_len[r])
        m = L // B if split.drop_last else -(-L // B)
        first = 0
        for w in range(K):
            mw = m // K + (1 if w < m % K else 0)
            lo = int(rank_start[r]) + first * B
            hi = int(rank_start[r]) + min((first + mw) * B, L)
            spans[r * K + w] = (lo, hi)
            counts[r * K + w] = mw
            first += mw
    used = int(rank_start[-1] + rank_len[-1]) if R else 0
    return spans, counts, used


def consumed_per_worker(batches: int, counts: Arr) -> Arr:
    """Batches taken from each worker of one rank after the rank delivered ``batches``
    round-robin (worker w's j-th batch is the rank's batch j*K + w; earlier workers hold the
    extra batches, so exhausted workers only ever drop out at the end of a round)."""
    K = counts.shape[0]
    w = np.arange(K, dtype=np.int64)
    taken = np.maximum(0, -(-(batches - w) // K))
    return np.minimum(taken, counts)


def sub_stream(runs: Runs, a: int, b: int) -> Runs:
    """Positions [a, b) of the stream ``runs``."""
    out = []
    pos = 0
    for start, length in runs.tolist():
        lo, hi = max(a, pos), min(b, pos + length)
        if hi > lo:
            out.append((start + lo - pos, hi - lo))
        pos += length
        if pos >= b:
            break
    return np.array(out, np.int64).reshape(-1, 2)


def stream_len(runs: Runs) -> int:
    return int(runs[:, 1].sum()) if len(runs) else 0


def remaining_stream(runs: Runs, level: Level) -> Runs:
    """The samples of ``runs`` not delivered at ``level``, in order: each consumer's rest,
    consumers in rank-major order, then the tail drop_last left undelivered."""
    split = level.split
    spans, counts, used = consumer_spans(stream_len(runs), split)
    K = split.workers
    parts = []
    for r in range(split.world):
        taken = consumed_per_worker(level.batches, counts[r * K : (r + 1) * K])
        for w in range(K):
            lo, hi = spans[r * K + w]
            parts.append(sub_stream(runs, int(min(hi, lo + taken[w] * split.batch)), int(hi)))
    parts.append(sub_stream(runs, used, stream_len(runs)))
    merged = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    return _merge(merged)


def _merge(runs: Runs) -> Runs:
    out: list[list[int]] = []
    for s, n in runs.tolist():
        if n <= 0:
            continue
        if out and out[-1][0] + out[-1][1] == s:
            out[-1][1] += n
        else:
            out.append([s, n])
    return np.array(out, np.int64).reshape(-1, 2)


def consumer_stream(
    num_rows: int, history: list[Level], split: Split, rank: int, worker: int
) -> tuple[Runs, int]:
    """(the runs of G this consumer delivers this epoch, its batch count), given the earlier
    levels of ``history`` (each one fully replayed) and the current ``split``."""
    runs = np.array([[0, num_rows]], np.int64) if num_rows else np.empty((0, 2), np.int64)
    for level in history:
        runs = remaining_stream(runs, level)
    spans, counts, _ = consumer_spans(stream_len(runs), split)
    c = rank * split.workers + worker
    lo, hi = spans[c]
    return sub_stream(runs, int(lo), int(hi)), int(counts[c])
