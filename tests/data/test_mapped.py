"""The zero-copy path (uncompressed local datasets, shards mapped): the same batches as the
copying path, crc32c checks on mapped chunks, forked workers, pinned/resume behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigstore.data import open_dataset, write_dataset
from bigstore.data._mapped import MappedPrefetcher
from bigstore.data._prefetch import Prefetcher
from bigstore.errors import ChecksumError

N = 1500


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = str(tmp_path_factory.mktemp("mapped") / "ds")
    label = np.arange(N, dtype=np.int64)
    x = np.stack([(label * 7 + j) % 251 for j in range(6)], 1).astype(np.uint8)
    f = (label[:, None] * np.array([0.5, -1.0, 2.0])).astype(np.float32)
    # 33-row chunks, a few chunks per shard: unaligned chunk starts, a short last chunk and shard
    write_dataset(p, {"label": label, "x": x, "f": f}, chunk_rows=33, shard_bytes=1200)
    return p


def _batches(ds: Any, mapped: bool, monkeypatch: pytest.MonkeyPatch, **kw: Any) -> list[Any]:
    if mapped:
        monkeypatch.delenv("BIGSTORE_NO_MMAP", raising=False)
    else:
        monkeypatch.setenv("BIGSTORE_NO_MMAP", "1")
    loader = ds.loader(**kw)
    it = iter(loader)
    want = MappedPrefetcher if mapped else Prefetcher
    assert isinstance(loader._active, want)
    return list(it)


@pytest.mark.parametrize("shuffle", [False, True])
def test_mapped_batches_bit_identical_to_copying_path(
    ds_path: str, shuffle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = open_dataset(ds_path)
    for kw in (
        {"batch_size": 64, "seed": 4, "window": 3},
        {"batch_size": 50, "seed": 1, "window": 5, "rank": 1, "world_size": 3},
        {"batch_size": 7, "seed": 2, "window": 2, "drop_last": True, "prefetch": 1},
    ):
        a = _batches(ds, True, monkeypatch, shuffle=shuffle, **kw)
        b = _batches(ds, False, monkeypatch, shuffle=shuffle, **kw)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                assert x[k].dtype == y[k].dtype and x[k].shape == y[k].shape
                assert np.array_equal(x[k], y[k])
        lab = np.concatenate([x["label"] for x in a])
        exp = np.stack([(lab * 7 + j) % 251 for j in range(6)], 1).astype(np.uint8)
        assert np.array_equal(np.concatenate([x["x"] for x in a]), exp)


def test_mapped_batches_are_owned_by_the_caller(
    ds_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ds = open_dataset(ds_path)
    kept = _batches(ds, True, monkeypatch, batch_size=16, shuffle=True, columns=["label", "x"])
    again = _batches(ds, True, monkeypatch, batch_size=16, shuffle=True, columns=["label", "x"])
    for a, b in zip(kept, again):  # later batches never overwrite earlier ones
        assert np.array_equal(a["label"], b["label"]) and np.array_equal(a["x"], b["x"])
    assert sorted(np.concatenate([b["label"] for b in kept]).tolist()) == list(range(N))
    kept[0]["x"][:] = 0  # writable, and writing touches neither the files nor other batches
    assert np.array_equal(ds[[int(kept[1]["label"][0])]]["x"][0], kept[1]["x"][0])


def test_mapped_resume_matches(ds_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGSTORE_NO_MMAP", raising=False)
    ds = open_dataset(ds_path)
    kw: dict[str, Any] = {"shuffle": True, "seed": 3, "window": 3, "columns": ["label", "f"]}
    ref = [b["label"] for b in ds.loader(40, **kw)]
    for k in (0, 1, 5, len(ref) - 1):
        loader = ds.loader(40, **kw)
        it = iter(loader)
        for _ in range(k):
            next(it)
        fresh = ds.loader(40, **kw)
        fresh.load_state_dict(loader.state_dict())
        rest = [b["label"] for b in fresh]
        assert len(rest) == len(ref) - k
        assert all((a == b).all() for a, b in zip(rest, ref[k:]))


def test_mapped_flipped_byte_names_column_and_chunk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BIGSTORE_NO_MMAP", raising=False)
    url = tmp_path / "ds"
    label = np.arange(200, dtype=np.int64)
    x = np.repeat((label % 251).astype(np.uint8)[:, None], 5, 1)
    write_dataset(url, {"label": label, "x": x}, chunk_rows=32, shard_bytes=4096)
    shard = url / "x" / "c" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[1 * (32 * 5 + 4) + 3] ^= 0x10  # a byte of inner chunk 1 of column x
    shard.write_bytes(bytes(raw))
    ds = open_dataset(url)
    loader = ds.loader(16, shuffle=True, columns=["label", "x"])
    it = iter(loader)
    with pytest.raises(ChecksumError, match=r"'x' chunk 1 .*checksum mismatch"):
        assert isinstance(loader._active, MappedPrefetcher)
        for _ in it:
            pass
    # an epoch that never reaches chunk 1 is unaffected; unverified data is never handed out
    ok = open_dataset(url)
    assert ok[[0, 31, 64]]["label"].tolist() == [0, 31, 64]
    unchecked = open_dataset(url, verify=False)
    got = np.concatenate([b["label"] for b in unchecked.loader(16, columns=["label", "x"])])
    assert sorted(got.tolist()) == list(range(200))


def test_mapped_forked_workers(ds_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.delenv("BIGSTORE_NO_MMAP", raising=False)
    ds = open_dataset(ds_path)
    for _ in ds.loader(100, columns=["label", "x"]):  # the parent has mapped the shards
        pass
    assert ds._maps.peek()  # this process mapped the columns
    tds = ds.torch_dataset(50, shuffle=True, seed=2, window=3, columns=["label", "x"])
    loader = torch.utils.data.DataLoader(
        tds, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=120
    )
    got = []
    for b in loader:
        lab = b["label"].numpy()
        exp = np.stack([(lab * 7 + j) % 251 for j in range(6)], 1).astype(np.uint8)
        assert np.array_equal(b["x"].numpy(), exp)
        got.append(lab)
    assert sorted(np.concatenate(got).tolist()) == list(range(N))
    ds.close()
    assert ds._maps.peek() is None
    assert len(list(ds.loader(500, columns=["label"]))) == 3  # maps again
