"""Opening the stores the benchmarks measure, through the public Store API only."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from ..store import Store, is_local_url, local_path, open_store

__all__ = ["open_measured", "remove_store"]


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
