"""The numbers are right: against a store whose every request costs a known time, the reported
latency percentiles and throughput fall within a stated tolerance of the truth."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from bigstore.bench import DiskOptions, percentile, run_disk, summarize
from bigstore.store import MemoryStore
from tests.bench._latency import LatencyStore

KiB = 1 << 10
# Sleeps overshoot (timer slack, a busy shared machine), never undershoot: the reported
# latency may exceed the truth by this much, and must not fall below it by more than 2%.
LATENCY_SLACK = 0.30
# Throughput adds thread start-up and scheduling on top of the requests themselves.
RATE_TOLERANCE = 0.35


def test_percentiles_match_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 100, 1001):
        xs = rng.exponential(size=n).tolist()
        for q in (0, 50, 95, 99, 100):
            assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert (s.n, s.mean, s.min, s.max, s.p50) == (4, 2.5, 1.0, 4.0, 2.5)
    assert s.stdev == pytest.approx(float(np.std([1, 2, 3, 4], ddof=1)))
    assert summarize([]).n == 0


@pytest.mark.parametrize("concurrency", [1, 4])
def test_ranged_get_latency_and_throughput_match_the_injected_truth(concurrency: int) -> None:
    part = 256 * KiB
    store = LatencyStore(MemoryStore(f"memory://lat-{uuid.uuid4().hex}"),
                         latency=0.020, bandwidth=50e6)
    truth_latency = store.request_seconds(part)  # 25.2 ms
    truth_rate = concurrency * part / truth_latency
    opts = DiskOptions(runs=2, parts=(part,), concurrency=(concurrency,), max_requests=8)
    report = run_disk(store, synthetic=8 * part, options=opts)
    (row,) = [r for r in report.rows if r.group == "ranged GET"]
    assert store.requests == 2 * 8  # every request the report counts was made
    lat = row.to_dict()["latency"]
    assert lat["n"] == 16
    for q in ("p50", "p95", "p99"):
        assert truth_latency * 0.98 <= lat[q] <= truth_latency * (1 + LATENCY_SLACK), (q, lat)
    rate = row.rate.p50
    assert abs(rate - truth_rate) <= RATE_TOLERANCE * truth_rate, (rate, truth_rate)
    assert row.nbytes == 8 * part


def test_latency_percentiles_see_a_slow_tail() -> None:
    """p50 and p99 differ when requests differ: parts of two sizes, so two latencies."""
    part = 256 * KiB
    store = LatencyStore(MemoryStore(f"memory://tail-{uuid.uuid4().hex}"),
                         latency=0.005, bandwidth=20e6)
    # 7 full parts and one short last part: the short one is the fast tail (p0), the rest p50
    size = 7 * part + 16 * KiB
    report = run_disk(store, synthetic=size,
                      options=DiskOptions(runs=1, parts=(part,), concurrency=(1,)))
    (row,) = [r for r in report.rows if r.group == "ranged GET"]
    lat = sorted(row.latencies or [])
    assert len(lat) == 8
    assert lat[0] == pytest.approx(store.request_seconds(16 * KiB), rel=LATENCY_SLACK)
    assert row.to_dict()["latency"]["p50"] == pytest.approx(store.request_seconds(part),
                                                            rel=LATENCY_SLACK)
