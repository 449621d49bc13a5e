"""The dataset part of ``bigstore demo``: a dataset bigger than the loader's memory budget,
one shuffled epoch, and the figures that put its speed in context (memcpy and the disk's
sequential read bandwidth, both measured in the same run)."""

from __future__ import annotations

import os
import pathlib
import time
from typing import Any

import numpy as np

__all__ = ["run", "drop_page_cache", "memcpy_gbps", "sequential_read_gbps"]


def drop_page_cache(root: pathlib.Path) -> None:
    """Ask the kernel to forget cached pages of every file under ``root`` (cold reads)."""
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def memcpy_gbps(nbytes: int) -> float:
    src = np.ones(min(nbytes, 256 << 20), np.uint8)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    reps = max(1, nbytes // src.nbytes)
    t = time.perf_counter()
    for _ in range(reps):
        np.copyto(dst, src)
    return reps * src.nbytes / (time.perf_counter() - t) / 1e9


def sequential_read_gbps(root: pathlib.Path) -> float:
    """Cold sequential read of every file under ``root`` in 16 MiB reads."""
    drop_page_cache(root)
    buf = bytearray(16 << 20)
    total = 0
    t = time.perf_counter()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with p.open("rb", buffering=0) as f:
                while n := f.readinto(buf):
                    total += n
    return total / (time.perf_counter() - t) / 1e9


def run(workdir: pathlib.Path, *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    from ..data import open_dataset, write_dataset

    workdir = pathlib.Path(workdir)
    n, sample = (40_000, 4096) if quick else (250_000, 8192)
    budget = (32 << 20) if quick else (256 << 20)
    url = workdir / "demo-dataset"

    def batches() -> Any:
        step = 8192
        for s in range(0, n, step):
            m = min(step, n - s)
            idx = np.arange(s, s + m, dtype=np.int64)
            img = np.empty((m, sample), np.uint8)
            img[:] = (idx % 251).astype(np.uint8)[:, None]
            yield {"image": img, "label": idx}

    write_dataset(url, batches(), progress=progress)
    ds = open_dataset(url)
    data_bytes = n * (sample + 8)
    seq_bw = sequential_read_gbps(url)
    mem_bw = memcpy_gbps(data_bytes)
    drop_page_cache(url)
    chunk = ds.layout.chunk_rows * (sample + 8)
    window = max(2, budget // chunk // 4)  # a window must fit in the budget several times over
    loader = ds.loader(256, shuffle=True, seed=0, memory=budget, window=window)
    t = time.perf_counter()
    count = 0
    for batch in loader:
        count += batch["label"].shape[0]
    dt = time.perf_counter() - t
    if count != n:
        raise RuntimeError(f"the shuffled epoch delivered {count} of {n} samples")
    gbps = data_bytes / dt / 1e9
    out: dict[str, Any] = {
        "samples": n, "dataset_bytes": data_bytes, "memory_budget_bytes": budget,
        "samples_per_s": n / dt, "gbps": gbps, "memcpy_gbps": mem_bw,
        "disk_seq_gbps": seq_bw, "ratio_vs_memcpy": gbps / mem_bw,
        "ratio_vs_disk": gbps / seq_bw,
    }
    out["lines"] = [
        f"dataset: {n:,} samples x {sample} B = {data_bytes / 1e9:.2f} GB, "
        f"loader memory budget {budget >> 20} MiB",
        f"shuffled epoch (cold): {n / dt:,.0f} samples/s, {gbps:.2f} GB/s",
        f"  = {gbps / mem_bw:.2f}x memcpy ({mem_bw:.1f} GB/s), "
        f"{gbps / seq_bw:.2f}x the disk's sequential read ({seq_bw:.2f} GB/s)",
    ]
    return out
