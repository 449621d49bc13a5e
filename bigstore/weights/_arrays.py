"""numpy/torch tensors <-> the little-endian byte arrays bigstore stores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import DTypeError
from ..format import DTypeSpec, dtype_spec

__all__ = ["to_storage_array", "from_storage_array"]


def to_storage_array(name: str, value: Any) -> tuple[np.ndarray[Any, Any], DTypeSpec]:
    """A C-contiguous numpy array of the stored bits, and the logical dtype."""
    if isinstance(value, torch.Tensor):
        if value.is_sparse or value.layout != torch.strided or value.is_quantized:
            raise DTypeError(f"tensor {name!r}: only dense strided tensors can be stored")
        try:
            spec = dtype_spec(value.dtype)
        except DTypeError as e:
            raise DTypeError(f"tensor {name!r}: {e}") from None
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        t = t.resolve_conj().resolve_neg().contiguous()
        if spec.raw_bits:
            t = t.view(spec.torch_storage)
        return t.numpy().view(spec.storage), spec
    if isinstance(value, np.ndarray | np.generic):
        arr = np.asarray(value)
        try:
            spec = dtype_spec(arr.dtype)
        except DTypeError as e:
            raise DTypeError(f"tensor {name!r}: {e}") from None
        # not ascontiguousarray: it turns 0-d arrays into 1-d ones
        return np.asarray(arr, dtype=spec.storage, order="C"), spec
    raise DTypeError(
        f"tensor {name!r}: expected a numpy array or a torch tensor, got {type(value).__name__}"
    )


def from_storage_array(arr: np.ndarray[Any, Any], spec: DTypeSpec) -> torch.Tensor:
    """A torch tensor of the logical dtype sharing ``arr``'s memory."""
    if not spec.raw_bits:
        return torch.from_numpy(arr.view(spec.storage.newbyteorder("=")))
    if spec.torch is None:
        raise DTypeError(f"this torch has no dtype {spec.name}")
    # signed ints of the same width: every torch version converts them from numpy
    return torch.from_numpy(arr.view(f"=i{spec.itemsize}")).view(spec.torch)
