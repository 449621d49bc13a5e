"""Re-check a whole store: every array's documents, shard indexes and chunks.

One routine for tensor stores and datasets alike (both are Zarr v3 arrays): each array's own
``zarr.json`` must agree with the root's consolidated copy, each shard index must match its
crc32c, each chunk must be present, of the right size, match its crc32c and decode.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import BigstoreError
from .format import ArrayLayout, is_quantized_doc, read_root
from .io import ChunkReader, get_executor
from .store import open_store

__all__ = ["Problem", "VerifyReport", "verify"]


# an array whose end chunks do not match its document still has each chunk checked, up to this
# many (a document claiming 10**9 chunks is reported once, not enumerated)
_MAX_UNBACKED_CHUNKS = 1 << 16


@dataclass(frozen=True)
class Problem:
    tensor: str  # the array's path
    chunk: int | None  # None: the array's metadata (or a shard index) is bad
    error: str


@dataclass
class VerifyReport:
    url: str
    tensors: int = 0  # arrays checked
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
    reader = ChunkReader(store)
    layouts: list[ArrayLayout] = []
    for path, doc in sorted(root.arrays.items()):
        where = f"{store.url}/{path}/zarr.json"
        # every node's own document (arrays, and the groups of variable-length columns) must
        # be the copy the root carries: readers use the root's, zarr-python may use either
        try:
            own = json.loads(bytes(memoryview(store.get(f"{path}/zarr.json")).cast("B")))
        except BigstoreError as e:
            report.problems.append(Problem(path, None, f"{where}: {e}"))
        except (ValueError, RecursionError) as e:
            report.problems.append(Problem(path, None, f"{where}: not valid JSON ({e})"))
        else:
            if own != doc:
                report.problems.append(Problem(
                    path, None, f"{where} disagrees with the consolidated copy in the root"
                ))
        if doc.get("node_type") != "array":
            # every node of a tensor store is a tensor (a quantized one is a group of arrays)
            if root.kind == "tensors" and not is_quantized_doc(doc):
                report.problems.append(Problem(path, None, f"{where}: not an array document"))
            continue  # datasets: the groups of variable-length columns (read_layout checks)
        try:
            layouts.append(ArrayLayout.from_json(path, doc, where))
        except BigstoreError as e:
            report.problems.append(Problem(path, None, str(e)))
    if root.kind == "dataset":
        from .data.dataset import read_layout

        try:
            read_layout(store)
        except BigstoreError as e:
            report.problems.append(Problem("<dataset>", None, str(e)))
    jobs: list[tuple[ArrayLayout, int]] = []
    for lay in layouts:
        report.tensors += 1
        try:  # a document claiming more than is stored: its chunks are only listed when few
            reader.check_backed([lay])
        except BigstoreError as e:
            report.problems.append(Problem(lay.path, None, str(e)))
            if lay.n_chunks > _MAX_UNBACKED_CHUNKS:
                continue
        bad_shards = set()
        if lay.sharded:
            for s in range(lay.n_shards):
                try:
                    reader.shard_index(lay, s)
                except BigstoreError as e:
                    report.problems.append(Problem(lay.path, None, str(e)))
                    bad_shards.add(s)
        jobs.extend((lay, k) for k in range(lay.n_chunks)
                    if not lay.sharded or k // lay.chunks_per_shard not in bad_shards)

    def check(job: tuple[ArrayLayout, int]) -> tuple[ArrayLayout, int, str | None]:
        lay, k = job
        try:
            reader.check_chunk(lay, k)
        except BigstoreError as e:
            return lay, k, str(e)
        return lay, k, None

    for lay, k, err in get_executor().map(check, jobs):
        n = lay.chunk_rows_of(k) * lay.row_bytes
        report.chunks += 1
        report.nbytes += n
        if err is not None:
            report.problems.append(Problem(lay.path, k, err))
        if progress is not None:
            progress.update(n)
    return report
