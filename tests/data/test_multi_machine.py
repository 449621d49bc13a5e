"""Ranks on several machines share one ``s3://`` dataset, each machine through its own bounded
cache (a directory shared by that machine's ranks): every sample is seen exactly once per
epoch, and no machine's cache grows past its limit. Four real rank processes, two "machines"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigstore import write_dataset

N = 700


@pytest.mark.s3
def test_ranks_on_two_machines_share_an_s3_dataset(
    s3_url: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, opts = s3_url
    label = np.arange(N, dtype=np.int64)
    write_dataset(url, {"label": label, "x": (label % 251).astype(np.uint8)[:, None]},
                  chunk_rows=16, shard_bytes=4096, storage_options=opts)
    limit = 6 * 1024
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    for m in machines:
        m.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    script = str(Path(__file__).with_name("_machine_worker.py"))
    env = dict(os.environ, WORLD_SIZE="4", PYTHONPATH=os.pathsep.join(sys.path))
    procs = [
        subprocess.Popen(
            [sys.executable, script, url, json.dumps(opts), str(machines[r // 2]), str(limit),
             str(out)],
            env=dict(env, RANK=str(r)),
        )
        for r in range(4)
    ]
    assert [p.wait(timeout=240) for p in procs] == [0] * 4
    for epoch in range(2):
        seen = np.concatenate([np.load(out / f"rank{r}-epoch{epoch}.npy") for r in range(4)])
        assert len(seen) == N and sorted(seen.tolist()) == list(range(N))
    for m in machines:
        cached = list(m.rglob("*.blk"))
        assert cached, "the machine's ranks read through its cache"
        assert sum(f.stat().st_size for f in cached) <= limit
