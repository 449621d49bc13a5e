"""A distributed dataset write as a process of its own, with its own Dask cluster:
``python _ingest_driver.py URL JOB_TOKEN GATE``.

The source is a Dask Bag of record batches. Once the file GATE exists (the job's plan, which
the driver saves between the scan and the write pass), computing the last partition waits for
ever: the write pass stalls there with every other partition's shards staged, and the test
kills this process group (driver, scheduler, workers) mid-job. ``source()`` and
``reference()`` are also imported by the test: the same rows, for the resumed run and for the
single-process writer.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

N_PARTS = 6
ROWS = 300
OPTIONS: dict[str, Any] = {"chunk_rows": 16, "shard_bytes": 2048}


def part(i: int, gate: str | None = None) -> list[dict[str, Any]]:
    if gate is not None and i == N_PARTS - 1 and Path(gate).exists():
        while True:  # until the test kills us
            time.sleep(0.05)
    label = np.arange(i * ROWS, (i + 1) * ROWS, dtype=np.int64)
    return [{
        "label": label,
        "x": np.sin(label).astype(np.float32)[:, None].repeat(3, 1),
        "tok": [np.arange(j % 5, dtype=np.int32) + j for j in label.tolist()],
    }]


def source(gate: str | None = None) -> Any:
    import dask
    import dask.bag as db

    return db.from_delayed([dask.delayed(part)(i, gate) for i in range(N_PARTS)])


def reference() -> list[dict[str, Any]]:
    return [part(i)[0] for i in range(N_PARTS)]


def main() -> None:
    from distributed import Client, LocalCluster

    from bigstore import write_dataset

    url, token, gate = sys.argv[1:4]
    # two threads per worker: tasks queued on the worker whose thread is stuck in the gated
    # partition still run on its other thread
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=2,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        write_dataset(url, source(gate), job_token=token, client=client, **OPTIONS)


if __name__ == "__main__":
    main()
