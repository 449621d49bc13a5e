"""numba kernels for group-wise 8-bit and 4-bit weights. Arrays and ints in, arrays filled.

Serial (no ``parallel=True``) and ``nogil``: callers decode several chunks on several threads.
All arithmetic is float32 with IEEE rounding (no fast-math), so the numpy twins in
``_quant_numpy`` and the torch dequantizer give the same bits.

Layout (groups run along the last axis, ``ng = ceil(cols / group)`` groups per row; the last
group of a row is shorter when ``group`` does not divide ``cols``):

- int8, symmetric: ``q`` int8 (rows, cols) in [-127, 127]; ``x ~ q * scale``,
  ``scale = max|x| / 127`` rounded to the scale dtype.
- int4, asymmetric: ``packed`` uint8 (rows, ceil(cols / 2)), value ``2k`` in the low nibble and
  ``2k + 1`` in the high nibble (a zero high nibble pads an odd row); ``zeros`` uint8 (rows, ng)
  in [0, 15]; ``x ~ (q - zero) * scale``, ``scale = (max(x, 0) - min(x, 0)) / 15`` (the range
  includes 0, so zero is exact and a constant group is representable).
- scales: uint16 bits (rows, ng) of float16 (``scale_kind`` 0) or bfloat16 (``scale_kind`` 1).
  Quantization uses the stored (rounded) scale, so the error bound holds for what is stored.
- dequantized output (``out_kind``): 0 float32 (``out`` float32), 1 float16 bits, 2 bfloat16
  bits (``out`` uint16). ``(q - zero) * scale`` is exact in float32 (at most 5 + 11 significant
  bits), so the only rounding is the final RNE conversion to the compute dtype.
"""

from __future__ import annotations

import numba as nb
import numpy as np

SCALE_F16 = 0
SCALE_BF16 = 1
OUT_F32 = 0
OUT_F16 = 1
OUT_BF16 = 2


@nb.njit(cache=True, nogil=True, inline="always")
def _f32_bits_to_bf16(b):  # type: ignore[no-untyped-def]
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(0x7FC0)  # NaN: torch's canonical quiet NaN
    return _bf16_rne(b)


@nb.njit(cache=True, nogil=True, inline="always")
def _bf16_rne(b):  # type: ignore[no-untyped-def]
    """float32 bits -> bfloat16 bits, round to nearest even (add 0x7FFF plus the lowest kept
    bit, then truncate), for a value known not to be a NaN (infinities and overflow come out
    right): no branch, so loops of it vectorise."""
    return np.uint16((b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1)))
                     >> np.uint32(16))


@nb.njit(cache=True, nogil=True, inline="always")
def _all_finite(sf):  # type: ignore[no-untyped-def]
    """No scale of a row is inf or NaN, so none of its dequantized values can be a NaN."""
    ok = True
    for g in range(sf.shape[0]):
        ok &= (sf[g] - sf[g]) == np.float32(0.0)  # false for inf and NaN
    return ok


@nb.njit(cache=True, nogil=True, inline="always")
def _f32_bits_to_f16(b):  # type: ignore[no-untyped-def]
    a = b & np.uint32(0x7FFFFFFF)
    if np.uint32(0x38800000) <= a < np.uint32(0x47800000):  # the common case: a normal float16
        sign = (b >> np.uint32(16)) & np.uint32(0x8000)
        return np.uint16(sign | (((a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1)))
                                  >> np.uint32(13)) - np.uint32(112 << 10)))
    return _f32_bits_to_f16_rare(b)


