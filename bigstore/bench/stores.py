"""Opening the stores the benchmarks measure, through the public Store API only."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from ..store import Store, is_local_url, local_path, open_store

__all__ = ["Scratch", "open_measured", "remove_store"]


def open_measured(
    url: str | os.PathLike[str] | Store, storage_options: Mapping[str, Any] | None = None
) -> Store:
    """``open_store``, then one cheap request: an fsspec store learns its root on first use,
    and ``list("")`` / ``delete_prefix("")`` before that would see the whole bucket."""
    store = open_store(url, storage_options)
    store.exists("zarr.json")
    return store


def remove_store(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Delete everything under a store URL the benchmark created itself (a local one whole)."""
    if is_local_url(url):
        shutil.rmtree(local_path(url), ignore_errors=True)
    else:
        open_measured(url, storage_options).delete_prefix("")


class Scratch:
    """What one bench command makes and must remove: a local work directory (``work``, always
    removed) and the synthetic store it may write under the target (:meth:`new_store`;
    removed unless ``keep``). Use as a context manager."""

    def __init__(self, command: str, target: str, *, workdir: str | os.PathLike[str] | None,
                 storage_options: Mapping[str, Any] | None, keep: bool) -> None:
        self.target = target
        self.storage_options = storage_options
        self.keep = keep
        self.work = Path(tempfile.mkdtemp(prefix=f"bigstore-bench-{command}-", dir=workdir))
        self.made: str | None = None

    def new_store(self) -> str:
        """A fresh store URL under the target (never an existing store of the user's)."""
        self.made = f"{self.target.rstrip('/')}/bigstore-bench-{uuid.uuid4().hex[:8]}"
        return self.made

    def __enter__(self) -> Scratch:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if self.made is not None and not self.keep:
                remove_store(self.made, self.storage_options)
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
