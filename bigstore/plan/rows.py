"""Rows of an array -> the chunks that hold them. Pure; the arithmetic runs in ``native``."""

from __future__ import annotations

from dataclasses import dataclass

import bigstore_native as native
import numpy as np

from ..format import ArrayLayout

__all__ = ["ChunkPiece", "plan_rows"]


@dataclass(frozen=True)
class ChunkPiece:
    """Rows [lo, hi) of chunk ``chunk`` land at output row ``dst``."""

    chunk: int
    lo: int
    hi: int
    dst: int


def plan_rows(layout: ArrayLayout, start: int, stop: int) -> list[ChunkPiece]:
    """The chunk pieces covering rows [start, stop) of ``layout``, in output order."""
    if layout.n_chunks == 0 or layout.row_bytes == 0 or stop <= start:
        return []
    if not layout.shape:
        return [ChunkPiece(0, 0, 1, 0)]
    chunk, lo, hi, dst = native.chunk_spans(
        np.array([start], np.int64), np.array([stop], np.int64), layout.chunk_rows
    )
    return [ChunkPiece(int(c), int(a), int(b), int(d)) for c, a, b, d in zip(chunk, lo, hi, dst)]
