"""CUDA destinations beyond offload: whole loads to the device and the loader's device path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import bigstore
from bigstore.data import open_dataset, write_dataset

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_load_to_cuda_bit_exact(tmp_path: Path, codec: str | None) -> None:
    torch.manual_seed(0)
    sd = {
        "a": torch.randn(1000, 333),
        "b": torch.randn(77, 5).to(torch.bfloat16),
        "c": torch.arange(10, dtype=torch.int64),
        "s": torch.tensor(3.5),
    }
    bigstore.save(sd, tmp_path / "s", codec=codec, chunk_bytes="64KiB")
    got = bigstore.load(tmp_path / "s", device="cuda")
    for k, v in sd.items():
        assert got[k].is_cuda and got[k].dtype == v.dtype and torch.equal(got[k].cpu(), v)
    with bigstore.open(tmp_path / "s") as st:
        assert torch.equal(st["a"][10:20].torch("cuda").cpu(), sd["a"][10:20])


@pytest.mark.parametrize("pin", [False, True])
def test_loader_to_cuda(tmp_path: Path, pin: bool) -> None:
    n = 3000
    label = np.arange(n, dtype=np.int64)
    write_dataset(tmp_path / "d", {"label": label,
                                   "x": np.repeat((label % 251).astype(np.uint8)[:, None], 7, 1)},
                  chunk_rows=64)
    ds = open_dataset(tmp_path / "d")
    seen = []
    for b in ds.loader(128, shuffle=True, device="cuda", pin_memory=pin):
        assert b["label"].is_cuda and b["x"].is_cuda
        lab = b["label"].cpu().numpy()
        assert (b["x"].cpu().numpy() == (lab[:, None] % 251).astype(np.uint8)).all()
        seen.append(lab)
    assert sorted(np.concatenate(seen).tolist()) == list(range(n))
