"""Dataset loading, side by side on one machine, in one run: bigstore's shuffled loader under
a simulated accelerator, against torch DataLoader over a memmap and pyarrow ``take`` of the
same bytes. A thin caller of ``bigstore.bench.run_loader`` (the library behind
``bigstore bench loader``).

    .venv/bin/python benchmarks/bench_data.py          # both: 1M x 1 KiB and 200k x 12 KiB
    .venv/bin/python benchmarks/bench_data.py --shapes 300000x1024   # one shape
    .venv/bin/python benchmarks/bench_data.py --quick  # 100k x 1 KiB, a smoke run

Each epoch is cold (the page cache of exactly the dataset's files is dropped first) unless
--warm; --compute-ms simulates the accelerator (0: the loader's own speed).
"""

from __future__ import annotations

import argparse
import tempfile

from bigstore.bench.loader import LoaderOptions, run_loader
from bigstore.bench.progress import Progress
from bigstore.bench.report import to_table


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1000000x1024,200000x12288",
                    help="comma-separated SAMPLESxBYTES")
    ap.add_argument("--samples", type=int, default=None, help="one shape (with --sample-bytes)")
    ap.add_argument("--sample-bytes", type=int, default=1024)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--compute-ms", type=float, default=0.0)
    ap.add_argument("--warm", action="store_true", help="do not drop the page cache per epoch")
    a = ap.parse_args()
    if a.quick:
        shapes = [f"100000x{a.sample_bytes}"]
    elif a.samples is not None:
        shapes = [f"{a.samples}x{a.sample_bytes}"]
    else:
        shapes = [s for s in a.shapes.split(",") if s]
    opts = LoaderOptions(epochs=a.epochs, batch_size=a.batch_size, compute_ms=a.compute_ms,
                         cold=not a.warm)
    for shape in shapes:
        with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
            report = run_loader(tmp, synthetic=shape, options=opts, workdir=tmp,
                                progress=Progress(True, prefix="bench_data"))
        print(to_table(report))


if __name__ == "__main__":
    main()
