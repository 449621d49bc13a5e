"""Model weights: save/load/convert tensors."""

from .reader import TensorHandle, TensorSlice, TensorStore, load, load_numpy, open
from .writer import TensorWriter, save

__all__ = [
    "TensorHandle", "TensorSlice", "TensorStore", "TensorWriter", "load", "load_numpy", "open",
    "save",
]
