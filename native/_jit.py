"""numba kernels: arrays and ints in, arrays out. No I/O, no Python objects."""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def chunk_spans(starts, stops, chunk_rows):  # type: ignore[no-untyped-def]
    n = 0
    for i in range(starts.shape[0]):
        if stops[i] > starts[i]:
            n += (stops[i] - 1) // chunk_rows - starts[i] // chunk_rows + 1
    chunk = np.empty(n, np.int64)
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    dst = np.empty(n, np.int64)
    k = 0
    out_row = 0
    for i in range(starts.shape[0]):
        s = starts[i]
        e = stops[i]
        while s < e:
            c = s // chunk_rows
            end = min(e, (c + 1) * chunk_rows)
            chunk[k] = c
            lo[k] = s - c * chunk_rows
            hi[k] = end - c * chunk_rows
            dst[k] = out_row
            out_row += end - s
            s = end
            k += 1
    return chunk, lo, hi, dst


@nb.njit(cache=True, nogil=True)
def coalesce_ranges(starts, ends, max_gap, max_request):  # type: ignore[no-untyped-def]
    n = starts.shape[0]
    group = np.empty(n, np.int64)
    m_start = np.empty(n, np.int64)
    m_end = np.empty(n, np.int64)
    g = -1
    for i in range(n):
        if (
            g >= 0
            and starts[i] - m_end[g] <= max_gap
            and max(ends[i], m_end[g]) - m_start[g] <= max_request
        ):
            m_end[g] = max(m_end[g], ends[i])
        else:
            g += 1
            m_start[g] = starts[i]
            m_end[g] = ends[i]
        group[i] = g
    return group, m_start[: g + 1].copy(), m_end[: g + 1].copy()


@nb.njit(cache=True, nogil=True, parallel=True)
def gather_rows(src, rows, out):  # type: ignore[no-untyped-def]
    for i in nb.prange(rows.shape[0]):
        out[i, :] = src[rows[i], :]
    return out
