"""``bigstore bench disk``: the bounds of a storage path.

Local paths: buffered and O_DIRECT sequential reads with 1..N readers (cold), random reads of
4 KiB-4 MiB blocks (IOPS and per-request latency), a page-cache read and memcpy. Object stores
(any fsspec URL, or a :class:`~bigstore.store.Store`): concurrent ranged GETs over part sizes
and concurrency.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import KiB, MiB
from ..errors import BigstoreError
from ..store import ByteRange, Store, is_local_url, local_path
from .bounds import memcpy_seconds, o_direct_supported, random_read_latencies, read_seconds
from .progress import Progress
from .result import Report, Row, new_report
from .runs import Case, Outcome, measure
from .stores import open_measured
from .synthetic import write_random_file

__all__ = ["DiskOptions", "ranged_get", "run_disk"]


@dataclass(frozen=True)
class DiskOptions:
    """readers: sequential-read concurrency levels; blocks: random-read sizes (bytes);
    random_count: requests per random-read run; parts / concurrency: ranged-GET sizes and
    requests in flight (object stores)."""

    runs: int = 3
    readers: tuple[int, ...] = (1, 2, 4, 8)
    blocks: tuple[int, ...] = (4 * KiB, 64 * KiB, 1 * MiB, 4 * MiB)
    random_count: int = 256
    random_depth: int = 1
    parts: tuple[int, ...] = (1 * MiB, 8 * MiB, 32 * MiB)
    concurrency: tuple[int, ...] = (1, 4, 16)
    max_requests: int = 256


def run_disk(
    target: str | os.PathLike[str] | Store, *, synthetic: int | None = None,
    options: DiskOptions | None = None, storage_options: Mapping[str, Any] | None = None,
    keep: bool = False, progress: Progress | None = None,
) -> Report:
    """Measure the bounds of ``target`` (a directory, a file, or an object-store URL)."""
    opts = options or DiskOptions()
    progress = progress or Progress(False)
    if isinstance(target, Store) or not is_local_url(os.fspath(target)):
        store = open_measured(target, storage_options)
        return _run_store(store, synthetic=synthetic, opts=opts, keep=keep, progress=progress)
    return _run_local(Path(local_path(os.fspath(target))), synthetic=synthetic, opts=opts,
                      keep=keep, progress=progress)


def _run_local(
    path: Path, *, synthetic: int | None, opts: DiskOptions, keep: bool, progress: Progress
) -> Report:
    made: Path | None = None
    if synthetic is not None:
        if path.exists() and not path.is_dir():
            raise BigstoreError(f"{path}: --synthetic writes a file into a directory; this is "
                                "a file")
        path.mkdir(parents=True, exist_ok=True)
        made = path / f"bigstore-bench-{uuid.uuid4().hex[:8]}.bin"
        with progress.bar("writing the synthetic file", synthetic, unit="B") as bar:
            write_random_file(made, synthetic)
            bar.update(synthetic)
        files = [made]
    elif path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(f for f in path.rglob("*") if f.is_file())
        if not files:
            raise BigstoreError(f"{path}: no files to read (use --synthetic SIZE to make one)")
    else:
        raise BigstoreError(f"{path}: no such file or directory (use --synthetic SIZE to "
                            "measure an empty directory)")
    report = new_report("disk", str(path), path, settings={
        "runs": opts.runs, "readers": ",".join(map(str, opts.readers)),
        "blocks": ",".join(map(str, opts.blocks)), "random_count": opts.random_count,
        "random_depth": opts.random_depth,
    }, synthetic=synthetic, description=f"{synthetic} random bytes in one file")
    try:
        _local_cases(report, files, opts, progress)
    finally:
        if made is not None and not keep:
            made.unlink(missing_ok=True)
    report.finish()
    return report


def _local_cases(report: Report, files: list[Path], opts: DiskOptions, progress: Progress) -> None:
    total = sum(f.stat().st_size for f in files)
    direct = o_direct_supported(files[0])
    if not direct:
        report.note(f"{files[0].parent}: the file system refuses O_DIRECT; 'direct' reads go "
                    "through the page cache after a drop")
    cases: list[Case] = []
    for n in opts.readers:
        for is_direct in (True, False):
            kind = "O_DIRECT" if is_direct else "buffered"

            def seq(is_direct: bool = is_direct, n: int = n) -> Outcome:
                dt, nbytes = read_seconds(files, direct=is_direct, threads=n)
                return Outcome(nbytes, seconds=dt)

            cases.append(Case(f"{kind} read, {n} reader{'s' if n > 1 else ''}", "sequential",
                              "bound", seq, files=files, cold=True,
                              params={"readers": n, "direct": is_direct, "block_bytes": 8 * MiB}))
    big = max(files, key=lambda f: f.stat().st_size)
    for block in opts.blocks:
        if block > big.stat().st_size:
            continue

        # no more than a few passes over the file's bytes per run, whatever the block size
        count = min(opts.random_count, max(8, 4 * big.stat().st_size // block))

        def rnd(block: int = block, count: int = count) -> Outcome:
            dt, lat = random_read_latencies(big, block, count, direct=direct,
                                            threads=opts.random_depth)
            n = len(lat)
            return Outcome(n * block, work=n, seconds=dt, latencies=lat.tolist(),
                           metrics={"bytes_per_s": n * block / dt if dt > 0 else 0.0})

        cases.append(Case(f"random {_size(block)} reads", "random", "bound", rnd, unit="IOPS",
                          files=[big], cold=True,
                          params={"block_bytes": block, "depth": opts.random_depth,
                                  "direct": direct}))

    def cached() -> Outcome:
        dt, nbytes = read_seconds(files, direct=False)
        return Outcome(nbytes, seconds=dt)

    def copy() -> Outcome:
        return Outcome(total, seconds=memcpy_seconds(total, repeat=1))

    warm = [Case("page-cache read", "memory", "bound", cached, warmup=1),
            Case("memcpy", "memory", "bound", copy, cache="memory")]
    # cold and warm apart: a cold case's drop would empty the warm case's cache
    for group, label in ((cases, "timed cold reads"), (warm, "timed warm reads")):
        for row in measure(group, opts.runs, progress, label):
            report.add(row)


def ranged_get(
    store: Store, key: str, size: int, part: int, concurrency: int, max_requests: int
) -> tuple[float, int, list[float]]:
    """GET ``key`` as ``part``-byte ranges with ``concurrency`` requests in flight (at most
    ``max_requests``): (seconds, bytes, per-request seconds)."""
    import time

    starts = list(range(0, size, part))[:max_requests]

    def one(start: int) -> tuple[int, float]:
        t = time.perf_counter()
        (buf,) = store.get_ranges(key, [ByteRange(start, min(size, start + part))])
        return memoryview(buf).nbytes, time.perf_counter() - t

    t0 = time.perf_counter()
    if concurrency <= 1:
        got = [one(s) for s in starts]
    else:
        with ThreadPoolExecutor(concurrency) as pool:
            got = list(pool.map(one, starts))
    dt = time.perf_counter() - t0
    return dt, sum(g[0] for g in got), [g[1] for g in got]


def _run_store(
    store: Store, *, synthetic: int | None, opts: DiskOptions, keep: bool, progress: Progress
) -> Report:
    made: str | None = None
    if synthetic is not None:
        made = f"bigstore-bench-{uuid.uuid4().hex[:8]}.bin"
        import numpy as np

        with progress.bar("uploading the synthetic object", synthetic, unit="B") as bar:
            data = np.random.default_rng(0).integers(0, 256, synthetic, dtype=np.uint8)
            store.put(made, memoryview(data))
            bar.update(synthetic)
        keys = [made]
    else:
        keys = sorted(store.list(""))
        if not keys:
            raise BigstoreError(f"{store.url}: no objects to read (use --synthetic SIZE)")
    sizes = {k: store.size(k) for k in keys}
    key = max(keys, key=lambda k: sizes[k])
    size = sizes[key]
    kind = "memory" if store.url.startswith("memory://") else "remote"
    report = new_report("disk", store.url, None, settings={
        "runs": opts.runs, "parts": ",".join(map(str, opts.parts)),
        "concurrency": ",".join(map(str, opts.concurrency)), "max_requests": opts.max_requests,
        "object": key, "object_bytes": size,
    }, synthetic=synthetic, description=f"{synthetic} random bytes in one object")
    report.note(f"{store.url}: an object store has no page cache of ours to drop: every run "
                "reads over the network" if kind == "remote" else
                f"{store.url}: an in-memory store: reads never touch a device")
    cases: list[Case] = []
    try:
        for part in opts.parts:
            if part > size and part != min(opts.parts):
                continue
            for c in opts.concurrency:
                def get(part: int = part, c: int = c) -> Outcome:
                    dt, nbytes, lat = ranged_get(store, key, size, part, c, opts.max_requests)
                    return Outcome(nbytes, seconds=dt, latencies=lat,
                                   metrics={"requests": float(len(lat))})

                cases.append(Case(f"ranged GET {_size(part)} x {c} in flight", "ranged GET",
                                  "bound", get, cache=kind,
                                  params={"part_bytes": part, "concurrency": c}))

        def copy() -> Outcome:
            return Outcome(size, seconds=memcpy_seconds(size, repeat=1))

        cases.append(Case("memcpy", "memory", "bound", copy, cache="memory"))
        rows: list[Row] = measure(cases, opts.runs, progress, "timed GETs")
        for row in rows:
            report.add(row)
    finally:
        if made is not None and not keep:
            store.delete(made)
    report.finish()
    return report


def _size(n: int) -> str:
    for unit, f in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= f and n % f == 0:
            return f"{n // f} {unit}"
    return f"{n} B"

