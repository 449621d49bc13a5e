"""The dataset part of ``bigstore demo``: a dataset bigger than the loader's memory budget,
one shuffled epoch, and the figures that put its speed in context (memcpy and the disk's
sequential read bandwidth, both measured in the same run)."""

from __future__ import annotations

import pathlib
import time
from typing import Any

import numpy as np

from ..bench import direct_read_seconds, drop_page_cache, memcpy_seconds, store_files
from ..bench.report import human_bytes

__all__ = ["run"]


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
    files = store_files(url)
    drop_page_cache(files)
    dt_disk, disk_bytes = direct_read_seconds(files)  # the disk's sequential read, same bytes
    seq_bw = disk_bytes / dt_disk / 1e9
    mem_bw = data_bytes / memcpy_seconds(data_bytes) / 1e9
    drop_page_cache(files)
    chunk = ds.layout.chunk_rows * (sample + 8)
    window = max(2, budget // chunk // 4)  # a window must fit in the budget several times over
    loader = ds.loader(256, shuffle=True, seed=0, memory=budget, window=window)
    t = time.perf_counter()
    seen = np.zeros(n, np.int64)
    for batch in loader:
        label = batch["label"]
        seen[label] += 1
        # each image row is its label mod 251, written that way above: check a byte of each
        if not np.array_equal(batch["image"][:, -1], (label % 251).astype(np.uint8)):
            raise RuntimeError("the shuffled epoch delivered an image that is not its sample's")
    dt = time.perf_counter() - t
    if not (seen == 1).all():
        raise RuntimeError(
            f"the shuffled epoch delivered {int(seen.sum())} samples, "
            f"{int((seen == 0).sum())} missing, {int((seen > 1).sum())} repeated"
        )
    gbps = data_bytes / dt / 1e9
    out: dict[str, Any] = {
        "samples": n, "dataset_bytes": data_bytes, "memory_budget_bytes": budget,
        "samples_per_s": n / dt, "gbps": gbps, "memcpy_gbps": mem_bw,
        "disk_seq_gbps": seq_bw, "ratio_vs_memcpy": gbps / mem_bw,
        "ratio_vs_disk": gbps / seq_bw, "exactly_once": True, "ok": True,
    }
    out["lines"] = [
        f"dataset: {n:,} samples x {sample} B = {human_bytes(data_bytes)}, "
        f"loader memory budget {human_bytes(budget)}",
        f"shuffled epoch (cold): every sample exactly once, {n / dt:,.0f} samples/s, "
        f"{gbps:.2f} GB/s",
        f"  = {gbps / mem_bw:.2f}x memcpy ({mem_bw:.1f} GB/s), "
        f"{gbps / seq_bw:.2f}x the disk's sequential read ({seq_bw:.2f} GB/s)",
    ]
    return out
