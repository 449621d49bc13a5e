"""Exact dtype conversion: every value converted unchanged, or the first one that is not.

A dataset column has one stored dtype; a batch may arrive in another. Widening that is exact
by construction (int8 into int32, float32 into float64, int16 into float32) is a plain cast.
Everything else is checked value by value, vectorised, before anything is cast: integers
against the target's range, floats for being whole and in range before they become integers,
integers and floats for surviving the round trip into a float type (NaN stays NaN), complex
numbers for a zero imaginary part. bfloat16 and the float8 family (stored as raw bits) convert
through torch.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..format.dtypes import DTypeSpec

__all__ = ["convert_exact", "exact_widening"]

Arr = np.ndarray[Any, Any]


def convert_exact(values: Arr, src: DTypeSpec, dst: DTypeSpec) -> tuple[Arr, int | None]:
    """(``values`` in ``dst``'s storage dtype, None) when every value converts exactly, else
    (``values`` unchanged, the flat position of the first value that does not)."""
    if src.name == dst.name:
        return values, None
    if src.raw_bits or dst.raw_bits:
        return _via_torch(values, src, dst)
    target = dst.storage
    if values.size == 0:
        return np.empty(values.shape, target), None
    if exact_widening(values.dtype, target):
        return values.astype(target), None
    bad = _misfits(values, target)
    if bad.any():
        return values, int(np.flatnonzero(bad.reshape(-1))[0])
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ComplexWarning: the imaginary parts are all zero
        return values.astype(target), None


def exact_widening(src: np.dtype[Any], dst: np.dtype[Any]) -> bool:
    """True when every value of ``src`` is exactly a value of ``dst`` (no check needed)."""
    if src == dst or src.kind == "b":
        return True
    if src.kind in "iu" and dst.kind in "fc":
        bits = src.itemsize * 8 - (src.kind == "i")
        comp = dst if dst.kind == "f" else np.dtype(f"f{dst.itemsize // 2}")
        return bits <= np.finfo(comp).nmant + 1
    return bool(np.can_cast(src, dst, "safe")) and not (src.kind in "iu" and dst.kind in "fc")


def _misfits(x: Arr, target: np.dtype[Any]) -> Arr:
    """A mask of the values of ``x`` that ``target`` does not hold exactly (no cast done)."""
    k, t = x.dtype.kind, target.kind
    if k == "c":
        if t == "c":
            comp = np.dtype(f"f{target.itemsize // 2}")
            return _misfits(x.real, comp) | _misfits(x.imag, comp)
        return (x.imag != 0) | _misfits(x.real, target)
    if t == "b":
        with np.errstate(invalid="ignore"):
            return ~((x == 0) | (x == 1))
    if t in "iu":
        info = np.iinfo(target)
        if k in "iu":
            src = np.iinfo(x.dtype)
            bad = np.zeros(x.shape, bool)
            if info.min > src.min:
                bad |= x < info.min
            if info.max < src.max:
                bad |= x > info.max
            return bad
        xf = x.astype(np.float64)  # exact for every float up to float64
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(xf) & (xf >= float(info.min)) & (xf < float(info.max + 1))
            return ~(ok & (xf == np.floor(xf)))
    if t == "c":
        return _misfits(x, np.dtype(f"f{target.itemsize // 2}"))
    # a float target
    with np.errstate(all="ignore"):
        y = x.astype(target)
        if k in "iu":
            return _not_int_of(y.astype(np.float64), x)
        return ~((y == x) | (np.isnan(y) & np.isnan(x)))


def _not_int_of(yf: Arr, x: Arr) -> Arr:
    """Where the float64 values ``yf`` are not exactly the integers ``x``."""
    info = np.iinfo(x.dtype)
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(yf) & (yf >= float(info.min)) & (yf < float(info.max + 1))
        back = np.where(ok, yf, 0).astype(x.dtype)
    return ~ok | (back != x)


def _via_torch(values: Arr, src: DTypeSpec, dst: DTypeSpec) -> tuple[Arr, int | None]:
    """Conversions to or from a raw-bit dtype (bfloat16, float8): torch knows the formats."""
    import torch

    from ..errors import DTypeError
    from ..weights._arrays import from_storage_array

    if src.torch is None or dst.torch is None or "complex" in src.name + dst.name:
        raise DTypeError(f"no exact conversion from {src.name} to {dst.name}")
    if src.raw_bits:  # widen to float32 first: exact for every raw-bit float format
        t = from_storage_array(np.ascontiguousarray(values), src).to(torch.float32)
        x = t.numpy()
        if not dst.raw_bits:
            out, bad = convert_exact(x, _spec("float32"), dst)
            return (values, bad) if bad is not None else (out, None)
    else:
        x = values
    try:
        y = torch.from_numpy(np.ascontiguousarray(x)).to(dst.torch)
    except (RuntimeError, TypeError) as e:
        raise DTypeError(f"no exact conversion from {src.name} to {dst.name} ({e})") from None
    yf = y.to(torch.float64).numpy()
    if x.dtype.kind in "iu":
        mask = _not_int_of(yf, x)
    elif x.dtype.kind == "b":
        mask = yf != x
    else:
        xf = x.astype(np.float64)
        mask = ~((yf == xf) | (np.isnan(yf) & np.isnan(xf)))
    if mask.any():
        return values, int(np.flatnonzero(mask.reshape(-1))[0])
    return y.view(dst.torch_storage).numpy().view(dst.storage), None


def _spec(name: str) -> DTypeSpec:
    from ..format.dtypes import dtype_spec

    return dtype_spec(name)
