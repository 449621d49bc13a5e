"""Scale-out, measured in one run: distributed ingest and multi-rank loads.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--json] [--workdir DIR]

1. **Ingest**: a dataset of ``--size`` (default 2 GiB: 4 KiB uint8 samples + an int64 label),
   generated block by block, written by the single-process writer (an iterable of batches) and
   by ``write_dataset`` on a Dask ``LocalCluster`` of 1 and 2 worker processes (a dict of Dask
   Arrays, one partition per block). The cluster is started and warmed before the clock starts.
   Every contender generates the same blocks; the output is fsynced before the commit.
2. **Multi-rank load**: a ``--ckpt`` checkpoint (default 1 GiB, fp32) loaded by 2 and 4 gloo
   ranks, with ``load(url, group=WORLD)`` and with every rank loading everything itself
   (``mmap=False``: the bytes really read). Bytes read from storage are counted by a Store
   wrapper (what NFS or S3 would serve); the page cache is dropped before each run. On one
   machine the page cache serves the repeated reads of "every rank", so its time here is a
   lower bound of what shared storage would give.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

SAMPLE = 4096


# -- ingest -----------------------------------------------------------------------------------
def make_block(i: int, rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(i)
    return {"x": rng.integers(0, 256, (rows, SAMPLE), dtype=np.uint8),
            "label": np.arange(i * rows, (i + 1) * rows, dtype=np.int64)}


def _blocks(n_blocks: int, rows: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(n_blocks):
        yield make_block(i, rows)


def _dask_source(n_blocks: int, rows: int) -> dict[str, Any]:
    import dask
    import dask.array as da

    blocks = [dask.delayed(make_block)(i, rows) for i in range(n_blocks)]
    x = da.concatenate([da.from_delayed(b["x"], (rows, SAMPLE), np.uint8) for b in blocks])
    y = da.concatenate([da.from_delayed(b["label"], (rows,), np.int64) for b in blocks])
    return {"x": x, "label": y}


def _warm() -> None:
    import bigstore  # noqa: F401 - the first task must not pay for importing torch


def bench_ingest(work: Path, size: int, block_bytes: int,
                 workers: Sequence[int] = (1, 2)) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from bigstore import write_dataset

    rows = max(1, block_bytes // (SAMPLE + 8))
    n_blocks = max(1, size // (rows * (SAMPLE + 8)))
    nbytes = n_blocks * rows * (SAMPLE + 8)
    out: dict[str, Any] = {"bytes": nbytes, "samples": n_blocks * rows, "blocks": n_blocks,
                           "runs": {}}

    def timed(name: str, fn: Any) -> None:
        dst = work / name
        t = time.perf_counter()
        fn(dst)
        s = time.perf_counter() - t
        out["runs"][name] = {"seconds": s, "GB/s": nbytes / s / 1e9}
        shutil.rmtree(dst, ignore_errors=True)
        print(f"  ingest {name:<22} {s:7.2f} s  {nbytes / s / 1e9:6.3f} GB/s", file=sys.stderr)

    timed("single process", lambda d: write_dataset(d, _blocks(n_blocks, rows)))
    for n in workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                          dashboard_address=None) as cluster, Client(cluster) as client:
            client.run(_warm)
            timed(f"dask, {n} worker(s)",
                  lambda d, c=client: write_dataset(d, _dask_source(n_blocks, rows), client=c))
    base = out["runs"]["single process"]["seconds"]
    for r in out["runs"].values():
        r["speedup vs single"] = base / r["seconds"]
    return out


# -- multi-rank load --------------------------------------------------------------------------
class CountingStore:
    """Built in each rank: a Store that counts the bytes it reads (defined lazily: the module
    must import without bigstore for ``--help``)."""

    @staticmethod
    def wrap(url: str) -> Any:
        from bigstore.store import Store, open_store

        inner = open_store(url)

        class Counting(Store):
            zero_copy_reads = inner.zero_copy_reads
            nbytes = 0
            lock = threading.Lock()

            def _count(self, n: int) -> None:
                with self.lock:
                    Counting.nbytes += n

            def get(self, key: str) -> Any:
                data = inner.get(key)
                self._count(memoryview(data).nbytes)
                return data

            def get_ranges(self, key: str, ranges: Sequence[Any]) -> list[Any]:
                got = inner.get_ranges(key, ranges)
                self._count(sum(memoryview(b).nbytes for b in got))
                return got

            def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
                inner.read_into(key, offset, outs)
                self._count(sum(o.nbytes for o in outs))

            def exists(self, key: str) -> bool:
                return inner.exists(key)

            def size(self, key: str) -> int:
                return inner.size(key)

            def list(self, prefix: str = "") -> Any:
                return inner.list(prefix)

            def version(self, key: str) -> str | None:
                return inner.version(key)

            def put(self, key: str, data: Any) -> None:
                raise RuntimeError("read-only")

            def delete(self, key: str) -> None:
                raise RuntimeError("read-only")

            def delete_prefix(self, prefix: str) -> None:
                raise RuntimeError("read-only")

        return Counting(inner.url)


def rank_main(url: str, mode: str, out: str) -> None:
    import torch
    import torch.distributed as dist

    import bigstore

    dist.init_process_group("gloo")
    store = CountingStore.wrap(url)
    dist.barrier()
    t = time.perf_counter()
    if mode == "group":
        sd = bigstore.load(store, group=dist.group.WORLD)
    else:
        sd = bigstore.load(store, mmap=False)
    dist.barrier()
    seconds = time.perf_counter() - t
    got = torch.tensor([type(store).nbytes, sum(v.nbytes for v in sd.values())],
                       dtype=torch.int64)
    dist.all_reduce(got)
    if dist.get_rank() == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "read": int(got[0]),
                                         "delivered": int(got[1])}))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_load(work: Path, size: int) -> dict[str, Any]:
    import torch

    import bigstore
    from bigstore.bench.bounds import drop_page_cache

    url = work / "ckpt"
    n = 16
    rows = max(1, size // n // (1024 * 4))
    g = torch.Generator().manual_seed(0)
    bigstore.save({f"layer.{i}.weight": torch.randn(rows, 1024, generator=g) for i in range(n)},
                  url)
    files = [p for p in url.rglob("*") if p.is_file()]
    stored = sum(p.stat().st_size for p in files)
    out: dict[str, Any] = {"store bytes": stored, "runs": []}
    for world in (2, 4):
        for mode in ("group", "each"):
            drop_page_cache(files)
            res = work / "rank0.json"
            env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
                       WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
            procs = [subprocess.Popen([sys.executable, __file__, "--rank-worker", str(url), mode,
                                       str(res)], env=dict(env, RANK=str(r)))
                     for r in range(world)]
            if any(p.wait() != 0 for p in procs):
                raise SystemExit(f"a rank of the {mode} load on {world} ranks failed")
            r = json.loads(res.read_text())
            r.update(world=world, mode=mode, **{"read / store": r["read"] / stored})
            out["runs"].append(r)
            print(f"  load {world} ranks {mode:<6} {r['seconds']:7.2f} s  read "
                  f"{r['read'] / 1e9:6.3f} GB ({r['read / store']:.2f}x the store)",
                  file=sys.stderr)
    shutil.rmtree(url, ignore_errors=True)
    return out


# -- report -----------------------------------------------------------------------------------
def table(result: dict[str, Any]) -> str:
    lines = []
    ing = result.get("ingest")
    if ing:
        lines += [f"Ingest of {ing['bytes'] / 1e9:.2f} GB ({ing['samples']} samples, "
                  f"{ing['blocks']} partitions)", "",
                  "| writer | seconds | GB/s | x single process |", "|---|---|---|---|"]
        for name, r in ing["runs"].items():
            lines.append(f"| {name} | {r['seconds']:.2f} | {r['GB/s']:.3f} | "
                         f"{r['speedup vs single']:.2f} |")
        lines.append("")
    ld = result.get("load")
    if ld:
        lines += [f"Multi-rank load of a {ld['store bytes'] / 1e9:.2f} GB checkpoint (cold "
                  "page cache)", "",
                  "| ranks | mode | seconds | GB read from storage | x store size |",
                  "|---|---|---|---|---|"]
        for r in ld["runs"]:
            lines.append(f"| {r['world']} | {r['mode']} | {r['seconds']:.2f} | "
                         f"{r['read'] / 1e9:.3f} | {r['read / store']:.2f} |")
        by = {(r["world"], r["mode"]): r for r in ld["runs"]}
        for w in (2, 4):
            g, e = by.get((w, "group")), by.get((w, "each"))
            if g and e:
                lines.append(f"\n{w} ranks: every-rank-reads-everything / group: "
                             f"{e['read'] / g['read']:.2f}x the bytes, "
                             f"{e['seconds'] / g['seconds']:.2f}x the time")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from bigstore.config import parse_bytes

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--size", default=None, help="ingest dataset bytes (default 2GiB)")
    ap.add_argument("--ckpt", default=None, help="checkpoint bytes (default 1GiB)")
    ap.add_argument("--skip", choices=["ingest", "load"], action="append", default=[])
    ap.add_argument("--workers", default="1,2", help="Dask worker processes to measure")
    args = ap.parse_args(argv)
    size = parse_bytes(args.size or ("96MiB" if args.quick else "2GiB"))
    ckpt = parse_bytes(args.ckpt or ("32MiB" if args.quick else "1GiB"))
    block = parse_bytes("8MiB" if args.quick else "128MiB")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-", dir=args.workdir))
    result: dict[str, Any] = {"benchmark": "bigstore scale-out", "quick": args.quick}
    try:
        if "ingest" not in args.skip:
            workers = [int(w) for w in args.workers.split(",")]
            result["ingest"] = bench_ingest(work, size, block, workers)
        if "load" not in args.skip:
            result["load"] = bench_load(work, ckpt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank-worker":
        rank_main(*sys.argv[2:5])
    else:
        main()
