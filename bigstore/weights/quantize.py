"""Group-wise 8-bit and 4-bit weights: the policy, and one tensor to its stored parts and back.

Pure functions over numpy arrays (and torch tensors for the device path); no I/O. A store keeps
the parts as ordinary Zarr arrays (``bigstore.format.quantized``); the chunk reader dequantizes
them at page-in through ``bigstore.io.dequant`` (numba kernels on the CPU, :func:`dequantize_torch`
on a device after copying the packed bytes there). Both give the same bits: ``(q - zero) *
scale`` is exact in float32, so the only rounding is the final round-to-nearest-even into the
compute dtype. :class:`PackedTensor` is what ``load(..., dequantize=False)`` returns.

Layout of a tensor of shape ``(..., cols)``, seen as ``rows = prod(...)`` rows (see
``bigstore_native._quant_jit`` for the kernels' arithmetic):

===========  =====================================  =====================================
part         int8 (symmetric)                       int4 (asymmetric)
===========  =====================================  =====================================
``packed``   int8 ``(rows, cols)``                  uint8 ``(rows, ceil(cols / 2))``, value
                                                    ``2k`` in the low nibble
``scales``   float16, or bfloat16 as uint16 bits,   same
             ``(rows, ceil(cols / group))``
``zeros``    --                                     uint8 ``(rows, ceil(cols / group))``
===========  =====================================  =====================================

Groups never straddle rows, so row-chunked parts (the store chunks along axis 0) decode chunk
by chunk. When ``group`` does not divide ``cols`` the last group of each row is shorter: its
scale fits the values it has, nothing is padded (int4 rows of odd length end in a zero nibble).
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from bigstore_native import quant

from ..config import QuantizeConfig
from ..errors import DTypeError, QuantizeError, ShapeError
from ..format.quantized import QuantSpec
from ..io.dequant import COMPUTE_DTYPES, dequantize_parts, dequantize_torch

__all__ = [
    "PackedTensor", "QuantSpec", "QuantizedTensor", "dequantize_tensor", "dequantize_torch",
    "quantize_tensor", "should_quantize", "why",
]

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
_SCALE_KIND = {"float16": 0, "bfloat16": 1}

# -- policy ---------------------------------------------------------------------------------------
# Name components (the dot-separated parts) that mark a tensor kept in its original precision.
# Embeddings are lookups (a quantized row costs as much to fix as it saves) and often tied to
# the head; norms and biases are tiny and sensitive; the head sets the output distribution.
_EMBED_WORDS = ("wte", "wpe", "shared")
_HEAD_WORDS = ("lm_head", "head", "embed_out", "output_layer", "classifier")
_NORM_RE = re.compile(r"ln(_\w+|\d+)?")


def _components(name: str) -> list[str]:
    return name.lower().split(".")


def _matches(name: str, patterns: Sequence[str]) -> str | None:
    for p in patterns:
        hit = re.search(p[3:], name) if p.startswith("re:") else fnmatch.fnmatchcase(name, p)
        if hit:
            return p
    return None


def why(name: str, shape: Sequence[int], dtype: str, config: QuantizeConfig) -> tuple[bool, str]:
    """Whether ``name`` is quantized under ``config``, and the reason (for logs and ``ls``).

    Decided by name, shape and dtype only (the store knows nothing else):

    1. only float tensors (float16, bfloat16, float32, float64) of at least one dimension;
    2. an ``exclude`` pattern keeps the tensor as it is; an ``include`` pattern quantizes it;
    3. by default: 2-D tensors named ``*weight`` with both dimensions >= ``min_dim`` and rows
       of at least one group, except embeddings (a component containing ``embed``, or ``wte``,
       ``wpe``, ``shared``), norms (``norm`` anywhere in a component, ``ln``, ``ln_f``,
       ``ln_1``...), and heads (``lm_head``, ``head``, ``embed_out``, ``output_layer``,
       ``classifier``, or a top-level ``output``).
    """
    if dtype not in FLOAT_DTYPES:
        return False, f"dtype {dtype} is not a float dtype"
    if len(shape) == 0 or math.prod(shape) == 0:
        return False, "scalar or empty"
    hit = _matches(name, config.exclude)
    if hit:
        return False, f"excluded by {hit!r}"
    hit = _matches(name, config.include)
    if hit:
        return True, f"included by {hit!r}"
    parts = _components(name)
    if len(shape) != 2:
        return False, f"{len(shape)}-D, not a matrix"
    if not parts[-1].endswith("weight"):
        return False, "not a weight"
    if any("embed" in c or c in _EMBED_WORDS for c in parts):
        return False, "embedding"
    if any("norm" in c or _NORM_RE.fullmatch(c) for c in parts):
        return False, "norm"
    if any(c in _HEAD_WORDS for c in parts) or parts[0] == "output":
        return False, "output head"
    if min(shape) < config.min_dim:
        return False, f"a dimension below min_dim={config.min_dim}"
    if shape[-1] < config.group_size:
        return False, f"rows shorter than one group ({config.group_size})"
    return True, "linear weight"


def should_quantize(name: str, shape: Sequence[int], dtype: str,
                    config: QuantizeConfig) -> bool:
    """See :func:`why`."""
    return why(name, shape, dtype, config)[0]


# -- one tensor -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class QuantizedTensor:
    """One tensor's stored parts (numpy arrays) and their description."""

    packed: np.ndarray[Any, Any]
    scales: np.ndarray[Any, Any]  # float16, or uint16 bits of bfloat16
    zeros: np.ndarray[Any, Any] | None
    spec: QuantSpec

    @property
    def nbytes(self) -> int:
        return int(self.packed.nbytes + self.scales.nbytes
                   + (0 if self.zeros is None else self.zeros.nbytes))

    def check(self, name: str) -> None:
        """Shapes and dtypes of the parts agree with the description."""
        s = self.spec
        s.check(name)
        want = [("packed", self.packed, np.int8 if s.scheme == "int8" else np.uint8,
                 s.packed_shape),
                ("scales", self.scales, np.float16 if s.scale_dtype == "float16" else np.uint16,
                 s.scales_shape)]
        if s.scheme == "int4":
            if self.zeros is None:
                raise QuantizeError(f"{name}: int4 tensor without zero points")
            want.append(("zeros", self.zeros, np.uint8, s.scales_shape))
        for part, arr, dt, shp in want:
            if arr.dtype != dt or tuple(arr.shape) != shp:
                raise ShapeError(
                    f"{name}: {part} is {arr.dtype}{tuple(arr.shape)}, "
                    f"expected {np.dtype(dt)}{shp}"
                )


