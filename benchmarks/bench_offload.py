"""Offloaded inference: bigstore.offload vs accelerate's big-model path, against the bound,
across budgets. A thin caller of ``bigstore.bench.run_offload`` (the library behind
``bigstore bench offload``).

Same model (GPT-2-style, random weights), same budget, same prompt; cold and warm page cache.
The bound of each cell is measured in the same run: max(compute-only time of the resident
model, bytes that must be streamed / the raw read speed of the store's files).

    .venv/bin/python benchmarks/bench_offload.py                 # ~1.6 GB model
    .venv/bin/python benchmarks/bench_offload.py --quick         # small, seconds
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from bigstore.bench.offload import OffloadOptions, run_offload
from bigstore.bench.progress import Progress
from bigstore.bench.report import to_json, to_table
from bigstore.config import parse_bytes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small model (smoke run)")
    ap.add_argument("--size", default="1.6GB", help="model size (fp32 bytes)")
    ap.add_argument("--budget", default="256MiB", help="the budget of the main cells")
    ap.add_argument("--tokens", type=int, default=64, help="length of the multi-token forward")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-accelerate", action="store_true")
    ap.add_argument("--curve", default="0.1,0.25,0.5,0.75,1.0",
                    help="budget fractions of the model for the tokens/s curve")
    ap.add_argument("--json", default=None, help="also write the report here")
    args = ap.parse_args()

    budgets = (args.budget, *(f"{float(f) * 100:g}%" for f in args.curve.split(",") if f))
    opts = OffloadOptions(
        runs=args.repeat, budgets=budgets, tokens=(1, args.tokens),
        peers=() if args.no_accelerate else ("accelerate",),
    )
    size = parse_bytes("4MiB" if args.quick else args.size)
    with tempfile.TemporaryDirectory(prefix="bench-offload-", dir=args.workdir) as tmp:
        work = pathlib.Path(tmp)  # inside --workdir, never the directory itself: it is removed
        report = run_offload(work, synthetic=size, options=opts, workdir=work,
                             progress=Progress(True, prefix="bench_offload"))
    print(to_table(report))
    if args.json:
        pathlib.Path(args.json).write_text(to_json(report))


if __name__ == "__main__":
    main()
