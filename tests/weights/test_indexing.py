"""store[name][index] against numpy (and torch for .torch()): ints (a 0-d tensor from a 1-D
one), slices with any step, masks and integer arrays along axis 0, reading only the chunks
that hold the rows; other indices refused clearly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bigstore
from bigstore.errors import BigstoreError, IndexOutOfRangeError, InvalidIndexError

ROWS = 50
W = torch.arange(ROWS * 3, dtype=torch.int32).reshape(ROWS, 3)
V = torch.randn(ROWS).bfloat16()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    p = tmp_path_factory.mktemp("t") / "s"
    # 8 rows of W per chunk; V's 2-byte rows give 32 rows per chunk
    bigstore.save({"w": W, "v": V, "z": torch.tensor(1.5)}, p, chunk_bytes=96)
    return bigstore.open(p)


def _bits(t: torch.Tensor) -> np.ndarray:
    return (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()


def _check(store: Any, index: Any) -> None:
    for name, ref in (("w", W), ("v", V)):
        want = _bits(ref)[index]  # numpy decides (torch has no negative steps)
        got = store[name][index]
        assert got.shape == np.shape(want), (name, index)
        arr = got.numpy()  # bf16 as raw bits, like TensorHandle.numpy()
        assert isinstance(arr, np.ndarray) and arr.shape == np.shape(want)
        assert np.array_equal(arr.view(want.dtype), want)
        t = got.torch()
        assert t.dtype == ref.dtype and tuple(t.shape) == np.shape(want)
        assert np.array_equal(_bits(t), want)


GRID: list[Any] = [
    0, 17, -1, -ROWS, np.int64(9), slice(None), slice(3, 40), slice(None, None, 7),
    slice(None, None, -1), slice(45, 2, -5), slice(-10, None), slice(60, 70), slice(5, 5),
    ..., [0, 49, 49, -3], np.array([[1, 2], [40, 0]]), np.arange(ROWS) % 3 == 0,
    np.zeros(ROWS, bool), [],
]


@pytest.mark.parametrize("index", GRID, ids=[repr(v)[:24] for v in GRID])
def test_grid_like_numpy_and_torch(store: Any, index: Any) -> None:
    _check(store, index)


def test_int_on_1d_tensor_gives_0d(store: Any) -> None:
    t = store["v"][3].torch()
    assert t.shape == () and t.dtype == torch.bfloat16 and t.view(torch.int16) == V[3].view(
        torch.int16
    )
    a = store["w"][-1].numpy()
    assert a.shape == (3,) and a.tolist() == W[-1].tolist()


@settings(max_examples=40, deadline=None)
@given(st.one_of(st.slices(ROWS), st.lists(st.integers(-ROWS, ROWS - 1), max_size=12)))
def test_property_like_numpy(store: Any, index: Any) -> None:
    _check(store, index)


BAD: list[tuple[Any, type[BigstoreError]]] = [
    (ROWS, IndexOutOfRangeError), ([0, ROWS], IndexOutOfRangeError), (1.5, InvalidIndexError),
    ("a", InvalidIndexError), (None, InvalidIndexError), (True, InvalidIndexError),
    ((0, 1), InvalidIndexError), ((slice(None), 1), InvalidIndexError),
    (np.ones(3, bool), InvalidIndexError), (np.ones((ROWS, 3), bool), InvalidIndexError),
]


@pytest.mark.parametrize("index,err", BAD, ids=[repr(b[0])[:24] for b in BAD])
def test_refused_clearly(store: Any, index: Any, err: type[BigstoreError]) -> None:
    with pytest.raises(err) as e:
        store["w"][index]
    assert isinstance(e.value, IndexError)
    with pytest.raises(InvalidIndexError, match="0-d"):
        store["z"][0]


def test_gathers_read_only_needed_chunks(tmp_path: Path) -> None:
    w = torch.arange(64 * 512, dtype=torch.int64).reshape(64, 512)  # 4 KiB rows
    bigstore.save({"w": w}, tmp_path / "s", chunk_bytes=8 * 4096)  # 8 rows per chunk
    s = bigstore.open(tmp_path / "s")
    assert s.meta("w").n_chunks == 8
    for i in range(8):  # only chunks 1 and 6 remain
        if i not in (1, 6):
            (tmp_path / "s" / "w" / "c" / str(i) / "0").unlink()
    for index in ([50, 9, 14, 48], slice(15, 7, -2), np.isin(np.arange(64), [8, 55]), 49):
        assert np.array_equal(s["w"][index].numpy(), w.numpy()[index])
    with pytest.raises(BigstoreError, match="chunk 0"):
        s["w"][[0]].numpy()
