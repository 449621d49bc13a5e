"""Inputs users actually have: each stored exactly and given back as the user expects
(ds[i], ds.read, loader batches, the torch adapter), or refused with a clear BigstoreError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import torch

from bigstore.data import open_dataset, write_dataset
from bigstore.data._schema import ColumnSpec
from bigstore.errors import BigstoreError, DTypeError, ShapeError, UnsupportedSourceError


def _all(path: Path) -> dict[str, Any]:
    return open_dataset(path)[:]


def _loader_batches(path: Path, **kw: Any) -> list[dict[str, Any]]:
    return list(open_dataset(path).loader(3, **kw))


# -- pandas -------------------------------------------------------------------------------------
def _frame() -> Any:
    pd = pytest.importorskip("pandas")
    n = 5
    return pd.DataFrame(
        {
            "f": [1.5, np.nan, -0.0, np.inf, 2.0],
            "i": np.arange(n, dtype=np.int16),
            "s": pd.Series(["a", "bé", "", "d", "e"], dtype="str"),
            "spa": pd.Series(["x", "y", "z", "w", "v"], dtype="string[pyarrow]"),
            "sarrow": pd.Series(["1", "22", "333", "", "5"], dtype=pd.ArrowDtype(pa.string())),
            "b": pd.Series([b"\x00", b"ab", b"", b"c", b"d"], dtype=object),
            "cat": pd.Categorical(["lo", "hi", "lo", "mid", "hi"]),
            "icat": pd.Categorical([10, 20, 10, 10, 30]),
            "t": pd.to_datetime(
                ["2020-01-01 10:00", "2021-06-01 00:00", "1969-12-31 00:00", "2000-02-29 00:00",
                 "2262-04-11 00:00"]
            ).tz_localize("Europe/Paris"),
            "naive": pd.to_datetime(["2020-01-01", "NaT", "1900-01-01", "2000-01-01",
                                     "2001-01-01"]),
            "dt": pd.to_timedelta([1, 2, 3, 4, 5], unit="ms"),
            "nullable": pd.array([1, 2, 3, 4, 5], dtype="Int64"),
            "tok": [[1, 2], [], [3], [], [4, 5, 6]],
        },
    ).set_axis([9, 8, 7, 6, 5])  # the index is not stored: rows keep their order


def test_pandas_dataframe_directly(tmp_path: Path) -> None:
    df = _frame()
    write_dataset(tmp_path / "ds", df, chunk_rows=2)
    ds = open_dataset(tmp_path / "ds")
    cols = {n: (d, s) for n, d, s in ds.columns}
    assert cols["s"] == ("str", None) and cols["spa"] == ("str", None)
    assert cols["cat"] == ("category[str]", ()) and cols["icat"] == ("category[int64]", ())
    assert cols["t"] == ("datetime64[us, Europe/Paris]", ())  # pandas 3 default resolution
    assert cols["dt"][0].startswith("timedelta64[")
    got = ds[:]
    np.testing.assert_array_equal(got["f"], df["f"].to_numpy())  # NaN stays NaN (not a null)
    assert np.signbit(got["f"][2])
    assert got["i"].dtype == np.int16 and got["i"].tolist() == list(range(5))
    for c in ("s", "spa", "sarrow", "b"):
        assert got[c] == list(df[c]), c
    assert got["cat"] == list(df["cat"]) and got["icat"].tolist() == list(df["icat"])
    # zoned timestamps come back as their UTC instants; the zone is in ds.columns
    utc = df["t"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    assert got["t"].dtype == utc.dtype and (got["t"] == utc).all()
    assert np.array_equal(got["naive"], df["naive"].to_numpy(), equal_nan=True)  # NaT kept
    assert (got["dt"] == df["dt"].to_numpy()).all()
    assert got["nullable"].tolist() == [1, 2, 3, 4, 5]
    assert [t.tolist() for t in got["tok"]] == list(df["tok"])
    one = ds[-1]
    assert one["s"] == "e" and one["cat"] == "hi" and one["t"] == got["t"][-1]


def test_pandas_refusals_and_large_frames(tmp_path: Path) -> None:
    pd = pytest.importorskip("pandas")
    with pytest.raises(DTypeError, match=r"'n'.*null"):
        write_dataset(tmp_path / "a", pd.DataFrame({"n": pd.array([1, None], dtype="Int64")}))
    with pytest.raises(DTypeError, match=r"'s'.*null"):
        write_dataset(tmp_path / "a", pd.DataFrame({"s": pd.Series(["a", None], dtype="str")}))
    with pytest.raises(UnsupportedSourceError, match="strings"):
        write_dataset(tmp_path / "a", pd.DataFrame({0: [1, 2]}))
    with pytest.raises(DTypeError, match="'o'"):
        write_dataset(tmp_path / "a", pd.DataFrame({"o": [{"a": 1}, {"b": 2}]}))
    assert not (tmp_path / "a").exists()
    n = 70_000  # more than one slice
    df = pd.DataFrame({"x": np.arange(n), "c": pd.Categorical(np.arange(n) % 3)})
    write_dataset(tmp_path / "big", df)
    got = open_dataset(tmp_path / "big")[[0, 65_536, n - 1]]
    assert got["x"].tolist() == [0, 65_536, n - 1] and got["c"].tolist() == [0, 1, 0]
    # a Series in a mapping, sliced by position whatever its index
    s = pd.Series([3.0, 4.0], index=[10, 11])
    write_dataset(tmp_path / "series", {"v": s})
    assert _all(tmp_path / "series")["v"].tolist() == [3.0, 4.0]


# -- numpy strings, empty samples ---------------------------------------------------------------
def test_numpy_unicode_and_bytes_arrays(tmp_path: Path) -> None:
    u = np.array(["", "héllo", "日本", "x" * 40])
    b = np.array([b"", b"\x00\x01", b"ab", b"\xff"])
    write_dataset(tmp_path / "ds", {"u": u, "b": b}, chunk_rows=3)
    ds = open_dataset(tmp_path / "ds")
    assert ds.columns == [("u", "str", None), ("b", "bytes", None)]
    got = ds[:]
    assert got["u"] == u.tolist() and got["b"] == b.tolist()
    assert ds[2]["u"] == "日本"
    with pytest.raises(ShapeError, match="one string per sample"):
        write_dataset(tmp_path / "e", {"u": np.array([["a", "b"]])})


def test_list_columns_with_empty_samples(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", {"x": [[], [1, 2]]})
    got = _all(tmp_path / "a")["x"]
    assert [g.tolist() for g in got] == [[], [1, 2]] and got[0].dtype == np.int64
    # an all-empty later batch takes the column's dtype; an all-empty first batch needs a schema
    batches = [{"x": [[1.5], []]}, {"x": [[], []]}, {"x": [np.array([], np.float32)]}]
    write_dataset(tmp_path / "b", iter(batches))
    assert [g.tolist() for g in _all(tmp_path / "b")["x"]] == [[1.5], [], [], [], []]
    with pytest.raises(DTypeError, match="schema="):
        write_dataset(tmp_path / "c", iter([{"x": [[], []]}, {"x": [[1]]}]))
    write_dataset(tmp_path / "c", iter([{"x": [[], []]}, {"x": [[1]]}]), schema={"x": "int8"})
    got = _all(tmp_path / "c")["x"]
    assert [g.tolist() for g in got] == [[], [], [1]] and got[2].dtype == np.int8
    # Arrow lists with empty samples; a rectangular batch into a list column
    t = pa.table({"x": pa.array([[], [7], []], pa.list_(pa.int32()))})
    write_dataset(tmp_path / "d", t)
    write_dataset(tmp_path / "d", {"x": np.array([[1, 2]], np.int32)}, mode="a")
    assert [g.tolist() for g in _all(tmp_path / "d")["x"]] == [[], [7], [], [1, 2]]


# -- bf16 and float8 ------------------------------------------------------------------------------
def test_bf16_fixed_and_list_columns(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(7, 3, generator=g).bfloat16()
    lst = [torch.randn(i % 4, generator=g).bfloat16() for i in range(7)]
    f8 = torch.randn(7, 2, generator=g).to(torch.float8_e4m3fn)
    write_dataset(tmp_path / "ds", {"w": w, "l": lst, "f8": f8}, chunk_rows=2)
    ds = open_dataset(tmp_path / "ds")
    assert ds.columns == [("w", "bfloat16", (3,)), ("l", "bfloat16", None),
                          ("f8", "float8_e4m3fn", (2,))]

    def same(a: torch.Tensor, b: torch.Tensor) -> bool:
        return a.dtype == b.dtype and torch.equal(a.view(torch.uint8), b.view(torch.uint8))

    got = ds[:]
    assert same(got["w"], w) and same(got["f8"], f8)
    assert all(same(a, b) for a, b in zip(got["l"], lst))
    assert same(ds[3]["w"], w[3]) and same(ds[3]["l"], lst[3])
    for kw in ({}, {"device": "cpu"}):
        batches = _loader_batches(tmp_path / "ds", **kw)
        assert same(torch.cat([b["w"] for b in batches]), w)
        assert all(same(a, b) for a, b in zip([x for b in batches for x in b["l"]], lst))
    tds = ds.torch_dataset(3)
    assert same(torch.cat([b["w"] for b in tds]), w)


# -- Arrow temporal and dictionary types ----------------------------------------------------------
def _arrow_table(offset: int = 0) -> Any:
    n = 4
    base = np.array([0, -1, 2**50, 1_700_000_000_123_456], np.int64)[:n] + offset
    return pa.table({
        "ts": pa.array(base, pa.timestamp("us", tz="America/New_York")),
        "ts_naive": pa.array(base // 1000, pa.timestamp("ms")),
        "d32": pa.array((base // 10**12).astype(np.int32), pa.date32()),
        "d64": pa.array(base // 10**6 * 86_400_000, pa.date64()),
        "dur": pa.array(base, pa.duration("ns")),
        "cat": pa.array(["b", "a", "b", "c"]).dictionary_encode(),
        "icat": pa.DictionaryArray.from_arrays(pa.array([1, 0, 1, 1], pa.int8()),
                                               pa.array([-5, 2**40])),
        "fcat": pa.array([0.5, 0.25, 0.5, 0.5]).dictionary_encode(),  # stored decoded
        "tslist": pa.array([[1, 2], [], [3], [4]], pa.list_(pa.timestamp("s"))),
    })


def test_arrow_temporal_and_dictionary_columns(tmp_path: Path) -> None:
    t = _arrow_table()
    write_dataset(tmp_path / "ds", t, chunk_rows=3)
    ds = open_dataset(tmp_path / "ds")
    assert ds.columns == [
        ("ts", "datetime64[us, America/New_York]", ()),
        ("ts_naive", "datetime64[ms]", ()),
        ("d32", "datetime64[D]", ()),
        ("d64", "datetime64[ms]", ()),
        ("dur", "timedelta64[ns]", ()),
        ("cat", "category[str]", ()),
        ("icat", "category[int64]", ()),
        ("fcat", "float64", ()),
        ("tslist", "datetime64[s]", None),
    ]
    got = ds[:]
    for name, unit in (("ts", "us"), ("ts_naive", "ms"), ("d32", "D"), ("d64", "ms"),
                       ("dur", "ns")):
        kind = "m8" if name == "dur" else "M8"
        assert got[name].dtype == np.dtype(f"{kind}[{unit}]"), name
        want = t.column(name).to_numpy()  # Arrow's own view: UTC instants as datetime64
        assert want.dtype == got[name].dtype and (got[name] == want).all(), name
    assert got["cat"] == ["b", "a", "b", "c"] and ds[3]["cat"] == "c"
    assert got["icat"].tolist() == [2**40, -5, 2**40, 2**40]
    assert got["fcat"].tolist() == [0.5, 0.25, 0.5, 0.5]
    assert [x.view(np.int64).tolist() for x in got["tslist"]] == [[1, 2], [], [3], [4]]
    assert got["tslist"][0].dtype == np.dtype("M8[s]")
    # loaders: numpy batches decoded; torch consumers get int64 counts for times
    batches = _loader_batches(tmp_path / "ds")
    assert np.concatenate([b["ts"] for b in batches]).tolist() == got["ts"].tolist()
    assert [c for b in batches for c in b["cat"]] == got["cat"]
    tb = _loader_batches(tmp_path / "ds", device="cpu")
    assert torch.cat([b["ts"] for b in tb]).tolist() == got["ts"].view(np.int64).tolist()
    tds = list(ds.torch_dataset(4))
    assert tds[0]["d32"].dtype == torch.int64 and tds[0]["cat"] == got["cat"]


def test_categories_merge_across_batches_and_appends(tmp_path: Path) -> None:
    b1 = pa.table({"c": pa.array(["x", "y", "x"]).dictionary_encode()})
    b2 = pa.table({"c": pa.DictionaryArray.from_arrays(pa.array([0, 1, 0], pa.int32()),
                                                       pa.array(["z", "x"]))})
    write_dataset(tmp_path / "ds", pa.concat_tables([b1, b2]).to_reader(max_chunksize=3))
    assert _all(tmp_path / "ds")["c"] == ["x", "y", "x", "z", "x", "z"]
    # plain strings and a pandas categorical append into it; stored codes keep their meaning
    write_dataset(tmp_path / "ds", {"c": ["w", "y"]}, mode="a")
    ds = open_dataset(tmp_path / "ds")
    assert ds[:]["c"] == ["x", "y", "x", "z", "x", "z", "w", "y"]
    assert ds.layout.columns[0].logical is not None
    assert ds.layout.columns[0].logical.categories == ("x", "y", "z", "w")
    with pytest.raises(DTypeError, match="'c'"):
        write_dataset(tmp_path / "ds", {"c": np.array([1, 2])}, mode="a")
    # a category column may also hold plain values in a plain column
    dict_batch = {"s": pa.array(["b"]).dictionary_encode()}
    write_dataset(tmp_path / "plain", iter([{"s": ["a"]}, dict_batch]))
    assert _all(tmp_path / "plain")["s"] == ["a", "b"]


def test_timestamp_units_convert_only_exactly(tmp_path: Path) -> None:
    s = pa.array([1, 2], pa.timestamp("s", tz="UTC"))
    ns = pa.array([3_000_000_000, 4_500_000_000], pa.timestamp("ns", tz="UTC"))
    write_dataset(tmp_path / "a", iter([{"t": ns}, {"t": s}]))  # s -> ns: exact
    assert _all(tmp_path / "a")["t"].view(np.int64).tolist() == [3e9, 4.5e9, 1e9, 2e9]
    with pytest.raises(DTypeError, match=r"'t', batch 1, sample 1.*datetime64\[s, UTC\]"):
        write_dataset(tmp_path / "b", iter([{"t": s}, {"t": ns}]))  # 4.5 s is no whole second
    far = pa.array([2**62], pa.timestamp("s", tz="UTC"))
    with pytest.raises(DTypeError, match="datetime64"):
        write_dataset(tmp_path / "c", iter([{"t": ns}, {"t": far}]))  # would overflow ns
    with pytest.raises(DTypeError, match="America/Chicago"):
        chicago = s.cast(pa.timestamp("s", "America/Chicago"))
        write_dataset(tmp_path / "d", iter([{"t": s}, {"t": chicago}]))
    with pytest.raises(DTypeError, match="'t'"):
        write_dataset(tmp_path / "e", iter([{"t": s}, {"t": np.array([5])}]))
    # numpy datetime64 of any unit; NaT is a value like any other
    dt = np.array(["2001-01-01", "NaT", "1800-05-05"], "M8[D]")
    write_dataset(tmp_path / "f", {"t": dt, "d": np.array([1, -2, 3], "m8[h]")})
    got = _all(tmp_path / "f")
    assert np.array_equal(got["t"], dt, equal_nan=True) and got["d"].dtype == np.dtype("m8[h]")


def test_structs_flattened_and_refusals(tmp_path: Path) -> None:
    t = pa.table({"id": [1, 2], "meta": pa.array([{"a": 1, "b": {"c": "u"}},
                                                  {"a": 2, "b": {"c": "v"}}])})
    write_dataset(tmp_path / "ds", t)
    ds = open_dataset(tmp_path / "ds")
    assert [c[0] for c in ds.columns] == ["id", "meta.a", "meta.b.c"]
    assert ds[1] == {"id": 2, "meta.a": 2, "meta.b.c": "v"}
    write_dataset(tmp_path / "sel", t, columns=["meta"])  # a struct selects its fields
    assert [c[0] for c in open_dataset(tmp_path / "sel").columns] == ["meta.a", "meta.b.c"]
    bad: list[tuple[Any, type[BigstoreError], str]] = [
        (pa.table({"m.a": [1], "m": pa.array([{"a": 1}])}), ShapeError, "twice"),
        (pa.table({"m": pa.array([{"a": 1}, None])}), ShapeError, "null"),
        (pa.table({"l": pa.array([[{"a": 1}]])}), DTypeError, "struct"),
        (pa.table({"x": pa.array([1, None])}), DTypeError, "null"),
        (pa.table({"t": pa.array([1], pa.time64("us"))}), DTypeError, "time64"),
    ]
    for table, err, match in bad:
        with pytest.raises(err, match=match):
            write_dataset(tmp_path / "bad", table)
    assert not (tmp_path / "bad").exists()


def test_column_descriptions_old_and_new() -> None:
    old = {"name": "x", "kind": "fixed", "dtype": "int64", "shape": []}
    spec = ColumnSpec.from_json(old)
    assert spec.logical is None and spec.to_json() == old  # old descriptions read unchanged
    new = {"name": "t", "kind": "fixed", "dtype": "int64", "shape": [],
           "logical": {"type": "datetime64", "unit": "ns", "tz": "UTC"}}
    assert ColumnSpec.from_json(new).to_json() == new
    cat = {"name": "c", "kind": "fixed", "dtype": "int32", "shape": [],
           "logical": {"type": "category", "value_dtype": "str", "categories": ["a", "b"]}}
    assert ColumnSpec.from_json(cat).to_json() == cat
    from bigstore.errors import NotAStoreError

    for broken in (
        {**new, "logical": {"type": "datetime64", "unit": "parsec", "tz": None}},
        {**new, "logical": {"type": "nope"}},
        {**cat, "logical": {"type": "category", "value_dtype": "str", "categories": [1]}},
        {**cat, "dtype": "float32"},
    ):
        with pytest.raises(NotAStoreError):
            ColumnSpec.from_json(broken)


@pytest.mark.parametrize("codec", [None, "zstd"])  # zero-copy mapped loader, and chunk reads
def test_loaders_decode_every_kind(tmp_path: Path, codec: str | None) -> None:
    n = 40
    src = {
        "t": pa.array(np.arange(n) * 1000, pa.timestamp("ms", tz="UTC")),
        "c": pa.array([["a", "b", "c"][i % 3] for i in range(n)]).dictionary_encode(),
        "w": torch.arange(2 * n, dtype=torch.float32).reshape(n, 2).bfloat16(),
    }
    write_dataset(tmp_path / "ds", pa.table({"t": src["t"], "c": src["c"]}), chunk_rows=8,
                  codec=codec)
    write_dataset(tmp_path / "w", {"w": src["w"]}, chunk_rows=8, codec=codec)
    for kw in ({}, {"shuffle": True, "seed": 1}):
        got = _loader_batches(tmp_path / "ds", **kw)
        t = np.concatenate([b["t"] for b in got])
        c = [x for b in got for x in b["c"]]
        order = np.argsort(t)
        assert t.dtype == np.dtype("M8[ms]")
        assert t[order].view(np.int64).tolist() == list(range(0, n * 1000, 1000))
        assert [c[i] for i in order] == [["a", "b", "c"][i % 3] for i in range(n)]
        w = torch.cat([b["w"] for b in _loader_batches(tmp_path / "w", **kw)])
        assert w.dtype == torch.bfloat16 and sorted(w[:, 0].tolist()) == list(range(0, 2 * n, 2))