@nb.njit(cache=True, nogil=True)
def _f32_bits_to_f16_rare(b):  # type: ignore[no-untyped-def]
    # zero, subnormal, overflow, inf, NaN: kept out of line so the hot loop stays small
    sign = np.uint32((b >> np.uint32(16)) & np.uint32(0x8000))
    exp = np.int64((b >> np.uint32(23)) & np.uint32(0xFF))
    mant = np.int64(b & np.uint32(0x7FFFFF))
    if exp == 0xFF:  # inf, or NaN keeping its payload's top bits (as numpy and F16C do)
        if mant == 0:
            return np.uint16(sign | 0x7C00)
        nan = 0x7C00 + (mant >> 13)
        if nan == 0x7C00:
            nan = np.int64(0x7C01)  # keep it a NaN when the payload's top bits are zero
        return np.uint16(sign | nan)
    e = exp - 112  # rebias 127 -> 15
    if e >= 31:
        return np.uint16(sign | 0x7C00)  # overflow -> inf
    if e <= 0:  # a float16 subnormal (or zero): value = m * 2**-24
        if e < -10:
            return np.uint16(sign)  # below half the smallest subnormal
        full = mant | 0x800000
        shift = 14 - e
        r = full >> shift
        rem = full & ((1 << shift) - 1)
        half = 1 << (shift - 1)
        if rem > half or (rem == half and (r & 1)):
            r += 1
        return np.uint16(sign | r)
    r = (e << 10) | (mant >> 13)
    rem = mant & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (r & 1)):
        r += 1  # a carry into the exponent is right, up to inf
    return np.uint16(sign | r)


@nb.njit(cache=True, nogil=True, inline="always")
def _f16_to_f32_bits(h):  # type: ignore[no-untyped-def]
    sign = np.uint32(h & 0x8000) << np.uint32(16)
    exp = np.uint32((h >> 10) & 0x1F)
    mant = np.uint32(h & 0x3FF)
    if exp == 0x1F:
        return sign | np.uint32(0x7F800000) | (mant << np.uint32(13))
    if exp != 0:
        return sign | ((exp + np.uint32(112)) << np.uint32(23)) | (mant << np.uint32(13))
    if mant == 0:
        return sign
    # subnormal: normalise the mantissa
    e = np.uint32(113)
    while (mant & np.uint32(0x400)) == 0:
        mant <<= np.uint32(1)
        e -= np.uint32(1)
    return sign | (e << np.uint32(23)) | ((mant & np.uint32(0x3FF)) << np.uint32(13))


@nb.njit(cache=True, nogil=True)
def f32_to_half_bits(x, kind, out):  # type: ignore[no-untyped-def]
    """float32 (1-D) -> float16 (kind 0) or bfloat16 (kind 1) bits, round to nearest even."""
    b = x.view(np.uint32)
    for i in range(b.shape[0]):
        out[i] = _f32_bits_to_f16(b[i]) if kind == SCALE_F16 else _f32_bits_to_bf16(b[i])
    return out


@nb.njit(cache=True, nogil=True)
def half_bits_to_f32(h, kind, out):  # type: ignore[no-untyped-def]
    """float16 (kind 0) or bfloat16 (kind 1) bits (1-D) -> float32, exactly."""
    b = out.view(np.uint32)
    for i in range(h.shape[0]):
        if kind == SCALE_F16:
            b[i] = _f16_to_f32_bits(h[i])
        else:
            b[i] = np.uint32(h[i]) << np.uint32(16)
    return out


@nb.njit(cache=True, nogil=True)
def _store_scales(s32, kind, scales):  # type: ignore[no-untyped-def]
    # round the float32 scales to the stored dtype and read them back: quantize with what is kept
    rows, ng = scales.shape
    flat = s32.reshape(-1)  # a view: the rounded scales are written back into s32
    bits = np.empty(flat.shape[0], np.uint16)
    f32_to_half_bits(flat, kind, bits)
    half_bits_to_f32(bits, kind, flat)
    for i in range(rows):
        for g in range(ng):
            scales[i, g] = bits[i * ng + g]


