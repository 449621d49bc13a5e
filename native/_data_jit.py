"""numba kernels for datasets: sample order, read plans and row gathers. Arrays in, arrays out.

All are serial and ``nogil``: the loader runs them from several threads at once (and inside
forked DataLoader workers), where numba's parallel threading layers are neither re-entrant nor
fork-safe. Parallelism comes from the callers' threads instead.
"""

from __future__ import annotations

import numba as nb
import numpy as np


@nb.njit(cache=True, nogil=True)
def window_samples(chunks, chunk_rows, num_rows):  # type: ignore[no-untyped-def]
    """The sample ids of ``chunks`` (in that order), each chunk's rows in order."""
    n = 0
    for i in range(chunks.shape[0]):
        n += min(chunk_rows, num_rows - chunks[i] * chunk_rows)
    out = np.empty(n, np.int64)
    k = 0
    for i in range(chunks.shape[0]):
        start = chunks[i] * chunk_rows
        stop = min(start + chunk_rows, num_rows)
        for s in range(start, stop):
            out[k] = s
            k += 1
    return out


@nb.njit(cache=True, nogil=True)
def split_by_chunk(samples, chunk_rows, n_chunks):  # type: ignore[no-untyped-def]
    """(distinct chunks in ascending order, each sample's index into them, row in its chunk)."""
    seen = np.full(n_chunks, -1, np.int64)
    n = samples.shape[0]
    count = 0
    for i in range(n):
        c = samples[i] // chunk_rows
        if seen[c] < 0:
            seen[c] = 0
            count += 1
    uniq = np.empty(count, np.int64)
    k = 0
    for c in range(n_chunks):
        if seen[c] == 0:
            seen[c] = k
            uniq[k] = c
            k += 1
    which = np.empty(n, np.int64)
    rows = np.empty(n, np.int64)
    for i in range(n):
        c = samples[i] // chunk_rows
        which[i] = seen[c]
        rows[i] = samples[i] - c * chunk_rows
    return uniq, which, rows


@nb.njit(cache=True, nogil=True)
def gather_chunk_rows(pool, slots, rows, out):  # type: ignore[no-untyped-def]
    """out[i] = pool[slots[i], rows[i]] for a (n_slots, chunk_rows, row_bytes) uint8 pool."""
    for i in range(slots.shape[0]):
        out[i, :] = pool[slots[i], rows[i], :]
    return out


@nb.njit(cache=True, nogil=True)
def new_chunks(samples, chunk_rows, done, mark):  # type: ignore[no-untyped-def]
    """Distinct chunks of ``samples`` (in first-seen order) whose ``done`` flag is 0.

    ``mark`` is caller-owned scratch of ``done``'s length, all zero; it is zero again on return.
    """
    out = np.empty(samples.shape[0], np.int64)
    k = 0
    for i in range(samples.shape[0]):
        c = samples[i] // chunk_rows
        if done[c] == 0 and mark[c] == 0:
            mark[c] = 1
            out[k] = c
            k += 1
    for i in range(k):
        mark[out[i]] = 0
    return out[:k]


@nb.njit(cache=True, nogil=True)
def gather_mapped(region, chunk_base, samples, chunk_rows, row_bytes, out):  # type: ignore[no-untyped-def]
    """out[i] = the row of sample ``samples[i]`` in a flat uint8 ``region`` where chunk c's
    rows start at byte ``chunk_base[c]`` (rows of ``row_bytes`` back to back)."""
    for i in range(samples.shape[0]):
        s = samples[i]
        c = s // chunk_rows
        off = chunk_base[c] + (s - c * chunk_rows) * row_bytes
        dst = out[i]
        src = region[off : off + row_bytes]
        for j in range(row_bytes):  # contiguous 1-D views: LLVM vectorises this (6x a slice copy)
            dst[j] = src[j]
    return out
