"""Re-check every chunk of a store: sizes, checksums, and that each chunk decodes."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import BigstoreError
from ..format import TensorMeta, read_root
from ..io import get_executor, verify_chunk
from ..store import open_store

__all__ = ["Problem", "VerifyReport", "verify"]


@dataclass(frozen=True)
class Problem:
    tensor: str
    chunk: int | None  # None: the tensor's metadata itself is bad
    error: str


@dataclass
class VerifyReport:
    url: str
    tensors: int = 0
    chunks: int = 0
    nbytes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def corrupted_tensors(self) -> list[str]:
        return sorted({p.tensor for p in self.problems})


def verify(
    url: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: Any = None,
) -> VerifyReport:
    """Check every chunk of the store at ``url``; report (not raise) each damaged one."""
    store = open_store(url, storage_options)
    root = read_root(store)
    report = VerifyReport(store.url)
    if root.kind == "dataset":
        from ..data.verify import verify_dataset

        return verify_dataset(store, report, progress)
    jobs: list[tuple[TensorMeta, int]] = []
    for name, doc in root.arrays.items():
        try:
            meta = TensorMeta.from_json(name, doc, f"{store.url}/{name}/zarr.json")
        except BigstoreError as e:
            report.problems.append(Problem(name, None, str(e)))
            continue
        report.tensors += 1
        jobs.extend((meta, i) for i in range(meta.n_chunks))

    def check(job: tuple[TensorMeta, int]) -> tuple[TensorMeta, int, str | None]:
        meta, i = job
        try:
            verify_chunk(store, meta, i)
        except BigstoreError as e:
            return meta, i, str(e)
        return meta, i, None

    for meta, i, err in get_executor().map(check, jobs):
        report.chunks += 1
        report.nbytes += meta.chunk_rows_of(i) * meta.row_bytes
        if err is not None:
            report.problems.append(Problem(meta.name, i, err))
        if progress is not None:
            progress.update(meta.chunk_rows_of(i) * meta.row_bytes)
    return report
