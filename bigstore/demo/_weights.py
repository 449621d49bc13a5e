"""Demo part 1: a generated checkpoint -> bigstore store -> loaded back, against the disk."""

from __future__ import annotations

import gc
import time
from pathlib import Path
from typing import Any

import torch

from ..bench import direct_read_seconds, disk_bound_seconds, drop_page_cache, store_files
from ..bench.report import human_bytes
from ..bench.synthetic import make_state_dict
from ..config import parse_bytes

__all__ = ["make_state_dict", "run"]


def run(
    workdir: Path, *, size: str = "2GiB", quick: bool = False, progress: bool = True
) -> dict[str, Any]:
    from safetensors.torch import save_file

    import bigstore

    total = parse_bytes("96MiB" if quick else size)
    hidden = 1024 if quick else 4096
    sd = make_state_dict(total, hidden=hidden)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    ckpt, store = workdir / "model.safetensors", workdir / "model.bigstore"
    save_file(sd, ckpt)

    t0 = time.perf_counter()
    bigstore.convert(ckpt, store, progress=progress)
    convert_s = time.perf_counter() - t0

    files = store_files(store)
    drop_page_cache(files)
    disk_s, _ = direct_read_seconds(files)  # the disk's sequential bound (dd-like), same bytes
    best_s, _, readers = disk_bound_seconds(files)  # with several requests in flight
    drop_page_cache(files)
    t0 = time.perf_counter()
    cold = bigstore.load(store)
    cold_s = time.perf_counter() - t0
    exact = all(torch.equal(cold[k].view(torch.int16), v.view(torch.int16)) for k, v in sd.items())
    del cold
    gc.collect()
    t0 = time.perf_counter()
    warm = bigstore.load(store)
    warm_s = time.perf_counter() - t0
    del warm, sd
    gc.collect()

    gbps = {"disk_sequential": nbytes / disk_s / 1e9, "disk_best": nbytes / best_s / 1e9,
            "load_cold": nbytes / cold_s / 1e9,
            "load_warm": nbytes / warm_s / 1e9, "convert": nbytes / convert_s / 1e9}
    pct = 100 * gbps["load_cold"] / gbps["disk_sequential"]
    lines = [
        f"[weights] {human_bytes(nbytes)} bf16 checkpoint, {len(files) - 1} files in the store",
        f"  convert safetensors -> bigstore  {convert_s:6.2f} s  {gbps['convert']:5.2f} GB/s",
        f"  disk sequential read (O_DIRECT)  {disk_s:6.2f} s  {gbps['disk_sequential']:5.2f} GB/s",
        f"  disk, best of 1-8 readers ({readers})  {best_s:6.2f} s  "
        f"{gbps['disk_best']:5.2f} GB/s",
        f"  load, cold cache (crc-verified)  {cold_s:6.2f} s  {gbps['load_cold']:5.2f} GB/s"
        f"  = {pct:.0f}% of the sequential read, "
        f"{100 * gbps['load_cold'] / gbps['disk_best']:.0f}% of the best",
        f"  load, warm cache (crc-verified)  {warm_s:6.2f} s  {gbps['load_warm']:5.2f} GB/s",
        f"  loaded tensors bit-identical to the checkpoint: {exact}",
    ]
    return {"bytes": nbytes, "seconds": {"convert": convert_s, "disk": disk_s, "cold": cold_s,
                                         "warm": warm_s},
            "GBps": gbps, "cold_pct_of_disk": pct, "bit_exact": exact, "ok": exact,
            "lines": lines}
