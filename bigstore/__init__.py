"""bigstore: model weights and datasets in one chunked Zarr v3 tensor store.

Public API: ``save``, ``load``, ``load_numpy``, ``open``, ``convert``, ``verify``.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .config import ReadConfig, WriteConfig, parse_bytes
from .errors import BigstoreError
from .weights import TensorHandle, TensorStore, TensorWriter, load, load_numpy, open, save
from .weights.convert import convert
from .weights.verify import verify

__all__ = [
    "BigstoreError", "ReadConfig", "TensorHandle", "TensorStore", "TensorWriter", "WriteConfig",
    "__version__", "convert", "load", "load_numpy", "open", "parse_bytes", "save", "verify",
]
