"""Float test data shared by the lossless codec and store tests: the kinds of values that
break compressors (constants, NaN/inf/-0.0, subnormals, incompressible bit patterns)."""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

FLOATS = ["float16", "bfloat16", "float32", "float64"]
KINDS = ["normal", "random", "constant", "special", "subnormal"]
_TINY = {"float16": 2.0**-24, "bfloat16": 2.0**-133, "float32": 2.0**-149, "float64": 2.0**-1074}


def float_values(dtype: str, kind: str, n: int) -> torch.Tensor:
    """``n`` values of ``dtype`` holding ``kind`` data, the same in every run."""
    rng = np.random.default_rng(zlib.crc32(f"{dtype}/{kind}".encode()))
    x: npt.NDArray[np.floating[Any]] = rng.standard_normal(n) * 0.02
    if kind == "constant":
        x[:] = 0.125
    elif kind == "special":
        x[rng.random(n) < 0.3] = np.nan
        x[rng.random(n) < 0.1] = np.inf
        x[rng.random(n) < 0.1] = -np.inf
        x[rng.random(n) < 0.1] = -0.0
    elif kind == "subnormal":
        x = rng.integers(-1000, 1000, n) * _TINY[dtype]
    t = torch.from_numpy(x.astype(np.float32 if dtype == "bfloat16" else dtype)).to(
        getattr(torch, dtype))
    if kind == "random":  # every bit pattern, NaN payloads included: nothing to compress
        bits = rng.integers(0, 256, t.numel() * t.element_size(), dtype=np.uint8)
        t = torch.from_numpy(bits).view(t.dtype)
    return t
