"""``--plot FILE.png``: throughput against readers or part size (disk), GB/s per contender
(load), tokens/s against budget (offload), accelerator utilisation per epoch (loader).
matplotlib is an optional extra: ``pip install bigstore[plot]``."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Any

from ..errors import MissingDependencyError
from .result import Report, Row

__all__ = ["plot", "require_matplotlib"]


def require_matplotlib() -> None:
    """Raise a clear error (naming the extra) when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingDependencyError(
            "--plot needs matplotlib: pip install 'bigstore[plot]'"
        ) from None


def plot(report: Report, path: str | os.PathLike[str]) -> None:
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    {"disk": _disk, "load": _load, "offload": _offload, "loader": _loader}[report.command](
        report, ax
    )
    ax.set_title(f"bigstore bench {report.command}: {report.target}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.fspath(path))
    plt.close(fig)


def _gbps(row: Row) -> float:
    return row.rate.p50 / 1e9


def _disk(report: Report, ax: Any) -> None:
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in report.rows:
        if "readers" in r.params:
            kind = "O_DIRECT" if r.params.get("direct") else "buffered"
            lines[f"{kind} sequential"].append((float(r.params["readers"] or 0), _gbps(r)))
        elif "concurrency" in r.params:
            part = int(r.params["part_bytes"] or 0)
            lines[f"ranged GET, {part >> 20} MiB parts"].append(
                (float(r.params["concurrency"] or 0), _gbps(r)))
    for label, pts in lines.items():
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("readers / requests in flight")
    ax.set_ylabel("GB/s (p50)")
    ax.legend(fontsize=8)


def _load(report: Report, ax: Any) -> None:
    rows = [r for r in report.rows if r.unit == "B/s" and r.samples]
    labels = [f"{r.name}\n({r.group})" for r in rows]
    colors = {"contender": "tab:blue", "peer": "tab:orange", "bound": "tab:gray"}
    ax.barh(labels, [_gbps(r) for r in rows], color=[colors[r.role] for r in rows])
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.set_xlabel("GB/s (p50; load + one pass over every byte)")


def _offload(report: Report, ax: Any) -> None:
    lines: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in report.rows:
        if r.unit != "tokens/s" or "budget_bytes" not in r.params:
            continue
        label = f"{r.name} ({r.group})"
        lines[label].append((float(r.params["budget_bytes"] or 0) / 2**20, r.rate.p50))
    for label, pts in lines.items():
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", label=label, linestyle="--" if "bound" in label else "-")
    ax.set_xlabel("budget (MiB)")
    ax.set_ylabel("tokens/s (p50)")
    ax.legend(fontsize=7)


def _loader(report: Report, ax: Any) -> None:
    for r in report.rows:
        aus = [s.metrics.get("au") for s in r.samples]
        pts = [(i + 1, a) for i, a in enumerate(aus) if a is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", label=r.name)
    target = next((c.target for c in report.checks if c.name.startswith("au")),
                  report.settings.get("au_target"))
    if isinstance(target, int | float):
        ax.axhline(target, color="tab:red", linestyle=":", label=f"target {target:.0%}")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accelerator utilisation")
    ax.legend(fontsize=8)
