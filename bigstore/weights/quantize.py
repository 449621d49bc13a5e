"""Group-wise 8-bit and 4-bit weights: the policy, and one tensor to its stored parts and back.

Pure functions over numpy arrays (and torch tensors for the device path); no I/O. The chunk
reader stores the parts as ordinary Zarr arrays and calls :func:`dequantize_tensor` (CPU, numba
kernels) or :func:`dequantize_torch` (any torch device, after copying the packed bytes there) at
page-in. Both give the same bits: ``(q - zero) * scale`` is exact in float32, so the only
rounding is the final round-to-nearest-even into the compute dtype.

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

__all__ = [
    "QuantSpec", "QuantizedTensor", "dequantize_tensor", "dequantize_torch", "quantize_tensor",
    "should_quantize", "why",
]

SCHEMES = ("int8", "int4")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
_SCALE_KIND = {"float16": 0, "bfloat16": 1}
_OUT_KIND = {"float32": 0, "float16": 1, "bfloat16": 2}

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
class QuantSpec:
    """The JSON-able description stored beside the parts (array attributes)."""

    scheme: str
    group_size: int
    scale_dtype: str
    dtype: str  # the original logical dtype
    shape: tuple[int, ...]  # the original shape

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def n_groups(self) -> int:
        return -(-self.cols // self.group_size)

    @property
    def packed_shape(self) -> tuple[int, int]:
        return (self.rows, self.cols if self.scheme == "int8" else (self.cols + 1) // 2)

    @property
    def scales_shape(self) -> tuple[int, int]:
        return (self.rows, self.n_groups)

    @property
    def nbytes(self) -> int:
        """Stored bytes: packed values, scales and zero points."""
        per_group = 2 + (1 if self.scheme == "int4" else 0)
        return math.prod(self.packed_shape) + self.rows * self.n_groups * per_group

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(1, self.rows * self.cols)

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "group_size": self.group_size,
                "scale_dtype": self.scale_dtype, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], name: str) -> QuantSpec:
        try:
            spec = cls(scheme=str(doc["scheme"]), group_size=int(doc["group_size"]),
                       scale_dtype=str(doc["scale_dtype"]), dtype=str(doc["dtype"]),
                       shape=tuple(int(n) for n in doc["shape"]))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantizeError(f"{name}: malformed quantization description {doc!r}") from e
        spec.check(name)
        return spec

    def check(self, name: str) -> None:
        if self.scheme not in SCHEMES:
            raise QuantizeError(f"{name}: unknown quantization scheme {self.scheme!r}")
        if self.scale_dtype not in _SCALE_KIND:
            raise QuantizeError(f"{name}: unknown scale dtype {self.scale_dtype!r}")
        if self.group_size < 1 or not self.shape or min(self.shape) < 1:
            raise QuantizeError(
                f"{name}: bad group size {self.group_size} or shape {self.shape}"
            )


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


def quantize_tensor(name: str, x: Any, *, scheme: str = "int8", group_size: int = 64,
                    scale_dtype: str = "float16", dtype: str | None = None) -> QuantizedTensor:
    """One float tensor (numpy, torch, or bfloat16 as uint16 bits with ``dtype="bfloat16"``)
    -> its stored parts. Deterministic; the numba kernels (or their numpy twins) do the work."""
    x32, logical = _as_float32(name, x, dtype)
    if x32.ndim == 0 or x32.size == 0:
        raise ShapeError(f"{name}: cannot quantize a scalar or empty tensor {x32.shape}")
    spec = QuantSpec(scheme, group_size, scale_dtype, logical, tuple(int(n) for n in x32.shape))
    spec.check(name)
    if not np.isfinite(x32).all():
        bad = int(np.count_nonzero(~np.isfinite(x32)))
        raise QuantizeError(f"{name}: {bad} non-finite values (NaN/Inf) cannot be quantized")
    x2 = x32.reshape(spec.rows, spec.cols)
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
    exp_bits = (scales >> 10) & 0x1F if kind == 0 else (scales >> 7) & 0xFF
    if np.any(exp_bits == (0x1F if kind == 0 else 0xFF)):
        raise QuantizeError(
            f"{name}: a group's scale overflows {scale_dtype}; use scale_dtype='bfloat16'"
        )
    return QuantizedTensor(packed, scales.view(np.float16) if kind == 0 else scales, zeros, spec)


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
    if dt not in _OUT_KIND:
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
    kind = _SCALE_KIND[spec.scale_dtype]
    scales = q.scales.view(np.uint16)
    if spec.scheme == "int8":
        quant.dequantize_int8(q.packed, scales, kind, spec.group_size, _OUT_KIND[dt], o2)
    else:
        assert q.zeros is not None  # q.check() above
        quant.dequantize_int4(q.packed, scales, q.zeros, kind, spec.group_size, _OUT_KIND[dt],
                              o2)
    return out


def _per_value(t: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(rows, ng) -> (rows, cols): each group's value repeated over its columns."""
    return t.repeat_interleave(spec.group_size, dim=1)[:, : spec.cols]


def dequantize_torch(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     spec: QuantSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The torch twin of :func:`dequantize_tensor`, on whatever device the parts are.

    ``scales`` may be float16/bfloat16, or int16/uint16 holding their bits (as read from the
    store). Gives the same bits as the numba kernels: the products are exact in float32.
    """
    half = torch.float16 if spec.scale_dtype == "float16" else torch.bfloat16
    if scales.dtype in (torch.int16, torch.uint16):
        scales = scales.view(half)
    if scales.dtype != half:
        raise DTypeError(f"scales are {scales.dtype}, the description says {spec.scale_dtype}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise DTypeError(f"cannot dequantize to {dtype}; choose float32, float16 or bfloat16")
    s = _per_value(scales.reshape(spec.scales_shape).float(), spec)
    p = packed.reshape(spec.packed_shape)
    if spec.scheme == "int8":
        v = p.to(torch.float32) * s
    else:
        if zeros is None:
            raise QuantizeError("int4 dequantization needs the zero points")
        nib = torch.stack([p & 0xF, p >> 4], dim=-1).reshape(spec.rows, -1)[:, : spec.cols]
        z = _per_value(zeros.reshape(spec.scales_shape).to(torch.int32), spec)
        v = (nib.to(torch.int32) - z).to(torch.float32) * s
    return v.to(dtype).reshape(spec.shape)