@nb.njit(cache=True, nogil=True)
def quantize_int8(x, group, scale_kind, q, scales):  # type: ignore[no-untyped-def]
    """float32 (rows, cols) -> int8 ``q`` and scale bits (rows, ng), symmetric per group."""
    rows, cols = x.shape
    ng = scales.shape[1]
    s32 = np.empty((rows, ng), np.float32)
    for i in range(rows):
        for g in range(ng):
            amax = np.float32(0.0)
            for j in range(g * group, min(cols, (g + 1) * group)):
                amax = max(amax, abs(x[i, j]))
            s32[i, g] = amax / np.float32(127.0)
    _store_scales(s32, scale_kind, scales)
    lim = np.float32(127.0)
    for i in range(rows):
        for g in range(ng):
            s = s32[i, g]
            for j in range(g * group, min(cols, (g + 1) * group)):
                if s == np.float32(0.0):
                    q[i, j] = 0
                else:
                    v = np.rint(x[i, j] / s)
                    q[i, j] = np.int8(min(max(v, -lim), lim))
    return q, scales


@nb.njit(cache=True, nogil=True)
def quantize_int4(x, group, scale_kind, packed, scales, zeros):  # type: ignore[no-untyped-def]
    """float32 (rows, cols) -> packed nibbles, scale bits and zero points, per group."""
    rows, cols = x.shape
    ng = scales.shape[1]
    s32 = np.empty((rows, ng), np.float32)
    mins = np.empty((rows, ng), np.float32)
    for i in range(rows):
        for g in range(ng):
            lo = np.float32(0.0)
            hi = np.float32(0.0)
            for j in range(g * group, min(cols, (g + 1) * group)):
                lo = min(lo, x[i, j])
                hi = max(hi, x[i, j])
            s32[i, g] = (hi - lo) / np.float32(15.0)
            mins[i, g] = lo
    _store_scales(s32, scale_kind, scales)
    top = np.float32(15.0)
    zero = np.float32(0.0)
    for i in range(rows):
        packed[i, :] = 0
        for g in range(ng):
            s = s32[i, g]
            z = np.float32(0.0)
            if s != zero:
                z = min(max(np.rint(-mins[i, g] / s), zero), top)
            zeros[i, g] = np.uint8(z)
            for j in range(g * group, min(cols, (g + 1) * group)):
                v = zero
                if s != zero:
                    v = min(max(np.rint(x[i, j] / s) + z, zero), top)
                nib = np.uint8(v)
                if j & 1:
                    packed[i, j >> 1] |= np.uint8(nib << np.uint8(4))
                else:
                    packed[i, j >> 1] |= nib
    return packed, scales, zeros


@nb.njit(cache=True, nogil=True)
def _put_row(row, i, out_kind, out):  # type: ignore[no-untyped-def]
    if out_kind == OUT_F32:
        for j in range(row.shape[0]):
            out[i, j] = row[j]
        return
    b = row.view(np.uint32)
    if out_kind == OUT_F16:
        # the normal-range formula (and zero) for every value in a loop without calls, so it
        # vectorises; then the rare rows (subnormal, overflow) again through the full conversion
        rare = 0
        for j in range(row.shape[0]):
            a = b[j] & np.uint32(0x7FFFFFFF)
            rare += ((a != 0) & (a < np.uint32(0x38800000))) | (a >= np.uint32(0x47800000))
            m = (((a + np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))) >> np.uint32(13))
                 - np.uint32(112 << 10))
            m = m if a != 0 else np.uint32(0)
            out[i, j] = np.uint16(((b[j] >> np.uint32(16)) & np.uint32(0x8000)) | m)
        if rare:
            for j in range(row.shape[0]):
                out[i, j] = _f32_bits_to_f16(b[j])
    else:
        for j in range(row.shape[0]):
            out[i, j] = _f32_bits_to_bf16(b[j])


