"""GPTQ: group-wise int8/int4 weights chosen with calibration data, in the layout RTN writes.

Round-to-nearest (:func:`~bigstore.weights.quantize.quantize_tensor`) gives each weight its
group's nearest level on its own. GPTQ (Frantar et al., 2022) quantizes a weight matrix one
input feature at a time and moves the weights not yet quantized to cancel the error already
made, weighted by ``H = E[x xᵀ]``, the second moment of the layer's inputs on calibration data:
it minimises the layer's output error ``‖(W - Ŵ) x‖²`` rather than the weights' ``‖W - Ŵ‖²``.
On all-MiniLM-L6-v2 that takes int4 group 64 from cosine 0.965 to 0.988 (NOTES.md).

What it writes is exactly RTN's layout, scales and zero points: each group's grid is computed
by RTN's own kernels from the group's values at the moment the group starts (after the updates
of the groups before it, as the reference implementation does), so readers, kernels and the
format do not change. With ``H = I`` nothing is moved and the bits equal RTN's (a test checks).

Orientation: ``input_axis=-1`` for ``nn.Linear`` weights ``(out, in)``: groups run along the
input features, so a group starts every ``group_size`` columns. ``input_axis=0`` for GPT-2's
``Conv1D`` weights ``(in, out)``: each input feature is a whole stored row, so its groups are
all fixed when its row is quantized.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from bigstore_native import quant

from ..errors import QuantizeError, ShapeError
from .quantize import QuantizedTensor, check_scale_bits, finish, prepare

__all__ = ["DAMP", "gptq_tensor"]

DAMP = 0.01  # fraction of mean(diag H) added to the diagonal (the reference default)
_BLOCK = 128  # columns per lazy batch update (a multiple of the group size when smaller)


def _inverse_factor(name: str, h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1`` (float32)."""
    h = h.clone()
    dead = torch.diagonal(h) <= 0
    h[dead, dead] = 1.0  # inputs that were always 0: plain rounding, no error spread onto them
    h += damp * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    try:
        lower = torch.linalg.cholesky(h)
        return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True).float()
    except torch.linalg.LinAlgError:
        raise QuantizeError(
            f"{name}: the calibration Hessian is not positive definite with damp={damp}; "
            "raise damp"
        ) from None


