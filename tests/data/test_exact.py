"""No silent narrowing: a value is stored exactly or the write fails naming column, batch and
value. The four cases of issue 8 as regressions, the exactness check against a pure-Python
reference, ``schema=``, and appends (the stored dtype wins)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bigstore.data import open_dataset, write_dataset
from bigstore.data._exact import convert_exact
from bigstore.errors import DTypeError, ShapeError
from bigstore.format.dtypes import dtype_spec

from . import _reference as reference

NUMERIC = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64", "complex64", "complex128"]


def _values(ds_path: Path, column: str = "x") -> Any:
    return open_dataset(ds_path)[:][column]


# -- the four examples of the issue -------------------------------------------------------------
def test_append_int64_to_int32_refused_and_nothing_lost(tmp_path: Path) -> None:
    p = tmp_path / "ds"
    write_dataset(p, {"x": np.array([1, 2, 3], np.int32)})
    with pytest.raises(DTypeError) as e:
        write_dataset(p, {"x": np.array([7, 2**40 + 5], np.int64)}, mode="a")
    msg = str(e.value)
    assert "'x'" in msg and "batch 0" in msg and "sample 1" in msg and str(2**40 + 5) in msg
    assert _values(p).tolist() == [1, 2, 3]  # nothing half-visible
    write_dataset(p, {"x": np.array([7, -(2**31)], np.int64)}, mode="a")  # these fit: stored
    assert _values(p).tolist() == [1, 2, 3, 7, -(2**31)]
    assert _values(p).dtype == np.int32


def test_stream_first_batch_int8_then_300(tmp_path: Path) -> None:
    batches = [{"x": np.array([1, -2], np.int8)}, {"x": np.array([5, 300], np.int64)}]
    with pytest.raises(DTypeError, match=r"'x', batch 1, sample 1: value 300 .*int8"):
        write_dataset(tmp_path / "ds", iter(batches))
    assert not (tmp_path / "ds").exists()
    # the schema fixes the type up front, for the first batch too
    write_dataset(tmp_path / "ds", iter(batches), schema={"x": "int16"})
    assert _values(tmp_path / "ds").tolist() == [1, -2, 5, 300]
    assert open_dataset(tmp_path / "ds").columns == [("x", "int16", ())]


def test_float16_column_refuses_1e6(tmp_path: Path) -> None:
    batches = [{"x": np.array([0.5], np.float16)}, {"x": np.array([1e6])}]
    with pytest.raises(DTypeError, match=r"1000000\.0.*float16"):
        write_dataset(tmp_path / "ds", iter(batches))
    ok = [{"x": np.array([0.5], np.float16)}, {"x": np.array([0.25, np.inf, np.nan, 65504.0])}]
    write_dataset(tmp_path / "ds", iter(ok))  # exactly representable: stored
    got = _values(tmp_path / "ds")
    assert got.dtype == np.float16 and got[:3].tolist() == [0.5, 0.25, np.inf]
    assert np.isnan(got[3]) and got[4] == 65504.0


def test_list_of_int8_refuses_token_1000(tmp_path: Path) -> None:
    first = {"tok": [np.array([1, 2], np.int8), np.array([], np.int8)]}
    later = {"tok": [np.array([3]), np.array([4, 1000])]}
    with pytest.raises(DTypeError, match=r"'tok', batch 1, sample 1: value 1000"):
        write_dataset(tmp_path / "ds", iter([first, later]))
    pa_later = {"tok": pa.array([[3], [4, 1000]], pa.list_(pa.int64()))}
    with pytest.raises(DTypeError, match="1000"):
        write_dataset(tmp_path / "ds", iter([first, pa_later]))
    write_dataset(tmp_path / "ds", iter([first, later]), schema={"tok": np.int32})
    got = open_dataset(tmp_path / "ds")[:]["tok"]
    assert [g.tolist() for g in got] == [[1, 2], [], [3], [4, 1000]]
    assert got[0].dtype == np.int32


# -- what is allowed, what is checked ---------------------------------------------------------
def test_exact_widening_and_checked_conversions(tmp_path: Path) -> None:
    cases: list[tuple[Any, Any, bool]] = [
        (np.int32, np.array([2**31 - 1], np.int64), True),
        (np.int32, np.array([2**31], np.int64), False),
        (np.uint8, np.array([-1], np.int16), False),
        (np.uint64, np.array([-1], np.int64), False),  # same bits, another value
        (np.int64, np.array([2**63], np.uint64), False),
        (np.float32, np.array([16777217], np.int64), False),  # 2**24 + 1
        (np.float32, np.array([16777216], np.int64), True),
        (np.float64, np.array([2**53 + 1], np.int64), False),
        (np.int64, np.array([1.5]), False),
        (np.int64, np.array([np.nan]), False),
        (np.int64, np.array([3.0, -0.0]), True),
        (np.float32, np.array([0.1]), False),
        (np.float32, np.array([0.5, np.nan, -np.inf]), True),
        (np.bool_, np.array([0, 1, 1]), True),
        (np.bool_, np.array([2]), False),
        (np.float64, np.array([1 + 0j]), True),
        (np.float64, np.array([1 + 1j]), False),
    ]
    for i, (stored, batch, fits) in enumerate(cases):
        p = tmp_path / f"c{i}"
        write_dataset(p, {"x": np.zeros(1, stored)})
        if fits:
            write_dataset(p, {"x": batch}, mode="a")
            got = _values(p)[1:]
            assert got.dtype == np.dtype(stored), i
            assert np.array_equal(got.astype(batch.dtype), batch, equal_nan=True), i
        else:
            with pytest.raises(DTypeError, match="'x'"):
                write_dataset(p, {"x": batch}, mode="a")
            assert len(open_dataset(p)) == 1, i


def test_python_values_are_not_narrowed_by_numpy(tmp_path: Path) -> None:
    # numpy would make float64 of [1, 2**63]-style mixes; bigstore keeps exact ints or refuses
    write_dataset(tmp_path / "a", {"x": [1, 2**63]})
    assert _values(tmp_path / "a").tolist() == [1, 2**63]
    with pytest.raises(DTypeError, match="64-bit"):
        write_dataset(tmp_path / "b", {"x": [-1, 2**63]})
    with pytest.raises(DTypeError, match=str(2**60 + 1)):
        write_dataset(tmp_path / "c", {"x": [[2**60 + 1, 0.5], [1.5, 2.5]]})
    write_dataset(tmp_path / "d", {"x": [[1, 0.5], [], [float("nan")]]})
    got = _values(tmp_path / "d")
    assert got[0].tolist() == [1.0, 0.5] and got[1].size == 0 and np.isnan(got[2][0])


def test_bf16_columns_checked(tmp_path: Path) -> None:
    w = torch.tensor([[1.0, 2.5], [-3.0, 0.0]]).bfloat16()
    batches = [{"w": w}, {"w": torch.tensor([[256.0, 1.0]])}]  # float32 values bf16 holds
    write_dataset(tmp_path / "a", iter(batches))
    got = open_dataset(tmp_path / "a")[:]["w"]
    assert got.dtype == torch.bfloat16 and got.float().tolist() == [[1, 2.5], [-3, 0], [256, 1]]
    with pytest.raises(DTypeError, match=r"257\.0.*bfloat16"):
        write_dataset(tmp_path / "b", iter([{"w": w}, {"w": torch.tensor([[257.0, 1.0]])}]))
    # bf16 into a float32 column widens exactly
    write_dataset(tmp_path / "c", iter([{"w": w.float()}, {"w": w}]))
    assert open_dataset(tmp_path / "c")[:]["w"].tolist() == [[1, 2.5], [-3, 0]] * 2


def test_schema_forms(tmp_path: Path) -> None:
    src: dict[str, Any] = {"a": np.array([1, 2], np.int8), "b": [[1], [2, 3]],
                           "t": np.array([1, 2], "M8[s]"), "s": ["x", "y"]}
    schemas: list[Any] = [
        {"a": "int64", "b": np.int16, "t": "datetime64[ms]", "s": str},
        {"a": torch.int64, "b": pa.int16(), "t": pa.timestamp("ms"), "s": pa.string()},
        pa.schema([("a", pa.int64()), ("b", pa.list_(pa.int16())), ("t", pa.timestamp("ms")),
                   ("s", pa.large_string())]),
    ]
    for i, schema in enumerate(schemas):
        write_dataset(tmp_path / f"s{i}", src, schema=schema)
        ds = open_dataset(tmp_path / f"s{i}")
        assert ds.columns == [("a", "int64", ()), ("b", "int16", None),
                              ("t", "datetime64[ms]", ()), ("s", "str", None)], i
        got = ds[:]
        assert got["t"].tolist() == src["t"].astype("M8[ms]").tolist()
        assert [g.tolist() for g in got["b"]] == [[1], [2, 3]]
    with pytest.raises(ShapeError, match="'nope'"):
        write_dataset(tmp_path / "e1", src, schema={"nope": "int8"})
    with pytest.raises(DTypeError, match="'a'"):
        write_dataset(tmp_path / "e2", src, schema={"a": "int4"})
    with pytest.raises(DTypeError, match="'s'"):
        write_dataset(tmp_path / "e3", src, schema={"s": "int32"})
    with pytest.raises(DTypeError, match="datetime64"):
        write_dataset(tmp_path / "e4", src, schema={"t": "datetime64[D]"})  # 1 s is no day
    # appends keep the stored type: a schema that disagrees is refused
    with pytest.raises(DTypeError, match="stores int64"):
        write_dataset(tmp_path / "s0", src, mode="a", schema={"a": "int32"})
    write_dataset(tmp_path / "s0", src, mode="a", schema={"a": "int64"})
    assert len(open_dataset(tmp_path / "s0")) == 4


# -- the check itself against a pure-Python reference -------------------------------------------
def _py(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(NUMERIC).flatmap(
        lambda s: st.tuples(st.just(s), hnp.arrays(np.dtype(s), st.integers(0, 6)))
    ),
    st.sampled_from(NUMERIC),
)
def test_convert_exact_matches_reference(src_values: tuple[str, Any], dst: str) -> None:
    src, values = src_values
    out, bad = convert_exact(values, dtype_spec(src), dtype_spec(dst))
    py = [_py(v) for v in values.reshape(-1)]
    fits = [reference.fits(v, np.dtype(dst)) for v in py]
    if all(fits):
        assert bad is None
        assert out.dtype == np.dtype(dst)
        for v, got in zip(py, out.reshape(-1).tolist()):
            assert reference.same(got, v), (v, got)
    else:
        assert bad == fits.index(False)
