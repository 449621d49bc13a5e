"""Throughput benchmarking: every bigstore path against the hardware's bound and the peers.

The library behind ``bigstore bench`` (and ``benchmarks/*.py``): ``run_disk``, ``run_load``,
``run_offload``, ``run_loader`` each return a :class:`Report` (``report.to_dict()`` is the
``--json`` document; see :mod:`bigstore.bench.result`). The hardware bounds the demo uses are
re-exported here as they always were.
"""

from __future__ import annotations

from .bounds import (
    buffered_read_seconds,
    direct_read_seconds,
    disk_bound_seconds,
    drop_page_cache,
    memcpy_seconds,
    o_direct_supported,
    random_read_latencies,
    read_seconds,
    store_files,
)
from .counters import device_read_bytes, peak_rss_bytes, reset_peak_rss, resident_bytes
from .disk import DiskOptions, run_disk
from .result import SCHEMA, Check, Report, Row
from .stats import Summary, percentile, summarize

__all__ = [
    "SCHEMA", "Check", "DiskOptions", "Report", "Row", "Summary",
    "buffered_read_seconds", "device_read_bytes", "direct_read_seconds", "disk_bound_seconds",
    "drop_page_cache", "memcpy_seconds", "o_direct_supported", "peak_rss_bytes", "percentile",
    "random_read_latencies", "read_seconds", "reset_peak_rss", "resident_bytes", "run_disk",
    "store_files", "summarize",
]