def _grid(name: str, blk: torch.Tensor, scheme: str, scale_dtype: str
          ) -> tuple[np.ndarray[Any, Any], torch.Tensor, torch.Tensor]:
    """One group per row of ``blk`` -> (stored scale bits, their float32 values, zero points):
    RTN's own kernels pick the grid (float32, RNE into the scale dtype, the zero point from
    the *stored* scale), so a GPTQ group has exactly the grid RTN gives the same values."""
    x = np.ascontiguousarray(blk.numpy(), dtype=np.float32)
    n, k = x.shape
    kind = quant.SCALE_F16 if scale_dtype == "float16" else quant.SCALE_BF16
    bits = np.empty((n, 1), np.uint16)
    zeros = np.zeros((n, 1), np.uint8)
    if scheme == "int8":
        quant.quantize_int8(x, k, kind, np.empty((n, k), np.int8), bits)
    else:
        quant.quantize_int4(x, k, kind, np.empty((n, (k + 1) // 2), np.uint8), bits, zeros)
    check_scale_bits(name, bits, scale_dtype)
    s32 = np.empty(n, np.float32)
    quant.half_bits_to_f32(bits[:, 0].copy(), kind, s32)
    return bits[:, 0], torch.from_numpy(s32), torch.from_numpy(zeros[:, 0].astype(np.float32))


def _levels(w: torch.Tensor, s32: torch.Tensor, z: torch.Tensor, scheme: str
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Values -> (integer levels, their dequantized float32 values), as the kernels round."""
    safe = torch.where(s32 != 0, s32, 1.0)
    if scheme == "int8":
        v = torch.clamp(torch.round(w / safe), -127, 127)
    else:
        v = torch.clamp(torch.round(w / safe) + z, 0, 15)
    v = torch.where(s32 != 0, v, 0.0)
    return v, (v - z) * s32


def gptq_tensor(name: str, x: Any, hessian: torch.Tensor, *, input_axis: int = -1,
                scheme: str = "int4", group_size: int = 64, scale_dtype: str = "float16",
                damp: float = DAMP, dtype: str | None = None) -> QuantizedTensor:
    """One weight matrix and its inputs' second moment ``hessian`` ``(in, in)`` -> its stored
    parts (as :func:`~bigstore.weights.quantize.quantize_tensor` returns them)."""
    x2, spec = prepare(name, x, scheme=scheme, group_size=group_size, scale_dtype=scale_dtype,
                       dtype=dtype)
    if len(spec.shape) != 2:
        raise ShapeError(f"{name}: GPTQ quantizes matrices, got shape {spec.shape}")
    if input_axis not in (-1, 0, 1):
        raise ShapeError(f"{name}: input_axis must be 0 or -1, got {input_axis}")
    by_cols = input_axis != 0
    w_t = torch.from_numpy(x2.copy())
    if not by_cols:
        w_t = w_t.T.contiguous()  # (outputs, inputs): GPTQ walks the input features
    n_out, n_in = w_t.shape
    h = torch.as_tensor(hessian).to(torch.float64)
    if tuple(h.shape) != (n_in, n_in):
        raise ShapeError(
            f"{name}: calibration Hessian is {tuple(h.shape)}, expected ({n_in}, {n_in}) "
            f"(input features along axis {input_axis} of {spec.shape})"
        )
    if not torch.isfinite(h).all():
        raise QuantizeError(f"{name}: the calibration Hessian has non-finite values")
    hinv = _inverse_factor(name, h, damp)
    g = group_size
    rows, ng = spec.scales_shape
    scales = np.empty((rows, ng), np.uint16)  # bits
    zeros = np.zeros((rows, ng), np.uint8)
    q = torch.empty((n_out, n_in))
    block = g * max(1, _BLOCK // g)  # whole groups per block: a group's grid sees its updates
    s_col = z_col = torch.empty(0)
    for b0 in range(0, n_in, block):
        b1 = min(b0 + block, n_in)
        w1 = w_t[:, b0:b1].clone()
        err = torch.zeros_like(w1)
        h1 = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            c = b0 + i
            if by_cols:
                if c % g == 0:
                    stored, s_col, z_col = _grid(name, w1[:, i:i + g], scheme, scale_dtype)
                    scales[:, c // g], zeros[:, c // g] = stored, z_col.numpy()
            else:  # the stored row c: its groups run along the outputs (zero padding: the
                # range includes 0, so it changes no group's grid)
                blk = F.pad(w1[:, i], (0, ng * g - n_out)).view(ng, g)
                stored, s32, z = _grid(name, blk, scheme, scale_dtype)
                scales[c], zeros[c] = stored, z.numpy()
                s_col = s32.repeat_interleave(g)[:n_out]
                z_col = z.repeat_interleave(g)[:n_out]
            v, deq = _levels(w1[:, i], s_col, z_col, scheme)
            q[:, c] = v
            e = (w1[:, i] - deq) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err[:, i] = e
        w_t[:, b1:] -= err @ hinv[b0:b1, b1:]
    levels = q if by_cols else q.T
    if scheme == "int8":
        return finish(name, spec, levels.to(torch.int8).numpy(), scales, None)
    u = levels.to(torch.uint8).numpy()
    if u.shape[1] % 2:
        u = np.pad(u, ((0, 0), (0, 1)))  # an odd row ends in a zero nibble
    packed = np.ascontiguousarray(u[:, 0::2] | (u[:, 1::2] << 4))
    return finish(name, spec, packed, scales, zeros)
