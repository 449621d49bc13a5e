"""Re-check every inner chunk (and shard index) of a dataset store."""

from __future__ import annotations

from typing import Any

from ..errors import BigstoreError
from ..io import get_executor
from ..store import Store
from ..weights.verify import Problem, VerifyReport
from ._schema import ArraySpec
from ._shard import ShardReader
from .dataset import read_layout

__all__ = ["verify_dataset"]


def verify_dataset(store: Store, report: VerifyReport, progress: Any = None) -> VerifyReport:
    layout = read_layout(store)
    reader = ShardReader(store, verify=True)
    report.tensors = len(layout.arrays)
    jobs: list[tuple[ArraySpec, int]] = []
    for arr in layout.arrays.values():
        for s in range(arr.n_shards):
            try:
                reader._shard_index(arr, s)  # the index's own crc32c
            except BigstoreError as e:
                report.problems.append(Problem(arr.path, None, str(e)))
        jobs.extend((arr, k) for k in range(arr.n_chunks))

    def check(job: tuple[ArraySpec, int]) -> tuple[ArraySpec, int, str | None]:
        arr, k = job
        scratch = memoryview(bytearray(arr.chunk_nbytes))
        try:
            reader.read_chunks(arr, [k], [scratch])
        except BigstoreError as e:
            return arr, k, str(e)
        return arr, k, None

    for arr, k, err in get_executor().map(check, jobs):
        report.chunks += 1
        report.nbytes += arr.chunk_nbytes
        if err is not None:
            report.problems.append(Problem(arr.path, k, err))
        if progress is not None:
            progress.update(arr.chunk_nbytes)
    return report
