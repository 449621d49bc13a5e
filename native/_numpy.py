"""Pure-numpy twins of the numba kernels, used when numba's JIT is disabled.

They must return exactly what the kernels return (tests compare the two).
"""

from __future__ import annotations

from typing import Any

import numpy as np

Arr = np.ndarray[Any, Any]


def chunk_spans(starts: Arr, stops: Arr, chunk_rows: int) -> tuple[Arr, Arr, Arr, Arr]:
    starts = np.asarray(starts, np.int64)
    stops = np.asarray(stops, np.int64)
    keep = stops > starts
    starts, stops = starts[keep], stops[keep]
    first = starts // chunk_rows
    last = (stops - 1) // chunk_rows
    counts = last - first + 1
    owner = np.repeat(np.arange(starts.size), counts)
    offset = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    chunk = first[owner] + offset
    lo_abs = np.maximum(starts[owner], chunk * chunk_rows)
    hi_abs = np.minimum(stops[owner], (chunk + 1) * chunk_rows)
    lengths = hi_abs - lo_abs
    dst = np.cumsum(lengths) - lengths
    return (chunk.astype(np.int64), (lo_abs - chunk * chunk_rows).astype(np.int64),
            (hi_abs - chunk * chunk_rows).astype(np.int64), dst.astype(np.int64))


def coalesce_ranges(starts: Arr, ends: Arr, max_gap: int, max_request: int) -> tuple[Arr, Arr, Arr]:
    # The request-size cap makes this a sequential scan; a plain loop is the honest numpy form.
    n = len(starts)
    group = np.empty(n, np.int64)
    m_start: list[int] = []
    m_end: list[int] = []
    for i in range(n):
        s, e = int(starts[i]), int(ends[i])
        if m_start and s - m_end[-1] <= max_gap and max(e, m_end[-1]) - m_start[-1] <= max_request:
            m_end[-1] = max(m_end[-1], e)
        else:
            m_start.append(s)
            m_end.append(e)
        group[i] = len(m_start) - 1
    return group, np.array(m_start, np.int64), np.array(m_end, np.int64)


def gather_rows(src: Arr, rows: Arr, out: Arr) -> Arr:
    np.take(src, rows, axis=0, out=out)
    return out