def _as_float32(name: str, x: Any, dtype: str | None) -> tuple[np.ndarray[Any, Any], str]:
    """The tensor as float32 (exact for every float dtype but float64) and its logical dtype."""
    if isinstance(x, torch.Tensor):
        logical = str(x.dtype).removeprefix("torch.")
        if logical not in FLOAT_DTYPES:
            raise DTypeError(f"{name}: cannot quantize a {logical} tensor (floats only)")
        return x.detach().to("cpu", torch.float32).contiguous().numpy(), logical
    a = np.asarray(x)
    if dtype == "bfloat16":
        if a.dtype not in (np.uint16, np.int16):
            raise DTypeError(f"{name}: bfloat16 is given as uint16 bits, got {a.dtype}")
        bits = a.astype(np.uint16).astype(np.uint32) << np.uint32(16)
        return bits.view(np.float32), "bfloat16"
    logical = a.dtype.name
    if dtype is not None and dtype != logical:
        raise DTypeError(f"{name}: array is {logical}, dtype says {dtype}")
    if logical not in FLOAT_DTYPES:
        raise DTypeError(f"{name}: cannot quantize a {logical} tensor (floats only)")
    return np.array(a, np.float32, order="C", copy=None), logical  # keeps 0-d arrays 0-d


def prepare(name: str, x: Any, *, scheme: str, group_size: int, scale_dtype: str,
            dtype: str | None = None) -> tuple[np.ndarray[Any, Any], QuantSpec]:
    """The tensor as float32 ``(rows, cols)`` and its parts' description; refuses what cannot
    be quantized (non-float, scalar or empty, non-finite values). Shared with ``gptq``."""
    x32, logical = _as_float32(name, x, dtype)
    if x32.ndim == 0 or x32.size == 0:
        raise ShapeError(f"{name}: cannot quantize a scalar or empty tensor {x32.shape}")
    spec = QuantSpec(scheme, group_size, scale_dtype, logical, tuple(int(n) for n in x32.shape))
    spec.check(name)
    if not np.isfinite(x32).all():
        bad = int(np.count_nonzero(~np.isfinite(x32)))
        raise QuantizeError(f"{name}: {bad} non-finite values (NaN/Inf) cannot be quantized")
    return x32.reshape(spec.rows, spec.cols), spec


def finish(name: str, spec: QuantSpec, packed: np.ndarray[Any, Any],
           scales: np.ndarray[Any, Any], zeros: np.ndarray[Any, Any] | None) -> QuantizedTensor:
    """Parts -> a :class:`QuantizedTensor`; ``scales`` are uint16 bits, refused when a group's
    scale overflowed the scale dtype (it would dequantize to inf)."""
    check_scale_bits(name, scales, spec.scale_dtype)
    kind = _SCALE_KIND[spec.scale_dtype]
    return QuantizedTensor(packed, scales.view(np.float16) if kind == 0 else scales, zeros, spec)


