"""select_rows against numpy: every index numpy and bigstore both accept selects the same rows;
the ones bigstore refuses raise IndexError subclasses of BigstoreError."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bigstore.errors import BigstoreError, IndexOutOfRangeError, InvalidIndexError
from bigstore.plan.index import select_rows

N = 11
REF = np.arange(N) * 10

VALID: list[Any] = [
    0, 5, N - 1, -1, -N, np.int8(3), np.uint64(4), np.array(7), torch.tensor(2),
    slice(None), slice(2, 9), slice(None, None, 3), slice(None, None, -1), slice(-2, 1, -4),
    slice(100, -100, -1), slice(-100, 100, 2), slice(5, 5), slice(8, 2),
    ..., [], [3, 3, -1, 0], (np.arange(N) % 3 == 0), [True] * N, np.array([], np.int64),
    np.array([1, 2], np.uint8), torch.tensor([4, -2]), torch.arange(N) > 4,
    np.array([10], np.uint64),
]


@pytest.mark.parametrize("index", VALID, ids=[repr(v)[:30] for v in VALID])
def test_valid_indices_select_what_numpy_selects(index: Any) -> None:
    rows = select_rows(index, N)
    want = REF[np.asarray(index) if isinstance(index, torch.Tensor) else index]
    got = REF[rows.rows()].reshape(rows.shape)
    assert got.shape == np.shape(want) and np.array_equal(got, want)
    assert rows.scalar == (np.ndim(want) == 0)


OUT_OF_RANGE: list[Any] = [N, -N - 1, 2**70, [0, N], np.array([-N - 1]),
                           np.array([2**64 - 1], np.uint64), torch.tensor([N])]
REFUSED: list[Any] = [
    1.5, np.float64(2.0), "x", b"x", None, True, np.bool_(False), (1, 2), (slice(None), 0),
    [1.0, 2.0], np.array([[1, 2]]), np.ones(N - 1, bool), np.ones((N, 1), bool),
    slice(0, 5, 0), slice(0.5, 3), object(), ["a"], {1: 2},
]


@pytest.mark.parametrize("index", OUT_OF_RANGE, ids=[repr(v)[:30] for v in OUT_OF_RANGE])
def test_out_of_range(index: Any) -> None:
    with pytest.raises(IndexOutOfRangeError, match="out of range") as e:
        select_rows(index, N)
    assert isinstance(e.value, IndexError) and isinstance(e.value, BigstoreError)


@pytest.mark.parametrize("index", REFUSED, ids=[repr(v)[:30] for v in REFUSED])
def test_refused_clearly(index: Any) -> None:
    with pytest.raises(InvalidIndexError) as e:
        select_rows(index, N)
    assert isinstance(e.value, IndexError) and isinstance(e.value, TypeError)
    assert isinstance(e.value, BigstoreError)


def test_nd_integer_arrays_when_allowed() -> None:
    idx = np.array([[1, -1], [0, 2]])
    rows = select_rows(idx, N, nd=True)
    assert rows.shape == (2, 2) and np.array_equal(REF[rows.rows()].reshape(2, 2), REF[idx])


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 40).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.one_of(
                st.slices(max(n, 1)),
                st.lists(st.integers(-n, n - 1), max_size=8) if n else st.just([]),
                st.lists(st.booleans(), min_size=n, max_size=n),
            ),
        )
    )
)
def test_property_like_numpy(case: tuple[int, Any]) -> None:
    n, index = case
    ref = np.arange(n)
    want = ref[index]
    rows = select_rows(index, n)
    assert np.array_equal(ref[rows.rows()], want)
    assert rows.count == len(want)
