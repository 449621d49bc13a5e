"""``load(group=)`` with an NCCL group (the exchange on the GPU) and with a gloo group loading
to ``device="cuda"``: the tensors equal one process's load (one rank: one GPU is all a
machine here has; the 4-rank exchange itself runs over gloo in test_group_load.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bigstore

pytestmark = pytest.mark.gpu


def test_nccl_and_gloo_groups_on_cuda(tmp_path: Path) -> None:
    import torch.distributed as dist

    g = torch.Generator().manual_seed(1)
    sd = {"w": torch.randn(513, 77, generator=g).to(torch.bfloat16),
          "b": torch.randn(77, generator=g), "n": torch.tensor(7), "e": torch.empty(0, 3)}
    url = tmp_path / "ckpt"
    bigstore.save(sd, url, chunk_bytes="16KiB")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0,
                            world_size=1)
    try:
        got = bigstore.load(url, group=dist.group.WORLD)
        assert {k: v.device.type for k, v in got.items()} == dict.fromkeys(sd, "cuda")
        assert all(torch.equal(got[k].cpu(), sd[k]) for k in sd)
        gloo = dist.new_group(backend="gloo")
        got = bigstore.load(url, group=gloo, device="cuda")
        assert all(got[k].is_cuda and torch.equal(got[k].cpu(), sd[k]) for k in sd)
    finally:
        dist.destroy_process_group()