def check_scale_bits(name: str, scales: np.ndarray[Any, Any], scale_dtype: str) -> None:
    """Refuse scale bits (uint16) of which one overflowed ``scale_dtype`` (inf)."""
    kind = _SCALE_KIND[scale_dtype]
    exp_bits = (scales >> 10) & 0x1F if kind == 0 else (scales >> 7) & 0xFF
    if np.any(exp_bits == (0x1F if kind == 0 else 0xFF)):
        raise QuantizeError(
            f"{name}: a group's scale overflows {scale_dtype}; use scale_dtype='bfloat16'"
        )


def quantize_tensor(name: str, x: Any, *, scheme: str = QuantizeConfig.scheme,
                    group_size: int = QuantizeConfig.group_size,
                    scale_dtype: str = QuantizeConfig.scale_dtype,
                    dtype: str | None = None) -> QuantizedTensor:
    """One float tensor (numpy, torch, or bfloat16 as uint16 bits with ``dtype="bfloat16"``)
    -> its stored parts, each value rounded to its group's nearest level. Deterministic; the
    numba kernels (or their numpy twins) do the work. :func:`bigstore.weights.gptq.gptq_tensor`
    fills the same parts from calibration data instead."""
    x2, spec = prepare(name, x, scheme=scheme, group_size=group_size, scale_dtype=scale_dtype,
                       dtype=dtype)
    kind = _SCALE_KIND[scale_dtype]
    scales = np.empty(spec.scales_shape, np.uint16)
    zeros: np.ndarray[Any, Any] | None = None
    if scheme == "int8":
        packed = np.empty(spec.packed_shape, np.int8)
        quant.quantize_int8(x2, group_size, kind, packed, scales)
    else:
        packed = np.empty(spec.packed_shape, np.uint8)
        zeros = np.empty(spec.scales_shape, np.uint8)
        quant.quantize_int4(x2, group_size, kind, packed, scales, zeros)
    return finish(name, spec, packed, scales, zeros)


def dequantize_tensor(name: str, q: QuantizedTensor, *, dtype: str | None = None,
                      out: np.ndarray[Any, Any] | None = None) -> np.ndarray[Any, Any]:
    """Stored parts -> values in ``dtype`` (float32, float16, or bfloat16 as uint16 bits), in
    ``out`` when given (the caller's buffer: shape ``spec.shape``, C-contiguous).

    ``dtype`` defaults to the original dtype (float64 comes back as float32: the values came
    from float32 arithmetic).
    """
    q.check(name)
    spec = q.spec
    dt = dtype or (spec.dtype if spec.dtype in COMPUTE_DTYPES else "float32")
    if dt not in COMPUTE_DTYPES:
        raise DTypeError(f"{name}: cannot dequantize to {dt}; choose one of {COMPUTE_DTYPES}")
    storage = np.float32 if dt == "float32" else np.float16 if dt == "float16" else np.uint16
    if out is None:
        out = np.empty(spec.shape, storage)
    if out.dtype != storage or tuple(out.shape) != spec.shape or not out.flags.c_contiguous:
        raise ShapeError(
            f"{name}: output buffer is {out.dtype}{out.shape}, expected a C-contiguous "
            f"{np.dtype(storage)}{spec.shape}"
        )
    o2 = out.reshape(spec.rows, spec.cols)
    if dt == "float16":
        o2 = o2.view(np.uint16)
    dequantize_parts(spec, q.packed, q.scales.view(np.uint16), q.zeros, dt, o2)
    return out


@dataclass(frozen=True)
class PackedTensor:
    """A quantized tensor's parts as torch tensors (on any device), for quantized kernels.

    packed: int8 ``(rows, cols)`` (int8) or uint8 ``(rows, ceil(cols / 2))`` (int4, value ``2k``
    in the low nibble); scales: float16 or bfloat16 ``(rows, groups)``; zeros: uint8
    ``(rows, groups)`` (int4) or None. ``rows`` is the product of all dimensions but the last.
    """

    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    spec: QuantSpec

    @property
    def shape(self) -> tuple[int, ...]:
        """The logical (dequantized) shape."""
        return self.spec.shape

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size()
                   for t in (self.packed, self.scales, self.zeros) if t is not None)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The values in ``dtype`` (default: the original dtype; float64 as float32), on the
        parts' device; the same bits as ``load`` gives."""
        default = {"float16": torch.float16, "bfloat16": torch.bfloat16}
        return dequantize_torch(self.packed, self.scales, self.zeros, self.spec,
                                dtype or default.get(self.spec.dtype, torch.float32))
