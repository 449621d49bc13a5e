"""The loader end to end: exact coverage with bit-identical data, resume, torch workers under
fork/spawn/forkserver, object storage through the bounded cache, real multi-rank gloo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigstore.data import open_dataset, write_dataset

N = 2000


def _write(url: str, storage_options: Any = None, n: int = N) -> None:
    label = np.arange(n, dtype=np.int64)
    write_dataset(
        url,
        {
            "label": label,
            "x": np.repeat((label % 251).astype(np.uint8)[:, None], 5, 1),
            "tok": [np.full(i % 5, i, np.int32) for i in range(n)],
        },
        chunk_rows=32,
        shard_bytes=4096,
        storage_options=storage_options,
    )


@pytest.fixture(scope="module")
def ds_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    p = str(tmp_path_factory.mktemp("data") / "ds")
    _write(p)
    return p


def _check(batch: dict[str, Any]) -> None:
    lab = np.asarray(batch["label"])
    assert (np.asarray(batch["x"]) == (lab[:, None] % 251).astype(np.uint8)).all()
    for i, t in zip(lab.tolist(), batch["tok"]):
        assert np.asarray(t).tolist() == [i] * (i % 5)


def test_loader_epoch_exact_and_bit_identical(ds_path: str) -> None:
    ds = open_dataset(ds_path)
    for shuffle in (False, True):
        loader = ds.loader(64, shuffle=shuffle, seed=1, window=4, memory="64KiB")
        seen = []
        for b in loader:
            _check(b)
            seen.append(b["label"])
        got = np.concatenate(seen)
        assert sorted(got.tolist()) == list(range(N))
        assert (got == np.arange(N)).all() != shuffle
    # epochs advance: the next pass is another order, the same set
    loader = ds.loader(100, shuffle=True, window=2)
    e0 = np.concatenate([b["label"] for b in loader])
    e1 = np.concatenate([b["label"] for b in loader])
    assert loader.epoch == 2 and not (e0 == e1).all() and sorted(e1.tolist()) == list(range(N))


def test_resume_at_every_step(ds_path: str) -> None:
    ds = open_dataset(ds_path)
    kw: dict[str, Any] = {
        "shuffle": True, "seed": 3, "window": 3, "columns": ["label"], "prefetch": 3,
    }
    ref = [b["label"] for b in ds.loader(150, **kw)]
    for k in range(len(ref) + 1):
        loader = ds.loader(150, **kw)
        it = iter(loader)
        for _ in range(k):
            next(it)  # batches prefetched beyond k must neither be lost nor repeated
        state = loader.state_dict()
        assert json.loads(json.dumps(state)) == state and len(json.dumps(state)) < 300
        fresh = ds.loader(150, **kw)
        fresh.load_state_dict(state)
        rest = [b["label"] for b in fresh]
        assert len(rest) == len(ref) - k
        assert all((a == b).all() for a, b in zip(rest, ref[k:]))


def test_preempted_twice_and_elastic(ds_path: str) -> None:
    ds = open_dataset(ds_path)
    kw: dict[str, Any] = {
        "shuffle": True, "seed": 9, "window": 4, "columns": ["label"], "batch_size": 16,
    }
    seen: list[np.ndarray] = []
    state = None
    for world, steps in ((2, 20), (3, 11), (1, 5), (4, 10**9)):
        loaders = [ds.loader(rank=r, world_size=world, **kw) for r in range(world)]
        for ld in loaders:
            if state is not None:
                ld.load_state_dict(state)
        its = [iter(ld) for ld in loaders]
        for _ in range(steps):
            got = [next(it, None) for it in its]
            if all(g is None for g in got):
                break
            seen.extend(g["label"] for g in got if g is not None)
        state = loaders[0].state_dict()
    allseen = np.concatenate(seen)
    assert len(allseen) == N and sorted(allseen.tolist()) == list(range(N))


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_torch_dataloader_workers(ds_path: str, method: str) -> None:
    import torch

    ds = open_dataset(ds_path)
    ds[[0]]  # the parent has used its store, pool and threads before workers start
    tds = ds.torch_dataset(50, shuffle=True, seed=2, window=3, num_threads=2)
    loader = torch.utils.data.DataLoader(
        tds, batch_size=None, num_workers=2, multiprocessing_context=method, timeout=120
    )
    batches = []
    for b in loader:
        _check(b)
        batches.append(b["label"].numpy())
    got = np.concatenate(batches)
    assert sorted(got.tolist()) == list(range(N))
    if method == "fork":  # resume from a mid-epoch count of consumed batches
        state = tds.state_dict(batches_seen=7, num_workers=2)
        tds2 = ds.torch_dataset(50, shuffle=True, seed=2, window=3)
        tds2.load_state_dict(state)
        rest = [
            b["label"].numpy()
            for b in torch.utils.data.DataLoader(
                tds2, batch_size=None, num_workers=2, multiprocessing_context=method
            )
        ]
        assert len(rest) == len(batches) - 7
        assert all((a == b).all() for a, b in zip(rest, batches[7:]))


@pytest.mark.s3
def test_s3_through_bounded_cache(s3_url: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, opts = s3_url
    _write(url, opts, n=600)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "mine.txt").write_text("not the cache's")
    ds = open_dataset(url, opts, cache_dir=cache, cache_bytes="6KiB")
    for epoch in range(2):
        loader = ds.loader(40, shuffle=True, window=2)
        loader.set_epoch(epoch)
        got = []
        for b in loader:
            _check(b)
            got.append(b["label"])
        assert sorted(np.concatenate(got).tolist()) == list(range(600))
    store = ds.store
    assert store.misses > 0 and store.cached_bytes() <= 6 * 1024  # type: ignore[attr-defined]
    assert (cache / "mine.txt").read_text() == "not the cache's"
    big = open_dataset(url, opts, cache_dir=cache, cache_bytes="10MiB")
    big[np.arange(600)]
    big[np.arange(600)]
    assert big.store.hits > 0  # type: ignore[attr-defined]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_ranks(world: int, url: str, out: Path, state: str, stop: int) -> None:
    port = _free_port()
    script = str(Path(__file__).with_name("_dist_worker.py"))
    procs = []
    for r in range(world):
        env = dict(
            os.environ,
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            RANK=str(r),
            WORLD_SIZE=str(world),
        )
        procs.append(
            subprocess.Popen([sys.executable, script, url, str(out), state, str(stop)], env=env)
        )
    for p in procs:
        assert p.wait(timeout=180) == 0


def test_multi_rank_gloo_with_elastic_resume(tmp_path: Path) -> None:
    url = str(tmp_path / "ds")
    label = np.arange(500, dtype=np.int64)
    write_dataset(
        url, {"label": label, "x": (label % 251).astype(np.uint8)[:, None]}, chunk_rows=16
    )
    full, part, rest = tmp_path / "full", tmp_path / "part", tmp_path / "rest"
    for d in (full, part, rest):
        d.mkdir()
    _run_ranks(3, url, full, "-", -1)
    seen = np.load(full / "seen.npy")
    assert len(seen) == 500 and sorted(seen.tolist()) == list(range(500))
    _run_ranks(2, url, part, "-", 9)  # preempted after 9 steps on 2 ranks...
    _run_ranks(3, url, rest, str(part / "state.json"), -1)  # ...resumed on 3
    both = np.concatenate([np.load(part / "seen.npy"), np.load(rest / "seen.npy")])
    assert len(both) == 500 and sorted(both.tolist()) == list(range(500))


def test_variable_length_column_through_the_loader(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    tokens = [rng.integers(0, 50_000, rng.integers(0, 40)).astype(np.int32) for _ in range(700)]
    url = tmp_path / "vl"
    write_dataset(url, {"tokens": tokens, "id": np.arange(700)}, chunk_rows=32)
    ds = open_dataset(url)
    seen: list[int] = []
    for rank in range(2):
        for b in ds.loader(16, shuffle=True, seed=5, rank=rank, world_size=2):
            for i, t in zip(b["id"].tolist(), b["tokens"]):
                assert np.array_equal(np.asarray(t), tokens[i])
                seen.append(i)
    assert sorted(seen) == list(range(700))
