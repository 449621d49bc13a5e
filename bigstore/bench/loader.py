"""``bigstore bench loader``: a simulated accelerator in the manner of MLPerf Storage.

The loop takes a batch, then "computes" for ``compute_ms`` (a sleep) or calls a given step
function. Per epoch: samples/s, GB/s and accelerator utilisation AU = compute time / wall time
(first step excluded: it carries start-up costs every loader pays once). The same loop runs
over the peers: torch ``DataLoader`` over a memmap and pyarrow ``take`` of the same bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BenchTargetError, BigstoreError
from ..store import is_local_url, local_path
from .bounds import store_files
from .peers import PEERS, find_peer
from .progress import Progress
from .result import Check, Report, Row, new_report
from .runs import Case, Outcome, measure
from .stores import Scratch

__all__ = ["LoaderOptions", "run_loader", "simulate"]

Step = Callable[[Any], object]


@dataclass(frozen=True)
class LoaderOptions:
    """epochs: timed epochs per loader (each a run); batch_size; compute_ms: simulated compute
    per batch; shuffle; cold: drop the dataset's page cache before every epoch (as MLPerf
    Storage wants storage, not memory, measured); au_target: the AU an epoch must reach;
    peers: which installed peers run the same loop; row_bytes: row size of ``--synthetic``."""

    epochs: int = 3
    batch_size: int = 256
    compute_ms: float = 0.0
    shuffle: bool = True
    cold: bool = True
    au_target: float = 0.9
    peers: tuple[str, ...] = ("torch_dataloader", "pyarrow")
    row_bytes: int = 4096
    workers: int = 0


def simulate(batches: Iterable[Any], compute: Step, nbytes: Callable[[Any], int]) -> Outcome:
    """Run one epoch of the simulated accelerator over ``batches``; the Outcome's metrics carry
    AU, steps and samples. The wall clock starts when the first step ends."""
    steps = samples = total = 0
    busy = 0.0
    start = None
    t_first = time.perf_counter()
    for batch in batches:
        b = nbytes(batch)
        t = time.perf_counter()
        compute(batch)
        dt = time.perf_counter() - t
        steps += 1
        samples += _rows(batch)
        total += b
        if start is None:
            start = time.perf_counter()  # first step excluded from AU
        else:
            busy += dt
    end = time.perf_counter()
    wall = end - start if start is not None else 0.0
    au = busy / wall if wall > 0 else float("nan")
    return Outcome(total, work=samples, seconds=end - t_first,
                   metrics={"au": au, "steps": float(steps), "samples": float(samples),
                            "compute_s": busy, "wall_after_first_step_s": wall})


def _rows(batch: Any) -> int:
    if isinstance(batch, Mapping):
        first = next(iter(batch.values()))
    elif isinstance(batch, tuple | list):
        first = batch[0]
    else:
        first = batch
    return int(first.shape[0]) if hasattr(first, "shape") else len(first)


def _nbytes(batch: Any) -> int:
    vals = batch.values() if isinstance(batch, Mapping) else (
        batch if isinstance(batch, tuple | list) else [batch])
    total = 0
    for v in vals:
        total += int(v.nbytes) if hasattr(v, "nbytes") else int(v.numel() * v.element_size())
    return total


def sleeper(ms: float) -> Step:
    def step(_batch: Any) -> None:
        if ms > 0:
            time.sleep(ms / 1000)

    return step


def run_loader(
    target: str | os.PathLike[str], *, synthetic: str | None = None,
    options: LoaderOptions | None = None, step: Step | None = None,
    storage_options: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None, keep: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Measure ``ds.loader(...)`` on the dataset at ``target`` under a simulated accelerator
    (with ``synthetic`` "NxROWBYTES" or a size: a new dataset written under ``target``)."""
    import bigstore

    from .synthetic import dataset_batches, parse_dataset_spec

    opts = options or LoaderOptions()
    progress = progress or Progress(False)
    compute = step or sleeper(opts.compute_ms)
    target_s = os.fspath(target)
    local = is_local_url(target_s)
    n_syn = rb = 0
    if synthetic is not None:
        n_syn, rb = parse_dataset_spec(synthetic, opts.row_bytes)
    report = new_report(
        "loader", target_s, local_path(target_s) if local else None,
        settings={"epochs": opts.epochs, "batch_size": opts.batch_size,
                  "compute_ms": opts.compute_ms if step is None else None,
                  "step": getattr(step, "__qualname__", None) if step else None,
                  "shuffle": opts.shuffle, "cold": opts.cold, "au_target": opts.au_target,
                  "peers": ",".join(opts.peers)},
        synthetic=None if synthetic is None else n_syn * (rb + 8),
        description=f"{n_syn} samples x {rb} B uint8 + int64 label",
    )
    with Scratch("loader", target_s, workdir=workdir, storage_options=storage_options,
                 keep=keep) as scratch:
        work = scratch.work
        url = target_s
        if synthetic is not None:
            url = scratch.new_store()
            with progress.bar("writing the synthetic dataset", n_syn, unit="sample") as bar:
                def counted() -> Any:
                    for b in dataset_batches(n_syn, rb):
                        yield b
                        bar.update(len(b["label"]))

                bigstore.write_dataset(url, counted(), storage_options=storage_options)
        try:
            ds = bigstore.open_dataset(url, storage_options, cache_dir=work / "cache")
        except BigstoreError as e:
            raise BenchTargetError(f"{target_s}: not a bigstore dataset ({e})") from None
        n = len(ds)
        ds.close()
        report.settings["samples"] = n
        _bigstore_rows(report, url, opts, compute, storage_options, work, progress, local)
        _peer_rows(report, url, opts, compute, storage_options, work, progress, local)
        if opts.epochs > 0:
            for r in report.rows:
                aus = [s.metrics.get("au", float("nan")) for s in r.samples]
                r.metrics["au_min"] = min(aus) if aus else None
                r.metrics["au_mean"] = float(np.mean(aus)) if aus else None
                r.metrics["au_passed"] = float(all(a >= opts.au_target for a in aus))
            main = report.contender()
            if main is not None and step is None and opts.compute_ms <= 0:
                # nothing was computed, so AU is 0 by definition: no verdict to give
                report.note("no accelerator simulated (compute 0 ms a batch): AU not judged; "
                            "give --compute-ms to measure it")
            elif main is not None:
                verdict = "met in every epoch" if main.metrics["au_passed"] else "MISSED"
                report.note(f"AU target {opts.au_target:.0%}: bigstore {verdict} "
                            f"(lowest epoch {main.metrics['au_min']:.3f})")
    report.finish()
    return report


