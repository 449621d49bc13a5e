"""One rank of the multi-rank load test: ``python _group_worker.py URL LOG OUT_DIR``.

Joins a gloo group (MASTER_ADDR/PORT, RANK, WORLD_SIZE from the environment), loads the store
with ``group=`` through a store wrapper that logs every byte read (LOG, shared by the ranks),
and writes a digest of every tensor it got to OUT_DIR/rank<r>.json.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import bigstore
from bigstore.store import open_store
from tests._stores import LoggedStore


def digest(t: torch.Tensor) -> str:
    raw = t.contiguous().view(-1).view(torch.uint8) if t.numel() else torch.empty(0)
    return f"{t.dtype} {tuple(t.shape)} {hashlib.sha256(raw.numpy().tobytes()).hexdigest()}"


def main() -> None:
    url, log, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    dist.init_process_group("gloo")
    sd = bigstore.load(LoggedStore(open_store(url), log), group=dist.group.WORLD)
    (out / f"rank{dist.get_rank()}.json").write_text(
        json.dumps({k: digest(v) for k, v in sd.items()}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
