"""A report as people read it (a terminal table), as programs read it (JSON, CSV), and as a
picture (``plot``, in :mod:`bigstore.bench.plot`). Rates in B/s are shown as GB/s (decimal),
the unit the progress display counts in too."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from .result import Report

__all__ = ["human_bytes", "to_csv", "to_json", "to_table"]


def _clean(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers become null."""
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def human_bytes(n: float) -> str:
    """Bytes in the binary unit that keeps 3 significant digits: "320 KiB", "1.64 GiB"."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            if unit == "B":
                return f"{value:.0f} B"
            digits = 2 if abs(value) < 10 else 1 if abs(value) < 100 else 0
            return f"{value:.{digits}f} {unit}"
        value /= 1024
    return f"{value:.0f} TiB"


def to_json(report: Report) -> str:
    return json.dumps(_clean(report.to_dict()), indent=1)


def _rate(value: float | None, unit: str) -> str:
    if value is None or math.isnan(value):
        return "-"
    if unit == "B/s":
        return f"{value / 1e9:.3f} GB/s"
    return f"{value:,.1f} {unit}"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, f in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= f:
            return f"{n / f:.2f} {unit}"
    return f"{n:.0f} B"


def _flags(d: dict[str, Any]) -> str:
    out = []
    if d["cache_contaminated"]:
        out.append("CACHE-CONTAMINATED")
    if d["cold_honoured"] is False:
        out.append("not cold")
    if d["note"]:
        out.append(d["note"])
    return "; ".join(out)


def to_table(report: Report) -> str:
    """The summary table, then the ratios, checks and notes."""
    doc = _clean(report.to_dict())
    head = ["group", "name", "runs", "p50", "mean ± stdev", "min", "p95", "x bound",
            "device / delivered", "cache", "flags"]
    lines: list[list[str]] = []
    for d in doc["rows"]:
        r, u = d["rate"], d["unit"]
        mean = "-" if r["mean"] is None else (
            f"{_rate(r['mean'], u)} ± {(r['stdev'] or 0) / (1e9 if u == 'B/s' else 1):.3f}")
        ratio = "-" if d["ratio_to_bound"] is None else f"{d['ratio_to_bound']:.2f}"
        dev = "-" if d["device_bytes"] is None else (
            f"{_bytes(d['device_bytes'])} / {_bytes(d['bytes'])}")
        name = d["name"]
        if d["latency"]:
            lat = d["latency"]
            name += (f" (lat p50 {lat['p50'] * 1e3:.2f} ms, p95 {lat['p95'] * 1e3:.2f}, "
                     f"p99 {lat['p99'] * 1e3:.2f})")
        lines.append([d["group"], name, str(d["runs"]), _rate(r["p50"], u), mean,
                      _rate(r["min"], u), _rate(r["p95"], u), ratio, dev, d["cache"],
                      _flags(d)])
    widths = [max(len(h), *(len(row[i]) for row in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    out = [f"bigstore bench {doc['command']}: {doc['target']}"]
    m = doc["machine"]
    out.append(f"machine: {m['cpu']}, {m['cores']} cores, {_bytes(m['ram_bytes'])} RAM, "
               f"kernel {m['kernel']}" + (f", {m['filesystem']} on {m['device']}"
                                         if m["filesystem"] else ""))
    out.append("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip())
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in lines]
    if doc["ratios"]:
        out.append("ratios (p50 rates, same run):")
        out += [f"  {r['name']} [{r['group']}]: "
                + ("-" if r["value"] is None else f"{r['value']:.2f}x") for r in doc["ratios"]]
    for c in doc["checks"]:
        val = "-" if c["value"] is None else f"{c['value']:.3f}"
        out.append(f"check {c['name']} >= {c['target']}: {val} "
                   f"{'passed' if c['passed'] else 'FAILED'}")
    out += [f"note: {n}" for n in doc["notes"]]
    return "\n".join(out)


CSV_FIELDS = [
    "command", "target", "group", "name", "role", "unit", "runs", "rate_mean", "rate_stdev",
    "rate_min", "rate_p50", "rate_p95", "seconds_mean", "seconds_p50", "latency_p50_s",
    "latency_p95_s", "latency_p99_s", "bytes", "device_bytes", "cache", "cold_honoured",
    "cache_contaminated", "ratio_to_bound", "params", "metrics", "note",
]


def to_csv(report: Report) -> str:
    """One line per row, the fields of :data:`CSV_FIELDS` (params/metrics as JSON)."""
    doc = _clean(report.to_dict())
    buf = io.StringIO()
    w = csv.DictWriter(buf, CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for d in doc["rows"]:
        lat = d["latency"] or {}
        w.writerow({
            "command": doc["command"], "target": doc["target"], "group": d["group"],
            "name": d["name"], "role": d["role"], "unit": d["unit"], "runs": d["runs"],
            "rate_mean": d["rate"]["mean"], "rate_stdev": d["rate"]["stdev"],
            "rate_min": d["rate"]["min"], "rate_p50": d["rate"]["p50"],
            "rate_p95": d["rate"]["p95"], "seconds_mean": d["seconds"]["mean"],
            "seconds_p50": d["seconds"]["p50"], "latency_p50_s": lat.get("p50"),
            "latency_p95_s": lat.get("p95"), "latency_p99_s": lat.get("p99"),
            "bytes": d["bytes"], "device_bytes": d["device_bytes"], "cache": d["cache"],
            "cold_honoured": d["cold_honoured"], "cache_contaminated": d["cache_contaminated"],
            "ratio_to_bound": d["ratio_to_bound"], "params": json.dumps(d["params"]),
            "metrics": json.dumps(d["metrics"]), "note": d["note"],
        })
    return buf.getvalue()