def au_check(report: Report, target: float) -> Check:
    """The lowest AU over bigstore's epochs, against ``target``."""
    main = report.contender()
    value = None if main is None else main.metrics.get("au_min")
    return Check("au (lowest epoch, bigstore)", target, value)


def _bigstore_rows(
    report: Report, url: str, opts: LoaderOptions, compute: Step,
    storage_options: Mapping[str, Any] | None, work: Path, progress: Progress, local: bool,
) -> None:
    import bigstore

    files = store_files(local_path(url)) if local else []
    cache = work / "cache"

    def epoch() -> Outcome:
        # a fresh dataset per epoch: mapped shards are unmapped at close, so a drop takes
        if not local:
            shutil.rmtree(cache, ignore_errors=True)  # remote "cold": an empty local cache
        ds = bigstore.open_dataset(url, storage_options, cache_dir=cache)
        try:
            loader = ds.loader(opts.batch_size, shuffle=opts.shuffle, seed=0)
            return simulate(loader, compute, _nbytes)
        finally:
            ds.close()

    kind = "cold" if opts.cold and local else "warm" if local else (
        "memory" if url.startswith("memory://") else "remote")
    if not local:
        report.note(f"{url}: an object store has no page cache of ours; each epoch starts "
                    "with an empty local cache" if kind == "remote" else
                    f"{url}: an in-memory store: nothing to drop")
    case = Case("bigstore loader", "epochs", "contender", epoch, unit="samples/s", files=files,
                cold=opts.cold and local, cache=kind, warmup=0 if opts.cold else 1,
                params={"batch_size": opts.batch_size, "shuffle": opts.shuffle})
    for row in measure([case], opts.epochs, progress, "loader: bigstore epochs"):
        _rates(row)
        report.add(row)


def _rates(row: Row) -> None:
    for s in row.samples:
        s.metrics["gb_per_s"] = s.nbytes / s.seconds / 1e9 if s.seconds > 0 else 0.0
    rates = [s.metrics["gb_per_s"] for s in row.samples]
    row.metrics["gb_per_s_p50"] = float(np.median(rates)) if rates else None


