"""Group-wise int8/int4 kernels: numba when its JIT is on, the numpy twins when
``NUMBA_DISABLE_JIT=1`` (see ``_quant_jit`` for the layouts and the exact arithmetic)."""

from __future__ import annotations

import numba

JIT_ENABLED = not getattr(numba.config, "DISABLE_JIT", False)

if JIT_ENABLED:
    from ._quant_jit import (
        OUT_BF16,
        OUT_F16,
        OUT_F32,
        SCALE_BF16,
        SCALE_F16,
        dequantize_int4,
        dequantize_int8,
        f32_to_half_bits,
        half_bits_to_f32,
        quantize_int4,
        quantize_int8,
    )
else:  # exercised by a subprocess test with NUMBA_DISABLE_JIT=1
    from ._quant_numpy import (  # type: ignore[assignment]
        OUT_BF16,
        OUT_F16,
        OUT_F32,
        SCALE_BF16,
        SCALE_F16,
        dequantize_int4,
        dequantize_int8,
        f32_to_half_bits,
        half_bits_to_f32,
        quantize_int4,
        quantize_int8,
    )

__all__ = [
    "JIT_ENABLED", "OUT_BF16", "OUT_F16", "OUT_F32", "SCALE_BF16", "SCALE_F16",
    "dequantize_int4", "dequantize_int8", "f32_to_half_bits", "half_bits_to_f32",
    "quantize_int4", "quantize_int8",
]
