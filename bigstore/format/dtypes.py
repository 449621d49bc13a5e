"""Logical dtypes and how each is stored.

Zarr 3.1 knows the numpy numeric types; bfloat16, the float8 family and complex32 are stored as
raw-bit unsigned integers of the same width, with the logical name in the array's attributes
(``attributes["bigstore"]["dtype"]``). Round trips through torch are bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import torch

from ..errors import DTypeError

__all__ = ["DTypeSpec", "dtype_spec", "NATIVE_DTYPES", "RAW_BIT_DTYPES", "SAFETENSORS_DTYPES"]

NATIVE_DTYPES = (
    "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128",
)
# logical name -> storage dtype of the same width
RAW_BIT_DTYPES = {
    "bfloat16": "uint16",
    "float8_e4m3fn": "uint8",
    "float8_e4m3fnuz": "uint8",
    "float8_e5m2": "uint8",
    "float8_e5m2fnuz": "uint8",
    "float8_e8m0fnu": "uint8",
    "complex32": "uint32",
}
#: logical dtype -> its name in a safetensors header (those safetensors can hold)
SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "complex64": "C64",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ",
}
_ALIASES = {"chalf": "complex32", "half": "float16", "float": "float32", "double": "float64",
            "cfloat": "complex64", "cdouble": "complex128", "long": "int64", "int": "int32",
            "short": "int16"}


@dataclass(frozen=True)
class DTypeSpec:
    """One logical dtype: its name, the numpy dtype its bytes are stored as, its torch dtype."""

    name: str
    storage: np.dtype[Any]
    torch: Any  # torch.dtype, or None where this torch build lacks the type

    @property
    def itemsize(self) -> int:
        return int(self.storage.itemsize)

    @property
    def raw_bits(self) -> bool:
        return self.name in RAW_BIT_DTYPES

    @property
    def torch_storage(self) -> torch.dtype:
        """The torch dtype matching the stored bits (what a raw-bit tensor is viewed as)."""
        if not self.raw_bits:
            assert self.torch is not None
            return self.torch
        return {1: torch.uint8, 2: torch.int16, 4: torch.int32}[self.itemsize]


@cache
def _spec_by_name(name: str) -> DTypeSpec:
    name = _ALIASES.get(name, name)
    if name in NATIVE_DTYPES:
        storage = np.dtype(name)
        storage = storage.newbyteorder("<") if storage.itemsize > 1 else storage
        return DTypeSpec(name, storage, getattr(torch, name, None))
    if name in RAW_BIT_DTYPES:
        tdt = getattr(torch, name, None)
        return DTypeSpec(name, np.dtype(RAW_BIT_DTYPES[name]).newbyteorder("<"), tdt)
    known = ", ".join((*NATIVE_DTYPES, *RAW_BIT_DTYPES))
    raise DTypeError(f"unsupported dtype {name!r}; bigstore stores: {known}")


def dtype_spec(dtype: object) -> DTypeSpec:
    """The spec for a numpy dtype, a torch dtype, or a logical name such as ``"bfloat16"``."""
    if isinstance(dtype, torch.dtype):
        return _spec_by_name(str(dtype).removeprefix("torch."))
    if isinstance(dtype, str):
        try:
            return _spec_by_name(dtype)
        except DTypeError:
            pass
    try:
        npd = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError:
        raise DTypeError(f"unsupported dtype {dtype!r}") from None
    if npd.kind not in "biufc" or npd.names is not None or npd.subdtype is not None:
        raise DTypeError(
            f"unsupported dtype {npd!r}: bigstore stores plain numeric and bool tensors "
            "(object, string, structured and datetime arrays are not tensors)"
        )
    return _spec_by_name(npd.name)
