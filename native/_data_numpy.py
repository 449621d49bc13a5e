"""Pure-numpy twins of ``_data_jit`` (used when numba's JIT is disabled); same results."""

from __future__ import annotations

from typing import Any

import numpy as np

Arr = np.ndarray[Any, Any]


def window_samples(chunks: Arr, chunk_rows: int, num_rows: int) -> Arr:
    parts = [
        np.arange(c * chunk_rows, min((c + 1) * chunk_rows, num_rows), dtype=np.int64)
        for c in np.asarray(chunks, np.int64).tolist()
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


def split_by_chunk(samples: Arr, chunk_rows: int, n_chunks: int) -> tuple[Arr, Arr, Arr]:
    chunk = np.asarray(samples, np.int64) // chunk_rows
    uniq, which = np.unique(chunk, return_inverse=True)
    rows = np.asarray(samples, np.int64) - chunk * chunk_rows
    return uniq.astype(np.int64), which.astype(np.int64).reshape(-1), rows


def gather_chunk_rows(pool: Arr, slots: Arr, rows: Arr, out: Arr) -> Arr:
    out[...] = pool[slots, rows]
    return out


def new_chunks(samples: Arr, chunk_rows: int, done: Arr, mark: Arr) -> Arr:
    chunk = np.asarray(samples, np.int64) // chunk_rows
    uniq, first = np.unique(chunk, return_index=True)
    uniq = uniq[np.argsort(first, kind="stable")]
    return uniq[done[uniq] == 0].astype(np.int64)


def gather_mapped(
    region: Arr, chunk_base: Arr, samples: Arr, chunk_rows: int, row_bytes: int, out: Arr
) -> Arr:
    s = np.asarray(samples, np.int64)
    c = s // chunk_rows
    off = chunk_base[c] + (s - c * chunk_rows) * row_bytes
    out[...] = region[off[:, None] + np.arange(row_bytes, dtype=np.int64)[None, :]]
    return out
