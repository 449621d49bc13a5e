"""Timed runs with their counters: each case runs ``runs`` times (cases take turns, one run
each per round, so drift on a shared machine hits every contender alike); cold cases drop the
page cache of exactly their files first and record where the bytes came from."""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cold import ColdCache
from .counters import device_read_bytes, resident_bytes
from .progress import Progress
from .result import Row, RunSample, Scalar

__all__ = ["Case", "Outcome", "measure"]


@dataclass
class Outcome:
    """What one run of a case did. ``work`` defaults to ``nbytes`` (a rate in B/s);
    ``seconds`` overrides the runner's wall clock (a case that times only part of itself)."""

    nbytes: int
    work: float | None = None
    seconds: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    latencies: Sequence[float] | None = None
    hold: Any = None  # what the run produced: released after the clock stops, not inside it


@dataclass
class Case:
    """One thing to measure. ``fn`` does one run; ``files`` are the local files it reads (for
    cold drops and residency); ``before_run`` runs after the drop and before the clock starts."""

    name: str
    group: str
    role: str
    fn: Callable[[], Outcome]
    unit: str = "B/s"
    files: Sequence[str | Path] = ()
    cold: bool = False
    cache: str | None = None  # default: "cold" when cold, else "warm"
    warmup: int = 0
    params: dict[str, Scalar] = field(default_factory=dict)
    before_run: Callable[[], object] | None = None
    note: str | None = None


def measure(
    cases: Sequence[Case], runs: int, progress: Progress | None = None, label: str = "measuring"
) -> list[Row]:
    """Run every case ``runs`` times, round-robin; one :class:`Row` per case."""
    progress = progress or Progress(False)
    rows = [Row(c.name, c.group, c.role, c.unit, [], params=dict(c.params),
                cache=c.cache or ("cold" if c.cold else "warm"), note=c.note,
                cold_honoured=True if c.cold and c.files else None)
            for c in cases]
    colds = [ColdCache(c.files) if c.cold and c.files else None for c in cases]
    total = sum(runs + c.warmup for c in cases)
    with progress.bar(label, total) as bar:
        for c in cases:
            for _ in range(c.warmup):
                bar.set_postfix_str(f"{c.name} (warm-up)")
                c.fn()
                bar.update(1)
        for _ in range(runs):
            for c, row, cold in zip(cases, rows, colds):
                bar.set_postfix_str(c.name)
                sample, method = _one(c, row, cold)
                row.samples.append(sample)
                row.device_bytes_method = method
                bar.update(1)
                if sample.rate and not math.isinf(sample.rate):
                    bar.set_postfix_str(f"{c.name}: {_fmt(sample.rate, c.unit)}")
    return rows


def _one(c: Case, row: Row, cold: ColdCache | None) -> tuple[RunSample, str | None]:
    gc.collect()
    if cold is not None:
        dropped = cold.drop()
        if not dropped.ok:
            row.cold_honoured = False
        if dropped.reason and (row.note is None or dropped.reason not in row.note):
            row.note = f"{row.note}; {dropped.reason}" if row.note else dropped.reason
    if c.before_run is not None:
        c.before_run()
    before = resident_bytes(c.files) if c.files else None
    io0 = device_read_bytes() if c.files else None
    t0 = time.perf_counter()
    out = c.fn()
    wall = time.perf_counter() - t0
    out.hold = None  # e.g. unmapping loaded tensors is not part of loading them
    io1 = device_read_bytes() if io0 is not None else None
    method: str | None = None
    device: int | None = None
    if io0 is not None and io1 is not None:
        device, method = io1 - io0, "proc_io"
    elif before is not None:
        after = resident_bytes(c.files)
        if after is not None:
            device, method = max(0, after - before), "mincore"
    if out.latencies is not None:
        row.latencies = [*(row.latencies or []), *out.latencies]
    sample = RunSample(
        seconds=out.seconds if out.seconds is not None else wall,
        work=float(out.work if out.work is not None else out.nbytes), nbytes=out.nbytes,
        device_bytes=device, resident_before=before, metrics=dict(out.metrics),
    )
    if before is not None:
        sample.metrics.setdefault("resident_before_bytes", float(before))
    return sample, method


def _fmt(rate: float, unit: str) -> str:
    if unit == "B/s":
        return f"{rate / 1e9:.2f} GB/s"
    return f"{rate:,.1f} {unit}"
