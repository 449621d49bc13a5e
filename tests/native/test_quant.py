"""Group-wise quantization kernels: numba == numpy twins, error bounds, packing, JIT off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bigstore_native import _quant_jit as J
from bigstore_native import _quant_numpy as N
from bigstore_native import quant
from hypothesis import given, settings
from hypothesis import strategies as st

Arr = np.ndarray[Any, Any]
EDGE_F32 = np.array([0.0, -0.0, 1.0, -1.0, 65504.0, 65520.0, 65519.99, 1e-8, 2**-24, 2**-25,
                     3 * 2**-26, 2**-14, 2**-14 * (1 - 2**-11), 6.1e-5, 1e30, -1e30,
                     np.inf, -np.inf, 3.4028235e38, 1.17549435e-38, 1e-45], np.float32)


def _patterns(n: int, seed: int) -> Arr:
    """Random float32 bit patterns (every class: zero, subnormal, normal, inf, NaN) + edges."""
    b = np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    return np.concatenate([b.view(np.float32), EDGE_F32])


@pytest.mark.parametrize("kind", [0, 1])
def test_half_conversions_match_the_twins_and_torch(kind: int) -> None:
    x = _patterns(200_000, kind)
    a = J.f32_to_half_bits(x, kind, np.empty(x.size, np.uint16))
    b = N.f32_to_half_bits(x, kind, np.empty(x.size, np.uint16))
    assert np.array_equal(a, b)
    finite = ~np.isnan(x)
    want = torch.from_numpy(x[finite]).to(torch.float16 if kind == 0 else torch.bfloat16)
    assert np.array_equal(a[finite], want.view(torch.int16).numpy().view(np.uint16))
    # half -> float32: exhaustive over every 16-bit pattern, exact
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    f = J.half_bits_to_f32(h, kind, np.empty(h.size, np.float32))
    g = N.half_bits_to_f32(h, kind, np.empty(h.size, np.float32))
    assert np.array_equal(f.view(np.uint32), g.view(np.uint32))
    ref = torch.from_numpy(h.view(np.int16)).view(torch.float16 if kind == 0 else torch.bfloat16)
    num = ~np.isnan(f)  # torch quiets signalling NaNs; numbers must agree bit for bit
    assert np.array_equal(f[num].view(np.uint32), ref.float().numpy()[num].view(np.uint32))


def _quantize(mod: Any, x: Arr, group: int, kind: int, scheme: str) -> tuple[Arr, ...]:
    rows, cols = x.shape
    ng = -(-cols // group)
    scales = np.empty((rows, ng), np.uint16)
    if scheme == "int8":
        q = np.empty((rows, cols), np.int8)
        mod.quantize_int8(x, group, kind, q, scales)
        return q, scales
    packed = np.empty((rows, (cols + 1) // 2), np.uint8)
    zeros = np.empty((rows, ng), np.uint8)
    mod.quantize_int4(x, group, kind, packed, scales, zeros)
    return packed, scales, zeros


def _dequantize(mod: Any, parts: tuple[Arr, ...], shape: tuple[int, int], group: int,
                kind: int, out_kind: int) -> Arr:
    out = np.empty(shape, np.float32 if out_kind == 0 else np.uint16)
    if len(parts) == 2:
        return mod.dequantize_int8(parts[0], parts[1], kind, group, out_kind, out)
    return mod.dequantize_int4(parts[0], parts[1], parts[2], kind, group, out_kind, out)


def _data(kind: str, rows: int, cols: int, seed: int) -> Arr:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return (rng.standard_normal((rows, cols)) * 0.02).astype(np.float32)
    if kind == "outliers":
        x = rng.standard_normal((rows, cols)).astype(np.float32)
        x[rng.random((rows, cols)) < 0.01] *= 1000
        return x
    if kind == "constant":
        return np.full((rows, cols), -0.75, np.float32)
    if kind == "zeros":
        return np.zeros((rows, cols), np.float32)
    if kind == "positive":
        return rng.random((rows, cols)).astype(np.float32) + 3
    return (rng.standard_normal((rows, cols)) * 1e-30).astype(np.float32)  # tiny: scale underflow


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 150), group=st.sampled_from([1, 3, 8, 32, 64]),
       kind=st.integers(0, 1), scheme=st.sampled_from(["int8", "int4"]),
       data=st.sampled_from(["normal", "outliers", "constant", "zeros", "positive", "tiny"]),
       seed=st.integers(0, 2**16))
def test_kernels_match_numpy_twins(rows: int, cols: int, group: int, kind: int, scheme: str,
                                   data: str, seed: int) -> None:
    x = _data(data, rows, cols, seed)
    a = _quantize(J, x, group, kind, scheme)
    b = _quantize(N, x, group, kind, scheme)
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and np.array_equal(u, v)
    for out_kind in (0, 1, 2):
        d1 = _dequantize(J, a, x.shape, group, kind, out_kind)
        d2 = _dequantize(N, a, x.shape, group, kind, out_kind)
        assert d1.tobytes() == d2.tobytes()


@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("cols,group", [(256, 64), (200, 64), (130, 64), (37, 8), (48, 3)])
def test_kernels_match_twins_on_arbitrary_stored_bits(kind: int, scheme: str, cols: int,
                                                      group: int) -> None:
    """Any stored parts, not only what the quantizer writes: scales of every class (NaN, inf,
    huge: products overflow; subnormal) in some rows and only finite ones in others, so both
    the vectorised rows and the general ones are compared with the twins, bit for bit."""
    rng = np.random.default_rng(cols * 7 + group + kind)
    rows, ng = 12, -(-cols // group)
    if kind == 1:
        bits = _patterns(rows * ng, cols).view(np.uint32) >> np.uint32(16)
    else:
        bits = np.array([quant.f32_to_half_bits(np.array([v], np.float32), 0,
                                                np.empty(1, np.uint16))[0]
                         for v in _patterns(rows * ng, cols)], np.uint64)
    scales = bits[: rows * ng].astype(np.uint16).reshape(rows, ng)
    finite_rows = rng.random(rows) < 0.5  # these rows get finite scales only
    finite = rng.integers(0x3000, 0x4800, (rows, ng)).astype(np.uint16)
    scales[finite_rows] = finite[finite_rows]
    if scheme == "int8":
        parts: tuple[Arr, ...] = (rng.integers(-128, 128, (rows, cols), dtype=np.int8), scales)
    else:
        parts = (rng.integers(0, 256, (rows, -(-cols // 2)), dtype=np.uint8), scales,
                 rng.integers(0, 16, (rows, ng), dtype=np.uint8))
    for out_kind in (0, 1, 2):
        d1 = _dequantize(J, parts, (rows, cols), group, kind, out_kind)
        d2 = _dequantize(N, parts, (rows, cols), group, kind, out_kind)
        assert d1.tobytes() == d2.tobytes(), (out_kind, np.flatnonzero(
            d1.view(np.uint8) != d2.view(np.uint8))[:5])


def _bound_holds(x: Arr, deq: Arr, scales_bits: Arr, group: int, kind: int, scheme: str) -> None:
    """|x - deq| <= s/2 + levels * |s - s_exact| in every group, s the stored scale."""
    cols = x.shape[1]
    s = N.half_bits_to_f32(scales_bits, kind, np.empty(scales_bits.shape, np.float32))
    x64 = x.astype(np.float64)
    for g in range(s.shape[1]):
        sl = slice(g * group, min(cols, (g + 1) * group))
        xs = x64[:, sl]
        if scheme == "int8":
            levels, exact = 127, np.abs(xs).max(axis=1) / 127
        else:
            levels = 15
            exact = (np.maximum(xs.max(axis=1), 0) - np.minimum(xs.min(axis=1), 0)) / 15
        st_ = s[:, g].astype(np.float64)
        bound = st_ / 2 + levels * np.abs(st_ - exact)
        # a scale flushed to zero (or subnormal) by its dtype's range bounds nothing but x itself
        bound = np.where(st_ < 2**-14, np.maximum(bound, np.abs(xs).max(axis=1) + st_), bound)
        err = np.abs(xs - deq[:, sl].astype(np.float64)).max(axis=1)
        assert np.all(err <= bound * (1 + 1e-6) + 1e-45), (g, err, bound)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize("data", ["normal", "outliers", "constant", "zeros", "positive"])
@pytest.mark.parametrize("cols,group", [(256, 64), (200, 64), (37, 8)])
def test_error_within_the_scheme_bound_for_every_group(scheme: str, kind: int, data: str,
                                                       cols: int, group: int) -> None:
    x = _data(data, 33, cols, 7)
    parts = _quantize(quant, x, group, kind, scheme)
    deq = _dequantize(quant, parts, x.shape, group, kind, 0)
    _bound_holds(x, deq, parts[1], group, kind, scheme)
    if data in ("constant", "zeros"):  # zero is exact, a constant group is representable
        assert np.allclose(deq, x, rtol=2**-7, atol=0)


def test_int4_packing_order_and_zero_points() -> None:
    # one group 0..15 * 0.1 (min 0 -> zero point 0): value 2k in the low nibble of byte k
    x = (np.arange(16, dtype=np.float32) * np.float32(0.1))[None, :]
    packed, _, zeros = _quantize(quant, x, 16, 0, "int4")
    assert zeros.tolist() == [[0]]
    assert packed.tolist() == [[(2 * k) | ((2 * k + 1) << 4) for k in range(8)]]
    # odd row: the last byte's high nibble is a zero pad
    p3, _, _ = _quantize(quant, x[:, :3], 16, 0, "int4")
    assert p3.shape == (1, 2) and p3[0, 1] >> 4 == 0
    # a negative minimum moves the zero point: -1.5..0 in 15 steps -> zero point 15
    neg = -(np.arange(16, dtype=np.float32)[::-1] * np.float32(0.1))[None, :]
    _, _, z = _quantize(quant, neg, 16, 0, "int4")
    assert z.tolist() == [[15]]


def test_int8_is_symmetric_and_saturates_at_127() -> None:
    x = np.array([[-1.0, 1.0, 0.5, -0.25]], np.float32)
    q, s = _quantize(quant, x, 4, 0, "int8")
    assert q.tolist()[0][:2] == [-127, 127]
    assert s.view(np.float16)[0, 0] == np.float16(1.0 / 127)


def test_the_jit_is_on_here_and_numpy_twins_serve_with_it_off(tmp_path: Path) -> None:
    assert quant.JIT_ENABLED
    x = _data("outliers", 5, 77, 3)
    np.save(tmp_path / "x.npy", x)
    code = (
        "import numpy as np\nfrom bigstore_native import quant\n"
        "assert not quant.JIT_ENABLED\n"
        "from bigstore.weights.quantize import quantize_tensor, dequantize_tensor\n"
        f"x = np.load({str(tmp_path / 'x.npy')!r})\n"
        "parts = {}\n"
        "for s in ('int8', 'int4'):\n"
        "    q = quantize_tensor('w', x, scheme=s, group_size=16, scale_dtype='bfloat16')\n"
        "    parts[s + '_p'] = q.packed; parts[s + '_s'] = q.scales\n"
        "    parts[s + '_d'] = dequantize_tensor('w', q, dtype='float16')\n"
        f"np.savez({str(tmp_path / 'out.npz')!r}, **parts); print('ok')"
    )
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    from bigstore.weights.quantize import dequantize_tensor, quantize_tensor

    got = np.load(tmp_path / "out.npz")
    for s in ("int8", "int4"):
        q = quantize_tensor("w", x, scheme=s, group_size=16, scale_dtype="bfloat16")
        assert np.array_equal(got[s + "_p"], q.packed)
        assert np.array_equal(got[s + "_s"], q.scales)
        assert got[s + "_d"].tobytes() == dequantize_tensor("w", q, dtype="float16").tobytes()
