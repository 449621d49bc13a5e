"""bigstore: model weights and datasets in one chunked Zarr v3 tensor store.

Weights: ``save``, ``load``, ``load_numpy``, ``open``, ``convert``, ``quantize`` (GPTQ with
``calibrate``), ``verify``, ``offload``, ``skeleton``. Datasets: ``write_dataset``,
``open_dataset``.
"""

from __future__ import annotations

from .config import (
    DatasetWriteConfig,
    LoaderConfig,
    LosslessConfig,
    OffloadConfig,
    QuantizeConfig,
    ReadConfig,
    WriteConfig,
    parse_bytes,
)
from .data import Dataset, Loader, open_dataset, write_dataset
from .errors import BigstoreError
from .verify import verify
from .version import __version__
from .weights import TensorHandle, TensorStore, TensorWriter, load, load_numpy, open, save
from .weights.calibrate import Calibration, calibrate
from .weights.convert import convert, quantize
from .weights.offload import OffloadedModel, offload, skeleton, unique_state_dict
from .weights.pretrained import from_pretrained
from .weights.quantize import PackedTensor

__all__ = [
    "BigstoreError", "Calibration", "Dataset", "DatasetWriteConfig", "Loader", "LoaderConfig",
    "LosslessConfig", "OffloadConfig", "OffloadedModel", "PackedTensor", "QuantizeConfig",
    "ReadConfig", "TensorHandle", "TensorStore", "TensorWriter", "WriteConfig", "__version__",
    "calibrate", "convert", "from_pretrained", "load", "load_numpy", "offload", "open",
    "open_dataset", "parse_bytes", "quantize", "save", "skeleton", "unique_state_dict", "verify",
    "write_dataset",
]
