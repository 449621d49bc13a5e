"""The result document every ``bigstore bench`` command produces (``--json`` prints it).

Schema ``bigstore.bench/1`` (the golden file ``tests/bench/golden/schema.json`` pins it; a
change of shape is a new schema version). Top level:

- ``schema`` (str), ``command`` ("disk" | "load" | "offload" | "loader"), ``target`` (the URL
  or path measured), ``synthetic`` (null, or ``{"bytes", "description"}`` when the data was
  made by ``--synthetic``), ``started`` (ISO 8601 UTC), ``seconds`` (wall time of the command),
  ``settings`` (the options that shaped the run: name -> scalar), ``machine`` (cpu, cores,
  ram_bytes, kernel, os, python, hostname, filesystem, device, mount, rotational),
  ``packages`` (distribution -> version or null).
- ``rows``: one per thing measured, each with ``name``, ``group`` (rows compared with each
  other share a group, e.g. "cold"), ``role`` ("contender" | "peer" | "bound"), ``unit`` of
  the rate ("B/s", "IOPS", "tokens/s", "samples/s"), ``params`` (name -> scalar: readers,
  block bytes, budget, ...), ``runs``, ``seconds`` and ``rate`` (summaries: n, mean, stdev, min,
  max, p50, p95, p99 over the runs), ``latency`` (a summary of per-request seconds, or null),
  ``bytes`` (delivered per run, mean), ``device_bytes`` (read from the device per run, mean, or
  null where not measurable), ``device_bytes_method`` ("proc_io" | "mincore" | null),
  ``cache`` ("cold" | "warm" | "remote" | "memory"), ``cold_honoured`` (the page cache was
  dropped before every run; null where not asked), ``cache_contaminated`` (a cold run was
  served mostly from the page cache; null where unknown), ``ratio_to_bound`` (rate / the fastest
  bound of the group, p50s), ``metrics`` (name -> number: tokens, AU, ...), ``per_run`` (one
  ``{"seconds", "rate", "bytes", "device_bytes", "metrics"}`` per run) and ``note``.
- ``ratios``: ``{"name", "numerator", "denominator", "group", "value"}``: every contender
  against the group's bound and against every peer of its group, measured in the same run.
- ``checks``: ``{"name", "target", "value", "passed"}`` for each ``--require-*`` threshold.
- ``notes``: what was skipped or could not be done, and why. ``ok``: every check passed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .machine import machine_facts, package_versions
from .stats import Summary, summarize

__all__ = ["SCHEMA", "Check", "Report", "Row", "RunSample", "new_report"]

SCHEMA = "bigstore.bench/1"
Scalar = str | int | float | bool | None

# A cold run is flagged when the device supplied less than this fraction of the bytes delivered.
CONTAMINATION_FRACTION = 0.5


@dataclass
class RunSample:
    """One timed run: seconds, units of work done (bytes, tokens, samples), where bytes came
    from, and any per-run figures (AU, ...)."""

    seconds: float
    work: float
    nbytes: int
    device_bytes: int | None = None
    resident_before: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.work / self.seconds if self.seconds > 0 else math.inf


@dataclass
class Row:
    name: str
    group: str
    role: str  # contender | peer | bound
    unit: str
    samples: list[RunSample]
    params: dict[str, Scalar] = field(default_factory=dict)
    cache: str = "warm"
    cold_honoured: bool | None = None
    device_bytes_method: str | None = None
    latencies: list[float] | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)
    note: str | None = None
    ratio_to_bound: float | None = None

    @property
    def rate(self) -> Summary:
        return summarize([s.rate for s in self.samples])

    @property
    def seconds(self) -> Summary:
        return summarize([s.seconds for s in self.samples])

    @property
    def device_bytes(self) -> int | None:
        vals = [s.device_bytes for s in self.samples]
        if not vals or any(v is None for v in vals):
            return None
        return int(sum(v for v in vals if v is not None) / len(vals))

    @property
    def nbytes(self) -> int:
        return int(sum(s.nbytes for s in self.samples) / max(1, len(self.samples)))

    @property
    def contaminated(self) -> bool | None:
        """A cold row any of whose runs took less than half its bytes from the device."""
        if self.cache != "cold":
            return None
        if self.cold_honoured is False:
            return True
        flags = [s.device_bytes < CONTAMINATION_FRACTION * s.nbytes
                 for s in self.samples if s.device_bytes is not None and s.nbytes > 0]
        if not flags:
            return None
        return any(flags)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "group": self.group, "role": self.role, "unit": self.unit,
            "params": dict(self.params), "runs": len(self.samples),
            "seconds": self.seconds.to_dict(), "rate": self.rate.to_dict(),
            "latency": summarize(self.latencies).to_dict() if self.latencies else None,
            "bytes": self.nbytes, "device_bytes": self.device_bytes,
            "device_bytes_method": self.device_bytes_method if self.device_bytes is not None
            else None,
            "cache": self.cache, "cold_honoured": self.cold_honoured,
            "cache_contaminated": self.contaminated, "ratio_to_bound": self.ratio_to_bound,
            "metrics": dict(self.metrics),
            "per_run": [{"seconds": s.seconds, "rate": s.rate, "bytes": s.nbytes,
                         "device_bytes": s.device_bytes, "metrics": dict(s.metrics)}
                        for s in self.samples],
            "note": self.note,
        }


@dataclass(frozen=True)
class Check:
    name: str
    target: float
    value: float | None

    @property
    def passed(self) -> bool:
        return self.value is not None and not math.isnan(self.value) and self.value >= self.target

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "value": self.value,
                "passed": self.passed}


@dataclass
class Report:
    command: str
    target: str
    started: str
    machine: dict[str, Any]
    packages: dict[str, str | None]
    settings: dict[str, Scalar] = field(default_factory=dict)
    synthetic: dict[str, Any] | None = None
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def bound(self, group: str) -> Row | None:
        """The group's bound: its fastest bound row (p50 rate)."""
        bounds = [r for r in self.rows if r.group == group and r.role == "bound" and r.samples]
        return max(bounds, key=lambda r: r.rate.p50, default=None)

    def ratios(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for r in self.rows:
            if r.role != "contender" or not r.samples:
                continue
            b = self.bound(r.group)
            if b is not None and b is not r:
                out.append({"name": f"{r.name} / {b.name}", "numerator": r.name,
                            "denominator": b.name, "group": r.group,
                            "value": _ratio(r.rate.p50, b.rate.p50)})
            for p in self.rows:
                if p.role == "peer" and p.group == r.group and p.samples and p.unit == r.unit:
                    out.append({"name": f"{r.name} / {p.name}", "numerator": r.name,
                                "denominator": p.name, "group": r.group,
                                "value": _ratio(r.rate.p50, p.rate.p50)})
        return out

    def finish(self) -> None:
        """Fill each contender's and peer's ratio to its group's bound."""
        for r in self.rows:
            b = self.bound(r.group)
            if b is not None and r.role != "bound" and r.samples and b.unit == r.unit:
                r.ratio_to_bound = _ratio(r.rate.p50, b.rate.p50)

    def contender(self, group: str | None = None) -> Row | None:
        """The first contender row (of ``group``), the row targets are checked against."""
        for r in self.rows:
            if r.role == "contender" and r.samples and (group is None or r.group == group):
                return r
        return None

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "command": self.command, "target": self.target,
            "synthetic": self.synthetic, "started": self.started, "seconds": self.seconds,
            "settings": dict(self.settings), "machine": dict(self.machine),
            "packages": dict(self.packages), "rows": [r.to_dict() for r in self.rows],
            "ratios": self.ratios(), "checks": [c.to_dict() for c in self.checks],
            "notes": list(self.notes), "ok": self.ok,
        }


def _ratio(a: float, b: float) -> float | None:
    if b <= 0 or math.isnan(a) or math.isnan(b) or math.isinf(b):
        return None
    return a / b


def new_report(
    command: str, target: str, path: str | os.PathLike[str] | None, *,
    settings: dict[str, Scalar], synthetic: int | None, description: str,
) -> Report:
    """An empty report with the machine's facts (``path``'s file system and device)."""
    return Report(
        command=command, target=target,
        started=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        machine=machine_facts(path), packages=package_versions(), settings=dict(settings),
        synthetic=None if synthetic is None else {"bytes": synthetic,
                                                  "description": description},
    )