def _export(url: str, storage_options: Mapping[str, Any] | None, work: Path
            ) -> tuple[dict[str, Path], int] | None:
    """The dataset's fixed-shape columns as .npy files (the peers' input), or None."""
    import bigstore

    ds = bigstore.open_dataset(url, storage_options, cache_dir=work / "cache")
    try:
        cols = {}
        for name, _kind, shape in ds.columns:
            if shape is None:
                return None
            cols[name] = name
        n = len(ds)
        out: dict[str, Path] = {}
        first = ds[np.arange(min(n, 1))]
        for name in cols:
            arr = first[name]
            path = work / f"{name}.npy"
            mm = np.lib.format.open_memmap(path, mode="w+", dtype=arr.dtype,
                                           shape=(n, *arr.shape[1:]))
            step = max(1, (16 << 20) // max(1, arr[0:1].nbytes))
            for s in range(0, n, step):
                mm[s: s + step] = ds[np.arange(s, min(n, s + step))][name]
            mm.flush()
            del mm
            out[name] = path
        return out, n
    finally:
        ds.close()


def _peer_rows(
    report: Report, url: str, opts: LoaderOptions, compute: Step,
    storage_options: Mapping[str, Any] | None, work: Path, progress: Progress, local: bool,
) -> None:
    wanted = []
    for key in opts.peers:
        ok, note = find_peer(PEERS[key])
        report.note(note)
        if ok:
            wanted.append(key)
    if not wanted:
        return
    with progress.bar("exporting the dataset for the peers", None, unit="column"):
        exported = _export(url, storage_options, work)
    if exported is None:
        report.note("peers skipped: the dataset has variable-length columns (the peers read "
                    "fixed-shape arrays)")
        return
    cols, n = exported
    files = list(cols.values())
    rng = np.random.default_rng(1)
    cases = []
    if "torch_dataloader" in wanted:
        def dl_epoch() -> Outcome:
            return simulate(_torch_batches(cols, n, opts, rng), compute, _nbytes)

        cases.append(Case(PEERS["torch_dataloader"].name, "epochs", "peer", dl_epoch,
                          unit="samples/s", files=files, cold=opts.cold,
                          params={"workers": opts.workers, "batch_size": opts.batch_size}))
    if "pyarrow" in wanted:
        def arrow_epoch() -> Outcome:
            return simulate(_arrow_batches(cols, n, opts, rng), compute, _nbytes)

        cases.append(Case(PEERS["pyarrow"].name, "epochs", "peer", arrow_epoch,
                          unit="samples/s", files=files, cold=opts.cold,
                          params={"batch_size": opts.batch_size}))
    for row in measure(cases, opts.epochs, progress, "loader: peer epochs"):
        _rates(row)
        if not local:
            row.note = "reads a local export of the dataset"
        report.add(row)


def _torch_batches(cols: dict[str, Path], n: int, opts: LoaderOptions,
                   rng: np.random.Generator) -> Iterable[Any]:
    import torch

    class MM(torch.utils.data.Dataset[Any]):
        """Opens the memmaps once per process (lazily: each worker opens its own)."""

        def __init__(self) -> None:
            self.m: dict[str, Any] | None = None

        def __len__(self) -> int:
            return n

        def __getitem__(self, i: int) -> dict[str, Any]:
            if self.m is None:
                self.m = {k: np.load(p, mmap_mode="r") for k, p in cols.items()}
            return {k: np.array(v[i]) for k, v in self.m.items()}

    ds = MM()
    sampler = (torch.utils.data.RandomSampler(ds, generator=torch.Generator().manual_seed(0))
               if opts.shuffle else None)
    return torch.utils.data.DataLoader(ds, batch_size=opts.batch_size, sampler=sampler,
                                       num_workers=opts.workers)


def _arrow_batches(cols: dict[str, Path], n: int, opts: LoaderOptions,
                   rng: np.random.Generator) -> Iterable[Any]:
    import pyarrow as pa

    arrays = {}
    for k, p in cols.items():
        m = np.load(p, mmap_mode="r")
        if m.ndim == 1:
            arrays[k] = pa.array(m)
        else:
            width = int(np.prod(m.shape[1:])) * m.dtype.itemsize
            arrays[k] = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), n, [None, pa.py_buffer(m)])
    table = pa.table(arrays)
    order = rng.permutation(n) if opts.shuffle else np.arange(n)
    for s in range(0, n, opts.batch_size):
        t = table.take(order[s: s + opts.batch_size])
        yield {k: t.column(k).combine_chunks() for k in cols}