@nb.njit(cache=True, nogil=True)
def dequantize_int8(q, scales, scale_kind, group, out_kind, out):  # type: ignore[no-untyped-def]
    """int8 ``q`` + scale bits -> ``out`` (float32, or float16/bfloat16 bits as uint16)."""
    rows, cols = q.shape
    ng = scales.shape[1]
    sf = np.empty(ng, np.float32)
    srow = np.empty(cols, np.float32)  # each value's scale: one flat loop then vectorises
    row = np.empty(cols, np.float32)
    # bfloat16 out and no NaN possible: each group straight to ``out`` from two short loops
    # that vectorise (3x), as in dequantize_int4; the scratch sized exactly ``group``
    tmp = np.empty(group, np.float32)
    for i in range(rows):
        half_bits_to_f32(scales[i], scale_kind, sf)
        if out_kind == OUT_BF16 and _all_finite(sf):
            qi = q[i]
            oi = out[i]
            for g in range(ng):
                s = sf[g]
                base = g * group
                n = min(cols, base + group) - base
                for j in range(n):
                    tmp[j] = np.float32(qi[base + j]) * s
                tb = tmp.view(np.uint32)
                for j in range(n):
                    oi[base + j] = _bf16_rne(tb[j])
            continue
        for g in range(ng):
            s = sf[g]
            for j in range(g * group, min(cols, (g + 1) * group)):
                srow[j] = s
        qi = q[i]
        for j in range(cols):  # 1.5x faster than a loop per group (64 values: too short)
            row[j] = np.float32(qi[j]) * srow[j]
        _put_row(row, i, out_kind, out)
    return out


@nb.njit(cache=True, nogil=True)
def dequantize_int4(packed, scales, zeros, scale_kind, group, out_kind,  # type: ignore[no-untyped-def]
                    out):
    """Packed nibbles + scale bits + zero points -> ``out`` (rows, cols) in the compute dtype."""
    rows, cols = out.shape
    ng = scales.shape[1]
    sf = np.empty(ng, np.float32)
    row = np.empty(cols + 1, np.float32)  # + the padding nibble of an odd row
    hb = group >> 1
    # a group's low and high nibbles' values (sized exactly ``hb``: a ``max(hb, 1)`` here
    # stops LLVM vectorising the loops below, 3.8x slower)
    lo = np.empty(hb, np.float32)
    hi = np.empty(hb, np.float32)
    # bfloat16 out, whole bytes per group, an even row and no NaN possible: each group's values
    # go straight to ``out`` from two short loops that vectorise (2.5x, NOTES); other rows go
    # through ``row`` and the general conversion
    direct = group % 2 == 0 and cols % 2 == 0 and out_kind == OUT_BF16
    for i in range(rows):
        half_bits_to_f32(scales[i], scale_kind, sf)
        pi = packed[i]
        if direct and _all_finite(sf):
            oi = out[i]
            for g in range(ng):
                s = sf[g]
                zf = np.float32(zeros[i, g])  # (q - z) * s is exact: small integers
                base = g * hb
                n = min(cols >> 1, base + hb) - base
                for k in range(n):
                    byte = pi[base + k]
                    lo[k] = (np.float32(byte & np.uint8(0xF)) - zf) * s
                    hi[k] = (np.float32(byte >> np.uint8(4)) - zf) * s
                lob = lo.view(np.uint32)
                hib = hi.view(np.uint32)
                for k in range(n):
                    oi[2 * (base + k)] = _bf16_rne(lob[k])
                    oi[2 * (base + k) + 1] = _bf16_rne(hib[k])
            continue
        for g in range(ng):
            s = sf[g]
            if group % 2 == 0:  # whole bytes per group: both nibbles at once (1.9x faster)
                zf = np.float32(zeros[i, g])
                for k in range(g * hb, min((cols + 1) >> 1, (g + 1) * hb)):
                    byte = pi[k]
                    row[2 * k] = (np.float32(byte & np.uint8(0xF)) - zf) * s
                    row[2 * k + 1] = (np.float32(byte >> np.uint8(4)) - zf) * s
            else:  # a byte may straddle two groups
                z = np.int32(zeros[i, g])
                for j in range(g * group, min(cols, (g + 1) * group)):
                    nib = np.int32((pi[j >> 1] >> np.uint8(4 * (j & 1))) & np.uint8(0xF))
                    row[j] = np.float32(nib - z) * s
        _put_row(row[:cols], i, out_kind, out)
    return out
