"""Multi-rank loads: 4 real gloo ranks load one store reading each byte once (a logging store
wrapper counts every byte read), and all end with the tensors one process loads; the rank-local
variant reads only the chunks holding a rank's rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bigstore
from bigstore.plan.ranks import TensorRows, plan_group_load, split_contiguous
from bigstore.store import open_store
from tests._stores import LoggedStore, bytes_read
from tests.weights._group_worker import digest


def _checkpoint(path: Path) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    sd = {
        "embed.weight": torch.randn(1000, 64, generator=g),  # 16 chunks of 16 KiB
        "block.0.w": torch.randn(300, 100, generator=g).to(torch.bfloat16),
        "block.0.b": torch.randn(100, generator=g),
        "ids": torch.arange(5000, dtype=torch.int64),
        "scale": torch.tensor(3.5),
        "empty": torch.empty(0, 8),
        "head.weight": torch.randn(64, 777, generator=g).half(),
    }
    bigstore.save(sd, path, chunk_bytes="16KiB")
    return sd


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_four_gloo_ranks_read_each_byte_once(tmp_path: Path) -> None:
    url = tmp_path / "ckpt"
    sd = _checkpoint(url)
    log, out = tmp_path / "reads.log", tmp_path / "out"
    out.mkdir()
    port, world = _free_port(), 4
    script = str(Path(__file__).with_name("_group_worker.py"))
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               WORLD_SIZE=str(world), PYTHONPATH=os.pathsep.join(sys.path))
    procs = [subprocess.Popen([sys.executable, script, str(url), str(log), str(out)],
                              env=dict(env, RANK=str(r))) for r in range(world)]
    assert [p.wait(timeout=240) for p in procs] == [0] * world
    want = {k: digest(v) for k, v in sd.items()}
    for r in range(world):
        assert json.loads((out / f"rank{r}.json").read_text()) == want
    store = open_store(url)
    needed = ["zarr.json"] + [k for k in store.list() if "/c" in k]  # root + every chunk
    read = bytes_read(log)
    assert read == {k: store.size(k) for k in needed}  # each object read once, whole
    alone = tmp_path / "alone.log"
    bigstore.load(LoggedStore(open_store(url), str(alone)), mmap=False)
    assert sum(read.values()) == sum(bytes_read(alone).values())  # = one process's reads


def test_rank_local_rows_read_only_their_chunks(tmp_path: Path) -> None:
    url = tmp_path / "ckpt"
    sd = _checkpoint(url)
    world, name = 4, "embed.weight"
    rows = sd[name].shape[0]
    per_rank = []
    for r in range(world):
        log = tmp_path / f"r{r}.log"
        with bigstore.open(LoggedStore(open_store(url), str(log))) as ts:  # type: ignore[arg-type]
            part = ts[name][r * rows // world : (r + 1) * rows // world].torch()
        assert torch.equal(part, sd[name][r * rows // world : (r + 1) * rows // world])
        per_rank.append(sum(n for k, n in bytes_read(log).items() if k != "zarr.json"))
    chunk = open_store(url).size(f"{name}/c/0/0")
    total = sum(open_store(url).size(k) for k in open_store(url).list(f"{name}/c"))
    # each rank reads its rows' chunks; a chunk a boundary cuts is read by both its ranks
    assert all(n <= total // world + 2 * chunk for n in per_rank)
    assert sum(per_rank) <= total + (world - 1) * chunk


def test_plan_balances_whole_chunks() -> None:
    assert split_contiguous([5, 5, 5, 5], 2) == [(0, 2), (2, 4)]
    w = [10, 1, 1]
    assert max(sum(w[a:b]) for a, b in split_contiguous(w, 3)) == 10
    assert split_contiguous([], 3) == [(0, 0)] * 3
    tensors = [TensorRows("a", 1000, 100, 8), TensorRows("b", 3, 1, 5), TensorRows("c", 0, 1, 4)]
    plan = plan_group_load(tensors, 3)
    assert plan.offsets == {"a": 0, "b": 8000, "c": 8064}
    pieces = [p for r in plan.ranks for p in r.pieces]
    got = sorted((p.name, k) for p in pieces for k in range(p.start, p.stop))
    assert got == sorted([("a", k) for k in range(1000)] + [("b", k) for k in range(3)])
    sizes = [r.nbytes for r in plan.ranks]
    assert max(sizes) - min(sizes) <= 800 + 15 and sum(sizes) == 8015
    for r in plan.ranks:  # a rank's region is contiguous and holds exactly its pieces
        assert all(r.start <= p.offset and p.offset + p.nbytes <= r.stop for p in r.pieces)


def test_group_needs_an_initialised_process_group(tmp_path: Path) -> None:
    url = tmp_path / "ckpt"
    bigstore.save({"w": np.ones(3, np.float32)}, url)
    from bigstore.errors import DistributedError

    with pytest.raises(DistributedError, match="init_process_group"):
        bigstore.load(url, group=object())
