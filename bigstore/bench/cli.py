"""``bigstore bench disk | load | offload | loader``: argument parsing and output for the
commands; the measuring lives in the modules beside this one.

Exit status: 0 when the benchmark ran, 1 when a ``--require-*`` target was missed, 2 on errors
(bad arguments, missing stores, missing optional packages).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import parse_bytes
from ..errors import BigstoreError
from .progress import Progress
from .result import Check, Report

__all__ = ["add_bench_parser", "cmd_bench"]

EXIT_MISSED = 1


def _ints(spec: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(s) for s in spec.split(",") if s.strip())
    except ValueError:
        raise BigstoreError(f"expected comma-separated integers, got {spec!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise BigstoreError(f"expected positive integers, got {spec!r}")
    return vals


def _sizes(spec: str) -> tuple[int, ...]:
    vals = tuple(parse_bytes(s) for s in spec.split(",") if s.strip())
    if not vals or any(v < 1 for v in vals):
        raise BigstoreError(f"expected positive byte sizes, got {spec!r}")
    return vals


def _fraction(name: str, value: float | None) -> None:
    if value is not None and not value > 0:
        raise BigstoreError(f"{name} must be a positive number, got {value}")


def add_bench_parser(
    sub: Any, common: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """Add ``bench`` and its four commands to the ``bigstore`` parser; ``common`` adds the
    options every command takes (--json, -q, -o, --storage-options)."""
    bench = sub.add_parser(
        "bench", help="throughput against the hardware's bound and the installed peers",
        description="Measure a storage path, a load, an offloaded model or a data loader "
                    "against the hardware's bound and the installed peers, in one run.")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, target: str) -> argparse.ArgumentParser:
        p = bsub.add_parser(name, help=help_, description=help_)
        common(p)
        p.add_argument("target", metavar=target)
        p.add_argument("--synthetic", metavar="SIZE",
                       help="create the data to measure under TARGET first (removed after)")
        p.add_argument("--runs", type=int, default=3, metavar="N",
                       help="timed runs per row (loader: epochs); default 3")
        p.add_argument("--csv", metavar="FILE", help="also write the rows as CSV ('-': stdout)")
        p.add_argument("--plot", metavar="FILE.png",
                       help="draw the result (needs matplotlib: bigstore[plot])")
        p.add_argument("--workdir", metavar="DIR", help="scratch space (default: a temp dir)")
        p.add_argument("--keep", action="store_true", help="keep the synthetic data")
        p.add_argument("--no-peers", action="store_true", help="measure no peers")
        p.add_argument("--require-bound", type=float, metavar="RATIO",
                       help="exit 1 unless bigstore reaches RATIO of the bound in every group")
        p.add_argument("--require-peer", type=float, metavar="RATIO",
                       help="exit 1 unless bigstore reaches RATIO of every peer")
        p.set_defaults(func=cmd_bench)
        return p

    p = add("disk", "the storage's bounds: sequential and random reads, page cache, memcpy; "
            "ranged GETs on object stores", "PATH_OR_URL")
    p.add_argument("--readers", default="1,2,4,8", help="sequential readers (default 1,2,4,8)")
    p.add_argument("--blocks", default="4KiB,64KiB,1MiB,4MiB", help="random-read block sizes")
    p.add_argument("--random-count", type=int, default=256, help="random reads per run")
    p.add_argument("--depth", type=int, default=1, help="random reads in flight")
    p.add_argument("--parts", default="1MiB,8MiB,32MiB", help="ranged-GET part sizes")
    p.add_argument("--concurrency", default="1,4,16", help="ranged GETs in flight")

    p = add("load", "bigstore.load cold and warm against the raw read and the peers",
            "URL_OR_CHECKPOINT")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="of the synthetic checkpoint")
    p.add_argument("--readers", default="1,4", help="O_DIRECT readers of the raw bound")
    p.add_argument("--no-cold", action="store_true", help="skip the cold runs")
    p.add_argument("--no-warm", action="store_true", help="skip the warm runs")

    p = add("offload", "tokens/s of an offloaded model across budgets, against the bound "
            "and accelerate", "MODEL_OR_STORE")
    p.add_argument("--budgets", default="25%,50%,100%",
                   help="budgets: sizes or percentages of the model (default 25%%,50%%,100%%)")
    p.add_argument("--host-budgets", default="",
                   help="host-RAM tier sizes (where this bigstore has that tier)")
    p.add_argument("--tokens", default="1", help="sequence lengths of the timed forwards")
    p.add_argument("--prefetch", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--config", metavar="CONFIG", help="transformers config.json (or its "
                   "directory) for a store that does not sit beside one")
    p.add_argument("--no-cold", action="store_true", help="skip the cold runs")
    p.add_argument("--no-warm", action="store_true", help="skip the warm runs")

    p = add("loader", "a simulated accelerator (MLPerf Storage style): samples/s, GB/s and "
            "accelerator utilisation per epoch", "DATASET")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--compute-ms", type=float, default=0.0,
                   help="simulated compute per batch in ms (a sleep)")
    p.add_argument("--step", metavar="MODULE:FUNCTION",
                   help="call this function with each batch instead of sleeping")
    p.add_argument("--row-bytes", type=int, default=4096,
                   help="row size of --synthetic SIZE (or give --synthetic NxBYTES)")
    p.add_argument("--workers", type=int, default=0, help="torch DataLoader peer's workers")
    p.add_argument("--no-shuffle", action="store_true")
    p.add_argument("--no-cold", action="store_true",
                   help="do not drop the page cache before each epoch")
    p.add_argument("--au-target", type=float, default=0.9,
                   help="the AU an epoch should reach (reported; default 0.9)")
    p.add_argument("--require-au", type=float, metavar="AU",
                   help="exit 1 unless every epoch reaches this AU")
    return bench


def _step(spec: str) -> Callable[[Any], object]:
    mod, sep, fn = spec.partition(":")
    if not sep or not mod or not fn:
        raise BigstoreError(f"--step expects MODULE:FUNCTION, got {spec!r}")
    try:
        obj = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError) as e:
        raise BigstoreError(f"--step {spec}: {e}") from None
    if not callable(obj):
        raise BigstoreError(f"--step {spec}: not callable")
    step: Callable[[Any], object] = obj
    return step


def _prepare(args: argparse.Namespace) -> Callable[[Progress, Any], Report]:
    """Check every argument and return the run, before anything is drawn or written."""
    from .peers import PEERS

    if args.runs < 1:
        raise BigstoreError(f"--runs must be at least 1, got {args.runs}")
    _fraction("--require-bound", args.require_bound)
    _fraction("--require-peer", args.require_peer)
    if args.plot:
        from .plot import require_matplotlib

        require_matplotlib()
        if not args.plot.lower().endswith((".png", ".svg", ".pdf")):
            raise BigstoreError(f"--plot {args.plot}: give a .png, .svg or .pdf file name")
    if args.csv == "-" and args.json:
        raise BigstoreError("--csv - and --json both write to stdout: choose one")
    cmd = args.bench_command
    common: dict[str, Any] = {"keep": args.keep}
    if cmd != "disk":
        common["workdir"] = args.workdir
    if cmd == "disk":
        from .disk import DiskOptions, run_disk

        dopts = DiskOptions(runs=args.runs, readers=_ints(args.readers),
                            blocks=_sizes(args.blocks), random_count=_ints(
                                str(args.random_count))[0],
                            random_depth=_ints(str(args.depth))[0], parts=_sizes(args.parts),
                            concurrency=_ints(args.concurrency))
        syn = parse_bytes(args.synthetic) if args.synthetic else None
        return lambda progress, so: run_disk(args.target, synthetic=syn, options=dopts,
                                             storage_options=so, progress=progress, **common)
    if cmd == "load":
        from .load import LoadOptions, run_load

        lopts = LoadOptions(runs=args.runs, cold=not args.no_cold, warm=not args.no_warm,
                            peers=() if args.no_peers else LoadOptions.peers,
                            readers=_ints(args.readers), dtype=args.dtype)
        if not (lopts.cold or lopts.warm):
            raise BigstoreError("--no-cold and --no-warm leave nothing to measure")
        syn = parse_bytes(args.synthetic) if args.synthetic else None
        return lambda progress, so: run_load(args.target, synthetic=syn, options=lopts,
                                             storage_options=so, progress=progress, **common)
    if cmd == "offload":
        _require("transformers", "bench offload builds the model from a transformers config")
        from .offload import OffloadOptions, _budget, run_offload

        budgets = tuple(b for b in args.budgets.split(",") if b.strip())
        for b in budgets:
            _budget(b, 1)  # a bad budget fails here, before anything runs
        hosts = tuple(h for h in args.host_budgets.split(",") if h.strip())
        for h in hosts:
            parse_bytes(h)
        if args.config and not Path(args.config).exists():
            raise BigstoreError(f"--config {args.config}: no such file or directory")
        oopts = OffloadOptions(runs=args.runs, budgets=budgets, host_budgets=hosts,
                               tokens=_ints(args.tokens), prefetch=args.prefetch,
                               device=args.device, cold=not args.no_cold,
                               warm=not args.no_warm,
                               peers=() if args.no_peers else OffloadOptions.peers,
                               config=args.config)
        if not budgets:
            raise BigstoreError("--budgets is empty")
        if not (oopts.cold or oopts.warm):
            raise BigstoreError("--no-cold and --no-warm leave nothing to measure")
        syn = parse_bytes(args.synthetic) if args.synthetic else None
        return lambda progress, so: run_offload(args.target, synthetic=syn, options=oopts,
                                                storage_options=so, progress=progress,
                                                **common)
    from .loader import LoaderOptions, au_check, run_loader
    from .synthetic import parse_dataset_spec

    if args.batch_size < 1:
        raise BigstoreError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.compute_ms < 0:
        raise BigstoreError(f"--compute-ms cannot be negative, got {args.compute_ms}")
    _fraction("--require-au", args.require_au)
    step = _step(args.step) if args.step else None
    if args.synthetic:
        parse_dataset_spec(args.synthetic, args.row_bytes)
    peers = () if args.no_peers else tuple(k for k in ("torch_dataloader", "pyarrow")
                                           if k in PEERS)
    ropts = LoaderOptions(epochs=args.runs, batch_size=args.batch_size,
                          compute_ms=args.compute_ms, shuffle=not args.no_shuffle,
                          cold=not args.no_cold, au_target=args.au_target, peers=peers,
                          row_bytes=args.row_bytes, workers=args.workers)

    def run(progress: Progress, so: Any) -> Report:
        report = run_loader(args.target, synthetic=args.synthetic, options=ropts, step=step,
                            storage_options=so, progress=progress, **common)
        if args.require_au is not None:
            report.checks.append(au_check(report, args.require_au))
        return report

    return run


def _require(module: str, why: str) -> None:
    from ..errors import MissingDependencyError

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(f"{why}: pip install {module} (or 'bigstore[peers]')")


def _checks(report: Report, args: argparse.Namespace) -> None:
    groups = sorted({r.group for r in report.rows if r.role == "contender"})
    if not groups and (args.require_bound is not None or args.require_peer is not None):
        report.note(f"bench {args.bench_command} measures bounds only: --require-bound and "
                    "--require-peer have nothing to check")
    if args.require_bound is not None:
        for g in groups:
            main = report.contender(g)
            if main is not None and report.bound(g) is not None:
                report.checks.append(Check(f"bound [{g}]", args.require_bound,
                                           main.ratio_to_bound))
    if args.require_peer is not None:
        for ratio in report.ratios():
            if ratio["denominator"] in {r.name for r in report.rows if r.role == "peer"}:
                report.checks.append(Check(ratio["name"] + f" [{ratio['group']}]",
                                           args.require_peer, ratio["value"]))


def cmd_bench(args: argparse.Namespace) -> int:
    import time

    from .report import to_csv, to_json, to_table

    run = _prepare(args)
    progress = Progress(not args.quiet and not args.json, prefix=f"bench {args.bench_command}")
    t0 = time.perf_counter()
    report = run(progress, args.opts)
    report.seconds = time.perf_counter() - t0
    _checks(report, args)
    if args.json:
        sys.stdout.write(to_json(report) + "\n")
    elif args.csv != "-":
        print(to_table(report))
    if args.csv:
        if args.csv == "-":
            sys.stdout.write(to_csv(report))
        else:
            Path(args.csv).write_text(to_csv(report))
    if args.plot:
        from .plot import plot

        plot(report, args.plot)
    if not report.ok:
        failed = [c.name for c in report.checks if not c.passed]
        print(f"bigstore: bench {args.bench_command}: target missed: {', '.join(failed)}",
              file=sys.stderr)
        return EXIT_MISSED
    return 0
