"""`bigstore verify`, `info` and `ls` on dataset stores."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import bigstore


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bigstore", *args], capture_output=True,
                          text=True, timeout=300)


def test_dataset_verify_info_ls(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    url = tmp_path / "ds"
    bigstore.write_dataset(url, {"img": rng.integers(0, 255, (3000, 48), dtype=np.uint8),
                                 "label": np.arange(3000)}, chunk_rows=100)
    report = bigstore.verify(url)
    assert report.ok and report.tensors == 2 and report.chunks == 60

    info = json.loads(cli("info", str(url), "--json").stdout)
    assert info["kind"] == "dataset" and info["attributes"]["num_rows"] == 3000
    rows = {r["name"]: r for r in json.loads(cli("ls", str(url), "--json").stdout)}
    assert rows["img"]["shape"] == [3000, 48] and rows["img"]["codecs"][0] == "sharding_indexed"

    shard = url / "img" / "c" / "0" / "0"  # the only shard: 144 KB of rows
    data = bytearray(shard.read_bytes())
    data[5 * (100 * 48 + 4) + 17] ^= 0x01  # a byte inside inner chunk 5 of the first shard
    shard.write_bytes(bytes(data))
    r = cli("verify", str(url), "--json")
    assert r.returncode == 1
    problems = json.loads(r.stdout)["problems"]
    assert [(p["tensor"], p["chunk"]) for p in problems] == [("img", 5)]
