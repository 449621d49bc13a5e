"""Datasets: write out-of-core datasets, read them by index, feed training loops."""

from __future__ import annotations

from .dataset import Dataset, open_dataset
from .loader import Loader, LoaderConfig
from .writer import write_dataset

__all__ = ["Dataset", "Loader", "LoaderConfig", "open_dataset", "write_dataset"]
