"""Pure-numpy twins of ``_quant_jit``, used when numba's JIT is disabled.

Same signatures, same outputs bit for bit (tests compare the two). The arithmetic is the same
float32 operations, vectorised: numpy's float32 division and rint round exactly as the kernel's
scalar code does, and its float16 cast is round-to-nearest-even like the kernel's bit arithmetic.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Arr = np.ndarray[Any, Any]

SCALE_F16 = 0
SCALE_BF16 = 1
OUT_F32 = 0
OUT_F16 = 1
OUT_BF16 = 2


def _f32_to_bf16_bits(x: Arr) -> Arr:
    b = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = ((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    r = r.astype(np.uint16)
    r[(b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)] = 0x7FC0  # NaN, as torch writes it
    return r


def f32_to_half_bits(x: Arr, kind: int, out: Arr) -> Arr:
    if kind == SCALE_F16:
        with np.errstate(over="ignore"):  # overflow to inf is the right answer
            out[...] = np.asarray(x, np.float32).astype(np.float16).view(np.uint16)
    else:
        out[...] = _f32_to_bf16_bits(x)
    return out


def half_bits_to_f32(h: Arr, kind: int, out: Arr) -> Arr:
    h = np.asarray(h, np.uint16)
    if kind == SCALE_F16:
        out[...] = h.view(np.float16).astype(np.float32)
    else:
        out[...] = (h.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return out


def _groups(x: Arr, group: int, ng: int) -> Arr:
    """(rows, cols) -> (rows, ng, group), the short last group padded with zeros.

    Zero padding changes neither max|x| nor the zero-including min/max the kernels use.
    """
    rows, cols = x.shape
    pad = np.zeros((rows, ng * group), np.float32)
    pad[:, :cols] = x
    return pad.reshape(rows, ng, group)


def _stored(s32: Arr, kind: int, scales: Arr) -> Arr:
    bits = np.empty(s32.shape, np.uint16)
    f32_to_half_bits(s32, kind, bits)
    scales[...] = bits
    return half_bits_to_f32(bits, kind, np.empty(s32.shape, np.float32))


def _per_value(s: Arr, group: int, cols: int) -> Arr:
    return np.repeat(s, group, axis=1)[:, :cols]


def quantize_int8(x: Arr, group: int, scale_kind: int, q: Arr, scales: Arr) -> tuple[Arr, Arr]:
    cols = x.shape[1]
    ng = scales.shape[1]
    amax = np.abs(_groups(x, group, ng)).max(axis=2)
    s = _stored((amax / np.float32(127.0)).astype(np.float32), scale_kind, scales)
    sv = _per_value(s, group, cols)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.rint(x / sv)
    v = np.clip(v, np.float32(-127.0), np.float32(127.0))
    q[...] = np.where(sv == 0, np.float32(0.0), v).astype(np.int8)
    return q, scales


def quantize_int4(x: Arr, group: int, scale_kind: int, packed: Arr, scales: Arr,
                  zeros: Arr) -> tuple[Arr, Arr, Arr]:
    rows, cols = x.shape
    ng = scales.shape[1]
    g = _groups(x, group, ng)
    lo = np.minimum(g.min(axis=2), np.float32(0.0))
    hi = np.maximum(g.max(axis=2), np.float32(0.0))
    s = _stored(((hi - lo) / np.float32(15.0)).astype(np.float32), scale_kind, scales)
    zero, top = np.float32(0.0), np.float32(15.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(s == 0, zero, np.clip(np.rint(-lo / s), zero, top)).astype(np.float32)
        sv = _per_value(s, group, cols)
        v = np.clip(np.rint(x / sv) + _per_value(z, group, cols), zero, top)
    nib = np.where(sv == 0, zero, v).astype(np.uint8)
    zeros[...] = z.astype(np.uint8)
    if cols % 2:
        nib = np.concatenate([nib, np.zeros((rows, 1), np.uint8)], axis=1)
    packed[...] = nib[:, 0::2] | (nib[:, 1::2] << np.uint8(4))
    return packed, scales, zeros


def _put(v: Arr, out_kind: int, out: Arr) -> Arr:
    if out_kind == OUT_F32:
        out[...] = v
    else:
        f32_to_half_bits(v, SCALE_F16 if out_kind == OUT_F16 else SCALE_BF16, out)
    return out


def dequantize_int8(q: Arr, scales: Arr, scale_kind: int, group: int, out_kind: int,
                    out: Arr) -> Arr:
    cols = q.shape[1]
    s = half_bits_to_f32(scales, scale_kind, np.empty(scales.shape, np.float32))
    return _put(q.astype(np.float32) * _per_value(s, group, cols), out_kind, out)


def dequantize_int4(packed: Arr, scales: Arr, zeros: Arr, scale_kind: int, group: int,
                    out_kind: int, out: Arr) -> Arr:
    rows, cols = out.shape
    s = half_bits_to_f32(scales, scale_kind, np.empty(scales.shape, np.float32))
    nib = np.empty((rows, 2 * packed.shape[1]), np.int32)
    nib[:, 0::2] = packed & 0xF
    nib[:, 1::2] = packed >> 4
    d = (nib[:, :cols] - _per_value(zeros.astype(np.int32), group, cols)).astype(np.float32)
    return _put(d * _per_value(s, group, cols), out_kind, out)
