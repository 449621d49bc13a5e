"""write_dataset / open_dataset: round trips, zarr interop, appends, Parquet, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigstore.data import open_dataset, write_dataset
from bigstore.errors import DTypeError, MissingTensorError, ShapeError

PARQUET_DIR = Path(pa.__file__).parent / "tests" / "data" / "parquet"


def _source(n: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "img": rng.integers(0, 255, (n, 3, 5), dtype=np.uint8),
        "label": np.arange(n, dtype=np.int64),
        "f": rng.standard_normal(n).astype(np.float32),
        "tokens": [rng.integers(0, 1000, i % 9).astype(np.int32) for i in range(n)],
        "text": [f"sample {i} " + "x" * (i % 5) for i in range(n)],
        "blob": [bytes([i % 256]) * (i % 4) for i in range(n)],
    }


def _check_equal(ds: Any, src: dict[str, Any], idx: np.ndarray) -> None:
    got = ds[idx]
    for k, v in src.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[k], v[idx])
        else:
            want = [v[i] for i in idx.tolist()]
            for a, b in zip(got[k], want):
                assert (a == b).all() if isinstance(a, np.ndarray) else a == b


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_round_trip_and_zarr_interop(tmp_path: Path, codec: str | None) -> None:
    import zarr

    src = _source(1000)
    write_dataset(tmp_path / "ds", src, chunk_rows=64, shard_bytes=4096, codec=codec)
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 1000
    assert ds.columns == [
        ("img", "uint8", (3, 5)),
        ("label", "int64", ()),
        ("f", "float32", ()),
        ("tokens", "int32", None),
        ("text", "str", None),
        ("blob", "bytes", None),
    ]
    rng = np.random.default_rng(1)
    _check_equal(ds, src, rng.integers(0, 1000, 300))
    _check_equal(ds, src, np.arange(1000))
    one = ds[-1]
    assert one["label"] == 999 and one["text"] == src["text"][-1]
    # zarr-python reads every array bit-identically (sharded, crc32c-checked)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "ds" / "img", mode="r")[:], src["img"])
    offs = np.asarray(zarr.open_array(tmp_path / "ds" / "tokens" / "offsets", mode="r")[:])
    vals = np.asarray(zarr.open_array(tmp_path / "ds" / "tokens" / "values", mode="r")[:])
    for i in (0, 17, 999):
        np.testing.assert_array_equal(vals[offs[i, 0] : offs[i, 1]], src["tokens"][i])


def test_reads_only_needed_chunks(tmp_path: Path) -> None:
    src = {"x": np.arange(10_000, dtype=np.int64)}
    write_dataset(tmp_path / "ds", src, chunk_rows=100, shard_bytes=800)  # a shard per chunk
    ds = open_dataset(tmp_path / "ds")
    ds.check_backed(ds.select(None))  # once per handle: the first and last shards' indexes
    calls: list[tuple[str, int]] = []
    orig = ds.store.read_into

    def spy(key: str, offset: int, outs: Any) -> None:
        calls.append((key, offset))
        orig(key, offset, outs)

    ds.store.read_into = spy  # type: ignore[method-assign]
    assert ds[[5, 7, 9_950]]["x"].tolist() == [5, 7, 9_950]
    assert sorted(k for k, _ in calls) == ["x/c/0", "x/c/99"]


def test_append_adds_without_losing(tmp_path: Path) -> None:
    a, b = _source(500, 0), _source(333, 1)
    write_dataset(tmp_path / "ds", a, chunk_rows=64, shard_bytes=2000)
    full = [
        tmp_path / "ds" / "img" / "c" / "0" / "0" / "0",
        tmp_path / "ds" / "text" / "offsets" / "c" / "0" / "0",
    ]
    before = {p: p.read_bytes() for p in full}
    write_dataset(tmp_path / "ds", b, mode="a")
    write_dataset(tmp_path / "ds", _source(1, 2), mode="a")
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 834
    whole = {
        k: (np.concatenate([a[k], b[k]]) if isinstance(a[k], np.ndarray) else a[k] + b[k])
        for k in a
    }
    _check_equal(ds, whole, np.arange(833))
    # full shards written before are untouched (only a partial last shard is rewritten)
    for path, data in before.items():
        assert path.read_bytes() == data


def test_append_to_nothing_writes(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", {"x": np.arange(5)}, mode="a")
    assert open_dataset(tmp_path / "ds")[[4]]["x"].tolist() == [4]


def test_killed_writer_leaves_previous_dataset(tmp_path: Path) -> None:
    write_dataset(tmp_path / "ds", {"x": np.arange(100)}, chunk_rows=10)

    def exploding() -> Any:
        yield {"x": np.arange(50)}
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "ds", exploding(), chunk_rows=10, shard_bytes=80)
    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "ds", exploding(), mode="a")
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == 100 and ds[np.arange(100)]["x"].tolist() == list(range(100))
    assert not [p for p in tmp_path.iterdir() if "bigstore-tmp" in p.name]


def test_parquet_ingest_real_files(tmp_path: Path) -> None:
    path = PARQUET_DIR / "v0.7.1.parquet"
    table = pq.read_table(path)
    write_dataset(tmp_path / "ds", str(path))
    ds = open_dataset(tmp_path / "ds")
    assert len(ds) == table.num_rows
    got = ds[np.arange(len(ds))]
    for name in [c for c in table.column_names if not c.startswith("__index_level_")]:
        want = table.column(name).to_pylist()
        have = got[name]
        assert list(have.tolist() if isinstance(have, np.ndarray) else have) == want, name
    # a glob of several files, read record batch by record batch, with a column selection
    files = sorted(PARQUET_DIR.glob("v0.7.1.*index.parquet"))
    write_dataset(tmp_path / "g", str(PARQUET_DIR / "v0.7.1.*index.parquet"), columns=["carat"])
    assert len(open_dataset(tmp_path / "g")) == sum(pq.read_metadata(f).num_rows for f in files)
    # a directory holding a zoned timestamp column: stored exactly, back as datetime64 (UTC)
    (tmp_path / "dir").mkdir()
    table = pq.read_table(PARQUET_DIR / "v0.7.1.column-metadata-handling.parquet")
    pq.write_table(table, tmp_path / "dir" / "a.parquet")
    write_dataset(tmp_path / "d", str(tmp_path / "dir"))
    ds = open_dataset(tmp_path / "d")
    assert ("c", "datetime64[us, UTC]", ()) in ds.columns
    got = ds[:]["c"]
    assert got.dtype == np.dtype("M8[us]")
    assert got.view(np.int64).tolist() == table.column("c").cast(pa.int64()).to_pylist()


def test_arrow_sources(tmp_path: Path) -> None:
    t = pa.table(
        {
            "v": pa.array(np.arange(20, dtype=np.float64)),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(60, dtype=np.int16)), 3),
            "seq": pa.array([list(range(i % 4)) for i in range(20)], pa.list_(pa.int64())),
            "s": pa.array([str(i) for i in range(20)]),
        }
    )
    write_dataset(tmp_path / "t", t.to_reader(max_chunksize=7))
    got = open_dataset(tmp_path / "t")[np.arange(20)]
    assert got["emb"].shape == (20, 3) and got["emb"][19].tolist() == [57, 58, 59]
    assert [x.tolist() for x in got["seq"]] == [list(range(i % 4)) for i in range(20)]
    assert got["s"] == [str(i) for i in range(20)]


def test_iterable_of_batches(tmp_path: Path) -> None:
    batches = ({"x": np.full((10, 2), i, np.int32), "t": [b"ab"] * 10} for i in range(7))
    write_dataset(tmp_path / "ds", batches, chunk_rows=4)
    got = open_dataset(tmp_path / "ds")[np.arange(70)]
    assert got["x"][:, 0].tolist() == [i // 10 for i in range(70)] and got["t"][69] == b"ab"


def test_bad_input_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match="ragged"):
        write_dataset(tmp_path / "a", {"x": [np.zeros((2, 2)), np.zeros((3, 2))]})
    with pytest.raises(ShapeError, match="different numbers of samples"):
        write_dataset(tmp_path / "b", {"x": np.zeros(3), "y": np.zeros(4)})
    with pytest.raises(ShapeError, match="fixed-shape"):
        write_dataset(
            tmp_path / "c", iter([{"x": np.zeros((2, 3))}, {"x": [np.zeros(1), np.zeros(2)]}])
        )
    with pytest.raises(ShapeError, match=r"shape \(4,\), expected \(3,\)"):
        write_dataset(tmp_path / "c", iter([{"x": np.zeros((2, 3))}, {"x": np.zeros((2, 4))}]))
    with pytest.raises(DTypeError, match="'x'"):
        write_dataset(tmp_path / "d", {"x": np.zeros(2, dtype=[("a", "i4"), ("b", "f4")])})
    with pytest.raises(DTypeError, match="sample 1 is None"):
        write_dataset(tmp_path / "d", {"x": ["a", None]})
    write_dataset(tmp_path / "ok", {"x": np.arange(10)})
    ds = open_dataset(tmp_path / "ok")
    with pytest.raises(IndexError, match="out of range"):
        ds[[3, 10]]
    with pytest.raises(IndexError):
        ds[-11]
    with pytest.raises(MissingTensorError, match="unknown column 'nope'"):
        ds.loader(2, columns=["nope"])
    with pytest.raises(ShapeError, match="columns"):
        write_dataset(tmp_path / "ok", {"y": np.arange(3)}, mode="a")
    assert not (tmp_path / "a").exists()
