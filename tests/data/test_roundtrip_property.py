"""Hypothesis-generated datasets: random dtypes (numbers, bf16, strings, bytes, ragged lists
with empty samples, Arrow timestamps with units and zones, dates, durations, dictionaries),
several batches whose dtypes may differ, and appends. Each write either stores every value
exactly, or fails with a BigstoreError and leaves what was there unchanged: never stored
differently. Where a pure-Python oracle says every value fits the column's type, the write
must succeed; where one does not, it must fail."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bigstore.data import open_dataset, write_dataset
from bigstore.errors import BigstoreError

from . import _reference as reference

NUM = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint64", "float16", "float32",
       "float64"]
UNITS = {"s": 0, "ms": 3, "us": 6, "ns": 9}
FAMILIES = ["num", "list", "str", "bytes", "ts", "date", "dur", "dict", "bf16"]


@dataclass
class Column:
    """One column's batches as given, the values expected back (Python), and the oracle."""

    family: str
    batches: list[Any]
    expected: list[list[Any]]  # per batch, per sample: a Python value or list of them

    def fits(self, upto: int) -> bool:
        """Do batches 0..upto-1 hold only values the first batch's type holds exactly?"""
        exp = self.expected[:upto]
        if self.family in ("num", "list"):
            first = self.batches[0]
            dt = first.dtype if self.family == "num" else first[0].dtype
            flat = [v for b in exp for s in b for v in (s if self.family == "list" else [s])]
            return all(reference.fits(v, dt) for v in flat)
        if self.family in ("ts", "dur"):
            scale = 10 ** (9 - UNITS[self.batches[0].type.unit])
            return all(v % scale == 0 and abs(v // scale) < 2**63 for b in exp for v in b)
        if self.family == "bf16":
            return all(reference.fits(v, "bfloat16") for b in exp for v in b)
        return True


def _py(a: np.ndarray) -> list[Any]:
    return [x.item() if hasattr(x, "item") else x for x in a.reshape(-1)]


@st.composite
def column(draw: Any, family: str, sizes: list[int]) -> Column:
    batches: list[Any] = []
    expected: list[list[Any]] = []
    if family in ("num", "list"):
        dtypes = [draw(st.sampled_from(NUM)) for _ in sizes]
        if draw(st.booleans()):
            dtypes = [dtypes[0]] * len(sizes)  # often one dtype throughout
        for n, dt in zip(sizes, dtypes):
            if family == "num":
                arr = draw(hnp.arrays(np.dtype(dt), n))
                batches.append(arr)
                expected.append(_py(arr))
            else:
                samples = [draw(hnp.arrays(np.dtype(dt), draw(st.integers(0, 3))))
                           for _ in range(n)]
                batches.append(samples)
                expected.append([_py(s) for s in samples])
        return Column(family, batches, expected)
    if family in ("str", "bytes"):
        el = st.text(max_size=4) if family == "str" else st.binary(max_size=4)
        for n in sizes:
            vals = draw(st.lists(el, min_size=n, max_size=n))
            nul = "\x00" if family == "str" else b"\x00"  # numpy strips trailing NULs
            as_numpy = draw(st.booleans()) and not any(v.endswith(nul) for v in vals)
            batches.append(np.array(vals) if as_numpy and vals else vals)
            expected.append(vals)
        return Column(family, batches, expected)
    if family in ("ts", "dur"):
        tz = draw(st.sampled_from([None, "UTC", "Asia/Tokyo"])) if family == "ts" else None
        units = [draw(st.sampled_from(list(UNITS))) for _ in sizes]
        for n, unit in zip(sizes, units):
            vals = draw(st.lists(st.integers(-(2**62), 2**62), min_size=n, max_size=n))
            t = pa.timestamp(unit, tz=tz) if family == "ts" else pa.duration(unit)
            batches.append(pa.array(vals, t))
            scale = 10 ** (9 - UNITS[unit])
            expected.append([v * scale for v in vals])  # nanoseconds, as Python ints
        return Column(family, batches, expected)
    if family == "date":
        for n in sizes:
            vals = draw(st.lists(st.integers(-(10**6), 10**6), min_size=n, max_size=n))
            batches.append(pa.array(vals, pa.date32()))
            expected.append(vals)
        return Column(family, batches, expected)
    if family == "dict":
        for n in sizes:
            vals = draw(st.lists(st.sampled_from(["a", "b", "ä", ""]), min_size=n, max_size=n))
            batches.append(pa.array(vals, pa.string()).dictionary_encode()
                           if draw(st.booleans()) else vals)
            expected.append(vals)
        return Column(family, batches, expected)
    # bf16: the first batch bf16; later ones bf16 or float32 values bf16 may or may not hold
    for i, n in enumerate(sizes):
        vals = draw(st.lists(st.floats(width=32) | st.sampled_from([1.0, 0.5, 256.0, -0.0]),
                             min_size=n, max_size=n))
        t32 = torch.tensor(vals, dtype=torch.float32)
        t = t32.bfloat16() if i == 0 or draw(st.booleans()) else t32
        batches.append(t)
        expected.append(t.float().tolist())
    return Column(family, batches, expected)


def _got(family: str, values: Any) -> list[Any]:
    """What bigstore gave back, as Python values comparable with ``Column.expected``."""
    if family == "num":
        return _py(values)
    if family == "list":
        return [_py(v) for v in values]
    if family in ("ts", "dur"):
        unit, _ = np.datetime_data(values.dtype)
        return [v * 10 ** (9 - UNITS[unit]) for v in values.view(np.int64).tolist()]
    if family == "date":
        assert values.dtype == np.dtype("M8[D]")
        return values.view(np.int64).tolist()
    if family == "bf16":
        assert values.dtype == torch.bfloat16
        return values.float().tolist()
    return list(values)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    return reference.same(a, b)


def _assert_holds(path: Path, cols: dict[str, Column], upto: int) -> None:
    ds = open_dataset(path)
    got = ds[:]
    for name, c in cols.items():
        want = [v for b in c.expected[:upto] for v in b]
        have = _got(c.family, got[name])
        assert _same(have, want), (name, c.family, have, want)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.tuples(
        st.lists(st.sampled_from(FAMILIES), min_size=1, max_size=3, unique=True),
        st.lists(st.integers(0, 5), min_size=1, max_size=4).map(lambda s: [s[0] + 1, *s[1:]]),
    ).flatmap(
        lambda fs: st.tuples(
            st.tuples(*[column(f, fs[1]) for f in fs[0]]),
            st.integers(1, len(fs[1])),
            st.integers(1, 4),
        )
    )
)
def test_datasets_round_trip_exactly_or_refuse(case: tuple[tuple[Column, ...], int, int]) -> None:
    columns, split, chunk_rows = case
    cols = {f"c{i}.{c.family}": c for i, c in enumerate(columns)}
    n = len(columns[0].batches)
    batches = [{name: c.batches[b] for name, c in cols.items()} for b in range(n)]
    var = [name for name, c in cols.items() if c.family == "list"]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ds"
        fits = all(c.fits(split) for c in cols.values())
        try:
            write_dataset(path, iter(batches[:split]), chunk_rows=chunk_rows, shard_bytes=64,
                          variable=var)
        except BigstoreError:
            assert not fits, "refused although every value fits"
            assert not path.exists()
            event("write refused")
            return
        assert fits, "accepted values that do not fit"
        _assert_holds(path, cols, split)
        if split == n:
            return
        fits = all(c.fits(n) for c in cols.values())
        try:
            write_dataset(path, iter(batches[split:]), mode="a", variable=var)
        except BigstoreError:
            assert not fits, "append refused values that fit"
            _assert_holds(path, cols, split)  # nothing of the failed append is visible
            event("append refused")
            return
        assert fits, "append accepted values that do not fit"
        _assert_holds(path, cols, n)
        event("appended")
