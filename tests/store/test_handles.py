"""Handles and locations: a handle reads the commit it opened or raises StoreChangedError (never
bytes of a newer commit, never "chunk is missing"); appends do not break handles; a file where a
store should be, an over-long name, and a store of the other kind are refused clearly."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bigstore
from bigstore.data import open_dataset, write_dataset
from bigstore.errors import (
    BigstoreError,
    InvalidKeyError,
    InvalidURLError,
    NotAStoreError,
    StoreChangedError,
)

pytestmark = pytest.mark.timeout(120)


def location(backend: str, request: pytest.FixtureRequest,
             tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    if backend == "local":
        return str(tmp_path / "store"), None
    request.applymarker(pytest.mark.s3)
    url, opts = request.getfixturevalue("s3_url")
    return url, opts


def tensors(scale: float) -> dict[str, torch.Tensor]:
    # 3 page-aligned chunks each: mapped on local disks, several objects everywhere
    return {"w": torch.arange(3 * 1024.0).reshape(3, 1024) * scale, "b": torch.ones(7) * scale}


@pytest.mark.parametrize("backend, same_names",
                         [("local", True), ("local", False), ("s3", True)])
def test_tensor_handle_after_the_store_was_replaced(
    backend: str, same_names: bool, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # same names: the silent case (a newer commit's chunks fit the old layout); other names:
    # chunks go missing. The same check serves both, on every backend.
    url, opts = location(backend, request, tmp_path)
    bigstore.save(tensors(1), url, storage_options=opts, chunk_bytes=4096)
    h = bigstore.open(url, storage_options=opts)
    assert torch.equal(h["w"][1:2].torch(), tensors(1)["w"][1:2])  # a read before: fine
    new = tensors(2) if same_names else {"other": torch.zeros(5)}
    bigstore.save(new, url, storage_options=opts, chunk_bytes=4096)
    reads = {
        "handle": lambda: h["w"].numpy(),
        "slice": lambda: h["w"][2:3].numpy(),
        "load (mapped where possible)": lambda: h.load(),
        "load copied": lambda: h.load(mmap=False),
        "read_into": lambda: h.read_into([("b", 0, 7, np.empty(7, np.float32))]),
    }
    for what, read in reads.items():
        with pytest.raises(StoreChangedError, match="open it again"):
            read()
            pytest.fail(f"{what} returned after the store was replaced")
    got = bigstore.open(url, storage_options=opts).load()  # opened again: the new commit
    assert sorted(got) == sorted(new) and all(torch.equal(got[k], new[k]) for k in new)


def dataset(scale: int, n: int = 300) -> dict[str, Any]:
    return {"x": np.arange(n, dtype=np.int64) * scale,
            "tok": [np.arange(i % 5, dtype=np.int32) * scale for i in range(n)]}


@pytest.mark.parametrize("backend, mapped", [("local", True), ("local", False), ("s3", False)])
def test_dataset_handle_after_the_dataset_was_replaced(
    backend: str, mapped: bool, request: pytest.FixtureRequest, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, opts = location(backend, request, tmp_path)
    if not mapped:
        monkeypatch.setenv("BIGSTORE_NO_MMAP", "1")
    write_dataset(url, dataset(1), storage_options=opts, chunk_rows=16)
    ds = open_dataset(url, opts, cache_dir=tmp_path / "cache")
    assert int(ds[5]["x"]) == 5
    loader = ds.loader(32, columns=["x"])
    first = next(iter(loader))["x"]
    write_dataset(url, dataset(3), storage_options=opts, chunk_rows=16)
    reads = {
        "index": lambda: ds[7],
        "read": lambda: ds.read([1, 299]),
        "loader": lambda: list(ds.loader(32, columns=["x"])),
        "variable-length column": lambda: list(ds.loader(32, columns=["tok"])),
        "torch DataLoader": lambda: list(torch.utils.data.DataLoader(
            ds.torch_dataset(32, columns=["x"]), batch_size=None, num_workers=0)),
        "a pickled handle (spawned workers)": lambda: pickle.loads(pickle.dumps(ds)),
    }
    for what, read in reads.items():
        with pytest.raises(StoreChangedError, match="open it again"):
            read()
            pytest.fail(f"{what} returned after the dataset was replaced")
    # the loader that was running: every batch it still hands out is of the commit it opened
    try:
        rest = [b["x"] for b in loader]
    except StoreChangedError:
        rest = []
    got = np.concatenate([first, *rest])
    assert np.array_equal(got, np.arange(len(got)))
    fresh = open_dataset(url, opts, cache_dir=tmp_path / "cache2")
    assert int(fresh[7]["x"]) == 21


@pytest.mark.parametrize("backend, codec", [("local", None), ("local", "zstd"), ("s3", "zstd")])
def test_appends_do_not_break_open_handles(
    backend: str, codec: str | None, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    # compressed: the rewritten last shard's chunks moved, so its index must be read again
    url, opts = location(backend, request, tmp_path)
    write_dataset(url, dataset(1, 100), storage_options=opts, chunk_rows=16, shard_bytes=256,
                  codec=codec)
    ds = open_dataset(url, opts, cache_dir=tmp_path / "cache")
    before = ds.read(np.arange(100))  # caches shard indexes, including the partial last one's
    worker_copy = pickle.dumps(ds)
    write_dataset(url, dataset(1, 50), storage_options=opts, mode="a")
    again = ds.read(np.arange(100))  # the last shard was rewritten: read with its new index
    assert np.array_equal(again["x"], before["x"]) and len(ds) == 100
    assert all(np.array_equal(a, b) for a, b in zip(again["tok"], before["tok"]))
    assert sorted(np.concatenate([b["x"] for b in ds.loader(30)]).tolist()) == list(range(100))
    worker = pickle.loads(worker_copy)  # a spawned worker sees what its parent opened
    assert len(worker) == 100 and np.array_equal(worker.read(np.arange(100))["x"], before["x"])
    assert len(open_dataset(url, opts, cache_dir=tmp_path / "c2")) == 150


def test_a_file_where_a_store_should_be(tmp_path: Path) -> None:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"not a store")
    for url in (f, f / "inside"):
        with pytest.raises(NotAStoreError, match="is a file"):
            bigstore.open(url)
        with pytest.raises(NotAStoreError, match="is a file"):
            bigstore.save({"a": np.ones(2)}, url)
        with pytest.raises(NotAStoreError, match="is a file"):
            open_dataset(url)
        with pytest.raises(NotAStoreError, match="is a file"):
            write_dataset(url, {"a": np.arange(3)})
        with pytest.raises(NotAStoreError, match="is a file"):
            bigstore.verify(url)
    assert f.read_bytes() == b"not a store"


@pytest.mark.s3
def test_an_object_where_a_store_should_be(s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    from bigstore.store import open_store

    open_store(url.rsplit("/", 1)[0], opts).put(url.rsplit("/", 1)[1], b"an object")
    with pytest.raises(NotAStoreError, match="is a file"):
        bigstore.open(url, storage_options=opts)
    with pytest.raises(NotAStoreError, match="is a file"):
        bigstore.save({"a": np.ones(2)}, url, storage_options=opts)


def test_names_too_long_for_the_file_system(tmp_path: Path) -> None:
    long = "layer." * 50  # 300 bytes: more than a file system allows in one name
    with pytest.raises(InvalidKeyError, match="300 bytes"):
        bigstore.save({long: np.ones(2)}, tmp_path / "w")
    with pytest.raises(InvalidKeyError, match="300 bytes"):
        write_dataset(tmp_path / "d", {long: np.arange(3)})
    with pytest.raises(InvalidKeyError, match="bytes"):
        write_dataset(tmp_path / "d", {"é" * 120: [[1, 2], [3]]})  # 240 bytes, not 120 chars
    with pytest.raises(InvalidURLError, match="directory name"):
        bigstore.save({"a": np.ones(2)}, tmp_path / ("x" * 240))
    assert not any(tmp_path.iterdir())  # nothing was left behind
    ok = "é" * 99  # 198 bytes: within bigstore's limit, stored and read back
    bigstore.save({ok: np.ones(2)}, tmp_path / "w")
    assert list(bigstore.load(tmp_path / "w")) == [ok]


def test_writing_over_a_store_of_the_other_kind_needs_overwrite(tmp_path: Path) -> None:
    url = tmp_path / "s"
    write_dataset(url, {"a": np.arange(3)})
    with pytest.raises(NotAStoreError, match="overwrite=True"):
        bigstore.save({"w": np.ones(2)}, url)
    assert len(open_dataset(url)) == 3  # untouched
    bigstore.save({"w": np.ones(2)}, url, overwrite=True)
    with pytest.raises(NotAStoreError, match="overwrite=True"):
        write_dataset(url, {"a": np.arange(3)})
    with pytest.raises(NotAStoreError, match="not dataset"):
        write_dataset(url, {"a": np.arange(3)}, mode="a")  # an append never replaces
    assert torch.equal(bigstore.load(url)["w"], torch.ones(2, dtype=torch.float64))
    write_dataset(url, {"a": np.arange(4)}, overwrite=True)
    assert len(open_dataset(url)) == 4
    with pytest.raises(BigstoreError):
        bigstore.open(url)  # a dataset is not a tensor store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # no lock file outlives a write
