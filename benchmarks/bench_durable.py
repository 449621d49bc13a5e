"""What durability costs: fsync of every written file and directory before the commit, on vs off,
in one run (not a timed test).

    .venv/bin/python benchmarks/bench_durable.py            # ~1 GiB each, best of 3
    .venv/bin/python benchmarks/bench_durable.py --gib 0.25 --repeat 2   # a smoke run

Workloads: ``save`` of a checkpoint (16 float32 tensors of 1/16 of the size each, default 64 MiB
chunks) and ``write_dataset`` of 1 KiB uint8 samples + an int64 label (default shards), each
into a fresh directory. A run is timed from the call to its return (what a training loop waits
for). Between runs everything is synced and the store removed, untimed, so one run's writeback
never lands in the next one's time; on and off alternate (which goes first, too), so drift
in the disk's speed hits both.
A third row appends 1% of the samples to a 1 GiB dataset (durable appends fsync only
what they wrote). Also printed: the disk's sequential write speed with one fsync at the end (dd's
``conv=fsync``), the floor of any durable write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import bigstore
from bigstore.data import write_dataset

GiB = 1 << 30


def settle() -> None:
    os.sync()  # the previous run's dirty pages are written back before the next is timed


def timed(fn: Callable[[], object]) -> float:
    settle()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def dd_fsync_seconds(path: Path, nbytes: int) -> float:
    """Sequential write of ``nbytes`` in 8 MiB blocks, then one fsync."""
    block = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
    settle()
    t = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(nbytes // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t
    path.unlink()
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0, help="bytes per workload, in GiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", default=None, help="a directory on the disk to measure")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-durable-", dir=a.workdir))
    nbytes = int(a.gib * GiB)
    rng = np.random.default_rng(0)
    tensors = {f"layer.{i}.weight": torch.from_numpy(
        rng.standard_normal(nbytes // 16 // 4, dtype=np.float32)) for i in range(16)}
    n = nbytes // 1024
    samples = {"image": rng.integers(0, 256, (n, 1024), dtype=np.uint8),
               "label": np.arange(n, dtype=np.int64)}
    extra = {k: v[: n // 100] for k, v in samples.items()}
    base = work / "base"
    write_dataset(base, samples)

    def save(durable: bool) -> Callable[[], object]:
        return lambda: bigstore.save(tensors, work / "ckpt", durable=durable)

    def dataset(durable: bool) -> Callable[[], object]:
        return lambda: write_dataset(work / "ds", samples, durable=durable)

    def append(durable: bool) -> Callable[[], object]:
        def run() -> None:
            write_dataset(base, extra, mode="a", durable=durable)
        return run

    rows: dict[str, dict[bool, list[float]]] = {
        "save": {True: [], False: []}, "write_dataset": {True: [], False: []},
        "append 1%": {True: [], False: []},
    }
    makers = {"save": save, "write_dataset": dataset, "append 1%": append}
    try:
        disk = min(dd_fsync_seconds(work / "dd", nbytes) for _ in range(a.repeat))
        for rep in range(a.repeat):
            for name, make in makers.items():
                for durable in ((True, False) if rep % 2 == 0 else (False, True)):
                    rows[name][durable].append(timed(make(durable)))
                    if name != "append 1%":
                        shutil.rmtree(work / ("ckpt" if name == "save" else "ds"))
        print(f"{a.gib:g} GiB per workload, best of {a.repeat}; disk: sequential write + one "
              f"fsync {nbytes / disk / 1e9:.2f} GB/s ({disk:.2f} s)")
        print("| workload | durable=True s | durable=False s | cost |")
        print("|---|---|---|---|")
        for name, r in rows.items():
            on, off = min(r[True]), min(r[False])
            print(f"| {name} | {on:.3f} | {off:.3f} | {on / off:.2f}x (+{on - off:.3f} s) |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
