"""The numba kernels and their numpy twins agree; the package works with the JIT disabled."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bigstore_native
import numpy as np
from bigstore_native import _jit, _numpy
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=60, deadline=None)
@given(
    ranges=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 60)), max_size=8),
    chunk_rows=st.integers(1, 70),
)
def test_chunk_spans_matches_numpy(ranges: list[tuple[int, int]], chunk_rows: int) -> None:
    starts = np.array([s for s, _ in ranges], np.int64)
    stops = np.array([s + n for s, n in ranges], np.int64)
    a = _jit.chunk_spans(starts, stops, chunk_rows)
    b = _numpy.chunk_spans(starts, stops, chunk_rows)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    chunk, lo, hi, dst = a
    # the pieces tile the requested rows exactly, in order, and land back to back
    rows = np.concatenate([np.arange(c * chunk_rows + a_, c * chunk_rows + b_)
                           for c, a_, b_ in zip(chunk, lo, hi)] or [np.empty(0, np.int64)])
    assert np.array_equal(dst, np.cumsum(hi - lo) - (hi - lo))
    want = np.concatenate([np.arange(s, e) for s, e in zip(starts, stops)] or [np.empty(0)])
    assert np.array_equal(rows, want)
    assert np.all(hi <= chunk_rows) and np.all(lo < hi)


@settings(max_examples=60, deadline=None)
@given(
    spans=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 500)), max_size=20),
    max_gap=st.integers(0, 300),
    max_request=st.integers(1, 3000),
)
def test_coalesce_matches_numpy(spans: list[tuple[int, int]], max_gap: int,
                                max_request: int) -> None:
    spans.sort()
    starts = np.array([s for s, _ in spans], np.int64)
    ends = np.array([s + n for s, n in spans], np.int64)
    a = _jit.coalesce_ranges(starts, ends, max_gap, max_request)
    b = _numpy.coalesce_ranges(starts, ends, max_gap, max_request)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    group, m_start, m_end = a
    for i, g in enumerate(group):  # every range lies inside its merged request
        assert m_start[g] <= starts[i] and ends[i] <= m_end[g]


def test_gather_rows_matches_take() -> None:
    src = np.random.default_rng(0).integers(0, 255, (1000, 33), dtype=np.uint8)
    rows = np.random.default_rng(1).integers(0, 1000, 257)
    out = np.empty((257, 33), np.uint8)
    assert np.array_equal(_jit.gather_rows(src, rows, out), src[rows])
    assert bigstore_native.JIT_ENABLED


def test_everything_works_with_the_jit_disabled(tmp_path: Path) -> None:
    code = (
        "import bigstore, bigstore_native, torch;"
        "assert not bigstore_native.JIT_ENABLED;"
        f"w = torch.randn(300, 64); bigstore.save({{'w': w}}, {str(tmp_path / 's')!r},"
        " chunk_bytes=4096);"
        f"s = bigstore.open({str(tmp_path / 's')!r});"
        "assert torch.equal(s['w'][17:233].torch(), w[17:233]); print('ok')"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
