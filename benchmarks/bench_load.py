"""Load-all of a state dict: bigstore vs safetensors vs torch.load(mmap=True) vs runai-model-
streamer vs a raw read of the same bytes, warm and cold, in one run. A thin caller of
``bigstore.bench.run_load`` (the library behind ``bigstore bench load``).

    .venv/bin/python benchmarks/bench_load.py [--size 2GiB] [--dtype bfloat16] [--dir DIR]

Targets (issue 7): cold >= 0.95x the faster plain read of the same bytes (buffered with
readahead, or O_DIRECT with 1-4 readers) and >= 1.0x runai-model-streamer, every crc32c checked;
warm >= 1.0x safetensors ``load_file`` + one pass over every page.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from typing import Any

from bigstore.bench.load import LoadOptions, run_load
from bigstore.bench.progress import Progress
from bigstore.bench.report import to_json, to_table
from bigstore.config import parse_bytes


def _ratio(report: Any, group: str, peer: str) -> float | None:
    for r in report.ratios():
        if r["group"] == group and r["denominator"] == peer:
            return r["value"]
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--size", default="2GiB")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    ap.add_argument("--dir", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        report = run_load(tmp, synthetic=parse_bytes(args.size), workdir=tmp,
                          options=LoadOptions(runs=args.repeat, dtype=args.dtype),
                          progress=Progress(not args.json, prefix="bench_load"))
    warm = _ratio(report, "warm", "safetensors load_file")
    cold = next((r.ratio_to_bound for r in report.rows
                 if r.group == "cold" and r.name == "bigstore load"), None)
    runai = _ratio(report, "cold", "runai-model-streamer")
    targets = {"warm >= 1.0x safetensors": warm is not None and warm >= 1.0,
               "cold >= 0.95x the faster plain read": cold is not None and cold >= 0.95,
               "cold >= 1.0x runai-model-streamer": runai is None or runai >= 1.0}
    if args.json:
        sys.stdout.write(to_json(report) + "\n")
    else:
        print(to_table(report))
        for k, ok in targets.items():
            print(f"target {k}: {'met' if ok else 'NOT met'}")
    return {"report": report.to_dict(), "targets_met": targets}


if __name__ == "__main__":
    main()
