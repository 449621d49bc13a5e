"""Pure-Python oracles for the exactness tests: what fits where, decided value by value with
numpy scalars and Python's exact int/float comparison (no code shared with bigstore)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def fits(v: Any, dst: np.dtype[Any] | str) -> bool:
    """Does the Python value ``v`` have an exactly equal value in ``dst``? ("bfloat16" too)"""
    if isinstance(dst, str) and dst == "bfloat16":
        if isinstance(v, complex):
            return False
        t = float(torch.tensor(float(v), dtype=torch.float64).to(torch.bfloat16))
        return t == v or (t != t and v != v)
    dst = np.dtype(dst)
    if isinstance(v, complex):
        if dst.kind != "c":
            return v.imag == 0 and fits(v.real, dst)
        comp = np.dtype(f"f{dst.itemsize // 2}")
        return fits(v.real, comp) and fits(v.imag, comp)
    if isinstance(v, float) and math.isnan(v):
        return dst.kind in "fc"
    if dst.kind == "b":
        return v in (0, 1)
    if dst.kind in "iu":
        info = np.iinfo(dst)
        return bool(math.isfinite(v) and v == int(v) and info.min <= int(v) <= info.max)
    with np.errstate(all="ignore"):
        return complex(dst.type(v)) == v if dst.kind == "c" else float(dst.type(v)) == v


def same(got: Any, want: Any) -> bool:
    """Exact equality of Python numbers, NaN equal to NaN."""
    return bool(got == want or (got != got and want != want))
