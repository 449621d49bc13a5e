"""Dequantizing a quantized tensor's rows into the caller's buffer: numba on the CPU, torch on a
device. The layouts are :mod:`bigstore.format.quantized`'s; the kernels ``bigstore_native.quant``.

Both paths give the same bits: ``(q - zero) * scale`` is exact in float32, so the only rounding
is the final round-to-nearest-even into the compute dtype (float64 tensors come back as the
float32 values widened exactly).

**For a device filler** (the offload pager's CUDA path), per quantized tensor
``layout = store.meta(name)`` (a :class:`~bigstore.format.quantized.QuantizedLayout`; plain
tensors are ``ArrayLayout``\\ s)::

    spans = layout.part_spans(start, stop)        # the parts' rows holding rows [start, stop)
    # read each span into (pinned) host memory: one RowRequest(span.layout, span.start,
    # span.stop, buf) each through the ChunkReader (span.nbytes bytes: ~1/4 of the logical
    # bytes for int4 from bfloat16), copy them to the device as uint8 tensors, then
    dequantize_into(layout, {s.part: dev_bytes for s in spans}, dst, start, stop)

``dst`` is the destination on the device: the rows' bytes (uint8, ``(stop - start) *
layout.row_bytes``) or a tensor of the logical dtype. Kernels are queued on the current stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from bigstore_native import quant

from ..errors import DTypeError, QuantizeError, ShapeError
from ..format.quantized import QuantizedLayout, QuantSpec

__all__ = [
    "COMPUTE_DTYPES", "compute_dtype", "dequantize_into", "dequantize_parts", "dequantize_rows",
    "dequantize_torch",
]

COMPUTE_DTYPES = ("float32", "float16", "bfloat16")
_SCALE_KIND = {"float16": quant.SCALE_F16, "bfloat16": quant.SCALE_BF16}
_OUT_KIND = {"float32": quant.OUT_F32, "float16": quant.OUT_F16, "bfloat16": quant.OUT_BF16}
_STORAGE: dict[str, type[np.generic]] = {
    "float32": np.float32, "float16": np.uint16, "bfloat16": np.uint16,
}


def compute_dtype(logical: str) -> str:
    """The dtype the kernels produce for a tensor of ``logical`` dtype (float64: float32)."""
    return logical if logical in COMPUTE_DTYPES else "float32"


def dequantize_parts(spec: QuantSpec, packed: np.ndarray[Any, Any], scales: np.ndarray[Any, Any],
                     zeros: np.ndarray[Any, Any] | None, dtype: str,
                     out: np.ndarray[Any, Any]) -> None:
    """numba kernels: the parts (2-D, ``spec``'s part shapes; scales as uint16 bits) -> ``out``
    (``(spec.rows, spec.cols)``: float32, or uint16 bits of float16/bfloat16)."""
    kind, group = _SCALE_KIND[spec.scale_dtype], spec.group_size
    if spec.scheme == "int8":
        quant.dequantize_int8(packed, scales, kind, group, _OUT_KIND[dtype], out)
    else:
        if zeros is None:
            raise QuantizeError("int4 dequantization needs the zero points")
        quant.dequantize_int4(packed, scales, zeros, kind, group, _OUT_KIND[dtype], out)


def dequantize_rows(layout: QuantizedLayout, start: int, stop: int,
                    parts: Mapping[str, Any], out: memoryview) -> None:
    """CPU: ``parts`` (part -> the bytes of ``layout.part_spans(start, stop)``) -> the bytes of
    logical rows [start, stop) in ``out`` (the caller's buffer, exactly those bytes)."""
    spec = layout.rows_spec(start, stop)
    arrays = {}
    for p in spec.parts:
        raw = np.frombuffer(parts[p], np.uint8)
        part_dt = {"packed": np.int8 if spec.scheme == "int8" else np.uint8,
                   "scales": np.uint16, "zeros": np.uint8}[p]
        arrays[p] = raw.view(part_dt).reshape(spec.part_shape(p))
    dt = compute_dtype(spec.dtype)
    whole = len(layout.shape) == 1 and (start, stop) != (0, layout.rows)
    direct = dt == spec.dtype and not whole
    dst = np.frombuffer(out, np.uint8) if direct else np.empty(
        spec.rows * spec.cols * np.dtype(_STORAGE[dt]).itemsize, np.uint8)
    if not dst.flags.writeable:
        raise ShapeError(f"tensor {layout.path!r}: the output buffer is read-only")
    vals = dst.view(_STORAGE[dt]).reshape(spec.rows, spec.cols)
    dequantize_parts(spec, arrays["packed"], arrays["scales"], arrays.get("zeros"), dt, vals)
    if direct:
        return
    res = vals.reshape(-1)
    if dt != spec.dtype:  # float64: the float32 values, widened exactly
        res = res.astype(layout.dtype.storage)
    if whole:
        res = res[start:stop]
    np.frombuffer(out, np.uint8)[:] = res.view(np.uint8)


def _per_value(t: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """(rows, ng) -> (rows, cols): each group's value repeated over its columns."""
    return t.repeat_interleave(spec.group_size, dim=1)[:, : spec.cols]


def dequantize_torch(packed: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     spec: QuantSpec, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The torch twin of the numba kernels, on whatever device the parts are.

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


_TORCH = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def dequantize_into(layout: QuantizedLayout, parts: Mapping[str, torch.Tensor],
                    out: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Dequantize logical rows [start, stop) (default: all) into ``out``, on ``out``'s device.

    parts: part name ("packed", "scales", and "zeros" for int4) -> the bytes of that part's
        span in ``layout.part_spans(start, stop)``, as a tensor on the device (uint8, or any
        dtype: only its bytes are used).
    out: the destination: the rows' bytes (a uint8 tensor of ``(stop - start) *
        layout.row_bytes``) or a tensor of the logical dtype with the rows' elements.
    Returns ``out`` viewed as the logical dtype and shape of the rows.
    """
    stop = layout.rows if stop is None else stop
    spec = layout.rows_spec(start, stop)
    shape = (stop - start, *layout.shape[1:])
    logical = _TORCH.get(layout.dtype.name)
    if logical is None:
        raise DTypeError(f"tensor {layout.path!r}: cannot dequantize to {layout.dtype.name}")
    flat = out.reshape(-1).view(torch.uint8) if out.dtype != logical else out.reshape(-1)
    want = (stop - start) * layout.row_bytes
    if (flat.numel() * flat.element_size()) != want or not out.is_contiguous():
        raise ShapeError(f"tensor {layout.path!r}: output holds {out.nbytes} bytes, "
                         f"rows [{start}, {stop}) need {want} contiguous bytes")
    dst = flat.view(logical).view(shape)

    def part(name: str, dt: torch.dtype) -> torch.Tensor:
        t = parts[name].reshape(-1).view(torch.uint8)
        n = int(np.prod(spec.part_shape(name))) * torch.empty((), dtype=dt).element_size()
        if t.numel() != n:
            raise ShapeError(f"tensor {layout.path!r}: part {name!r} holds {t.numel()} bytes "
                             f"for rows [{start}, {stop}), expected {n}")
        return t.view(dt)

    packed = part("packed", torch.int8 if spec.scheme == "int8" else torch.uint8)
    scales = part("scales", torch.int16)
    zeros = part("zeros", torch.uint8) if spec.scheme == "int4" else None
    vals = dequantize_torch(packed, scales, zeros, spec, _TORCH[compute_dtype(spec.dtype)])
    if len(layout.shape) == 1:
        vals = vals[start:stop]
    dst.copy_(vals.view(shape))
    return dst
