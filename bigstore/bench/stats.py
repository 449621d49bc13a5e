"""Summary statistics of repeated runs: mean, stdev, min, max, p50, p95, p99."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass

__all__ = ["Summary", "percentile", "summarize"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between order statistics (numpy's
    default), so p50 of an even count is the mean of the two middle values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class Summary:
    """Statistics of ``n`` values (stdev is the sample standard deviation; 0 for one value)."""

    n: int
    mean: float
    stdev: float
    min: float
    max: float
    p50: float
    p95: float
    p99: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        nan = math.nan
        return Summary(0, nan, nan, nan, nan, nan, nan, nan)
    return Summary(
        n=len(values), mean=statistics.fmean(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
        min=min(values), max=max(values), p50=percentile(values, 50),
        p95=percentile(values, 95), p99=percentile(values, 99),
    )
