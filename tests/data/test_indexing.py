"""ds[...] against numpy as the reference: masks, negative indices, slices with any step,
out-of-range indices and keys that are not indices."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigstore.data import Dataset, open_dataset, write_dataset
from bigstore.errors import BigstoreError, IndexOutOfRangeError, InvalidIndexError

N = 23
X = np.arange(N, dtype=np.int64) * 10
TOK = [list(range(i % 4)) for i in range(N)]
TXT = [f"s{i}" for i in range(N)]


@pytest.fixture(scope="module")
def ds(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    p = tmp_path_factory.mktemp("idx") / "ds"
    write_dataset(p, {"x": X, "tok": [np.array(t, np.int32) for t in TOK], "txt": TXT},
                  chunk_rows=4)
    return open_dataset(p)


def _check(ds: Dataset, index: Any) -> None:
    ref = np.arange(N)[index]  # numpy decides which samples
    got = ds[index]
    if np.ndim(ref) == 0:
        assert got == {"x": X[ref], "tok": got["tok"], "txt": TXT[ref]}
        assert got["tok"].tolist() == TOK[ref]
        return
    assert np.array_equal(got["x"], X[ref]) and got["x"].shape == ref.shape
    assert [t.tolist() for t in got["tok"]] == [TOK[i] for i in ref]
    assert got["txt"] == [TXT[i] for i in ref]


GRID: list[Any] = [
    0, 7, N - 1, -1, -N, np.int32(-3), np.array(4), slice(None), slice(3, 17), slice(None, None, 5),
    slice(None, None, -1), slice(20, 2, -3), slice(-5, None), slice(100, 200), slice(5, 5),
    slice(-100, 100, 7), ..., [], [0, 0, -1, 5], np.array([22, 1], np.uint16),
    np.arange(N) % 2 == 1, [False] * N, torch.tensor([3, -4]),
]


@pytest.mark.parametrize("index", GRID, ids=[repr(v)[:24] for v in GRID])
def test_grid_like_numpy(ds: Dataset, index: Any) -> None:
    _check(ds, np.asarray(index) if isinstance(index, torch.Tensor) else index)
    if not isinstance(index, torch.Tensor):
        assert np.array_equal(ds.read(index, columns=["x"])["x"], np.atleast_1d(X[index]))


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.slices(N), st.lists(st.integers(-N, N - 1), max_size=10),
                 st.lists(st.booleans(), min_size=N, max_size=N)))
def test_property_like_numpy(ds: Dataset, index: Any) -> None:
    _check(ds, index)


BAD: list[tuple[Any, type[BigstoreError], str]] = [
    (N, IndexOutOfRangeError, "out of range for 23"),
    (-N - 1, IndexOutOfRangeError, "out of range"),
    ([1, N], IndexOutOfRangeError, "index 23"),
    (np.array([2**63], np.uint64), IndexOutOfRangeError, "out of range"),
    (1.5, InvalidIndexError, "not a sample index"),
    ("x", InvalidIndexError, r"ds.read\(indices, columns=\['x'\]\)"),
    ("image", InvalidIndexError, "has columns"),
    (None, InvalidIndexError, "newaxis"),
    (True, InvalidIndexError, "would add an axis"),
    (np.bool_(True), InvalidIndexError, "would add an axis"),
    ((1, 2), InvalidIndexError, "first axis"),
    (np.array([[1, 2], [3, 4]]), InvalidIndexError, "1-D"),
    (np.ones(N - 1, bool), InvalidIndexError, "mask"),
    (np.array([1.0]), InvalidIndexError, "float64"),
]


@pytest.mark.parametrize("index,err,match", BAD, ids=[repr(b[0])[:24] for b in BAD])
def test_refused_clearly(ds: Dataset, index: Any, err: type[BigstoreError], match: str) -> None:
    with pytest.raises(err, match=match) as e:
        ds[index]
    assert isinstance(e.value, IndexError)
    if isinstance(index, str):
        return
    with pytest.raises(err):
        ds.read(index)
