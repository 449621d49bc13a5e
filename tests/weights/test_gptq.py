"""GPTQ (calibrated int8/int4): RTN's layout and bits when nothing is correlated, a smaller
output error than RTN when inputs are, calibration from real forward passes, and the whole path
through a store and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import bigstore
from bigstore.config import QuantizeConfig
from bigstore.errors import BigstoreError, NotAStoreError, QuantizeError, ShapeError
from bigstore.weights.calibrate import Calibration, calibrate
from bigstore.weights.gptq import gptq_tensor
from bigstore.weights.quantize import dequantize_tensor, quantize_tensor

from .._models import tiny_gpt2


def _parts(q: object) -> list[bytes]:
    return [np.asarray(p).tobytes() for p in (q.packed, q.scales, q.zeros)  # type: ignore[attr-defined]
            if p is not None]


@pytest.mark.parametrize("scheme", ["int4", "int8"])
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize(("shape", "group", "axis"), [
    ((96, 200), 64, -1), ((200, 96), 32, 0), ((33, 65), 16, -1), ((65, 33), 64, 0),
])
def test_identity_hessian_gives_rtn_bits(scheme: str, scale_dtype: str,
                                         shape: tuple[int, int], group: int, axis: int) -> None:
    # nothing correlated: no error is spread, so every stored bit is round-to-nearest's
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * rng.choice([1e-6, 1e-3, 1.0], size=shape)).astype(np.float32)
    x[0, :20] = 0  # a constant (zero) group
    x[1, :] = 0.25  # a constant row
    n_in = shape[1] if axis == -1 else shape[0]
    got = gptq_tensor("w", x, torch.eye(n_in, dtype=torch.float64), input_axis=axis,
                      scheme=scheme, group_size=group, scale_dtype=scale_dtype)
    want = quantize_tensor("w", x, scheme=scheme, group_size=group, scale_dtype=scale_dtype)
    assert got.spec == want.spec
    assert _parts(got) == _parts(want)


def _correlated(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, dim // 4, generator=g)
    return z @ torch.randn(dim // 4, dim, generator=g) + 0.05 * torch.randn(n, dim, generator=g)


@pytest.mark.parametrize("scheme", ["int4", "int8"])
@pytest.mark.parametrize("axis", [-1, 0])
def test_gptq_lowers_the_output_error_on_correlated_inputs(scheme: str, axis: int) -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(48, 256, generator=g) * 0.02  # (out, in)
    x = _correlated(2048, 256, seed=2)
    h = (x.T @ x / x.shape[0]).double()
    stored = w if axis == -1 else w.T.contiguous()  # Conv1D keeps (in, out)

    def out_err(q: object) -> float:
        deq = torch.from_numpy(dequantize_tensor("w", q, dtype="float32"))  # type: ignore[arg-type]
        d = deq if axis == -1 else deq.T
        return float(((x @ (w - d).T) ** 2).mean())

    rtn = out_err(quantize_tensor("w", stored.numpy(), scheme=scheme, group_size=64))
    gptq = out_err(gptq_tensor("w", stored.numpy(), h, input_axis=axis, scheme=scheme,
                               group_size=64))
    assert gptq < 0.5 * rtn, (gptq, rtn)


def test_gptq_refuses_bad_hessians() -> None:
    w = np.ones((8, 32), np.float32)
    with pytest.raises(ShapeError, match=r"layer\.weight: calibration Hessian is \(16, 16\)"):
        gptq_tensor("layer.weight", w, torch.eye(16), group_size=16)
    bad = torch.eye(32)
    bad[0, 0] = float("nan")
    with pytest.raises(QuantizeError, match="non-finite"):
        gptq_tensor("layer.weight", w, bad, group_size=16)
    neg = -torch.ones(32, 32) - torch.eye(32)  # positive diagonal mean, not positive definite
    neg.fill_diagonal_(1.0)
    with pytest.raises(QuantizeError, match="not positive definite"):
        gptq_tensor("layer.weight", w, neg, group_size=16, damp=0.0)
    with pytest.raises(ShapeError, match="matrices"):
        gptq_tensor("v", np.ones((2, 4, 32), np.float32), torch.eye(32), group_size=16)


class _Masked(nn.Module):
    """Takes keyword arguments like a transformers model, padding marked by attention_mask."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(8, 6)
        self.outer = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.outer(torch.relu(self.inner(x)))


def test_calibrate_collects_the_second_moment_of_real_rows() -> None:
    torch.manual_seed(0)
    model = _Masked().eval()
    xs = [torch.randn(3, 5, 8) for _ in range(2)]
    masks = [torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]),
             torch.ones(3, 5, dtype=torch.long)]
    cal = calibrate(model, [{"x": x, "attention_mask": m} for x, m in zip(xs, masks, strict=True)])
    rows = torch.cat([x[m.bool()] for x, m in zip(xs, masks, strict=True)]).double()
    assert cal.samples == {"inner.weight": 24, "outer.weight": 24}
    torch.testing.assert_close(cal.hessians["inner.weight"].double(), rows.T @ rows / 24,
                               rtol=1e-5, atol=1e-6)
    hidden = torch.relu(model.inner(rows.float())).double()
    torch.testing.assert_close(cal.hessians["outer.weight"].double(), hidden.T @ hidden / 24,
                               rtol=1e-5, atol=1e-6)
    assert cal.input_axis == {"inner.weight": -1, "outer.weight": -1}
    assert set(calibrate(model, [(xs[0], masks[0])], names=["outer.weight"]).hessians) == {
        "outer.weight"}
    with pytest.raises(BigstoreError, match="not linear layers"):
        calibrate(model, [(xs[0], masks[0])], names=["nope.weight"])
    with pytest.raises(BigstoreError, match="no batch"):
        calibrate(model, [])


def _gpt2() -> tuple[nn.Module, list[torch.Tensor]]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(tiny_gpt2(width=64, heads=2)).eval()
    g = torch.Generator().manual_seed(1)
    return model, [torch.randint(0, 97, (4, 16), generator=g) for _ in range(3)]


def test_quantize_with_calibration_through_a_store(tmp_path: Path) -> None:
    model, batches = _gpt2()
    cal = calibrate(model, batches)
    # GPT-2's attention and MLP are Conv1D (in, out); its head is an nn.Linear
    assert cal.input_axis["transformer.h.0.attn.c_attn.weight"] == 0
    assert cal.input_axis["lm_head.weight"] == -1
    sd = bigstore.unique_state_dict(model)
    cfg = QuantizeConfig(scheme="int4", group_size=16, min_dim=16)
    summary = bigstore.quantize(sd, tmp_path / "q", scheme="int4", group_size=16, min_dim=16,
                                calibration=cal)
    assert summary["quantized"] == summary["calibrated"] == 3 * 4  # c_attn, c_proj, c_fc, c_proj
    got = bigstore.load(tmp_path / "q")
    for name, t in sd.items():
        if name.endswith((".c_attn.weight", ".c_proj.weight", ".c_fc.weight")):
            want = gptq_tensor(name, t, cal.hessians[name], input_axis=0, scheme=cfg.scheme,
                               group_size=cfg.group_size)
            assert torch.equal(got[name], torch.from_numpy(dequantize_tensor(name, want)))
            rtn = quantize_tensor(name, t, scheme="int4", group_size=16)
            assert not torch.equal(got[name], torch.from_numpy(dequantize_tensor(name, rtn)))
        else:
            assert torch.equal(got[name], t), name
    # the calibrated model is closer to the float model than the rounded one, on held-out input
    held_out = torch.randint(0, 97, (4, 16), generator=torch.Generator().manual_seed(9))
    bigstore.quantize(sd, tmp_path / "rtn", scheme="int4", group_size=16, min_dim=16)

    def logits_err(url: Path) -> float:
        m = _gpt2()[0]
        m.load_state_dict(bigstore.load(url), strict=False)
        with torch.no_grad():
            return float(((m(held_out).logits - model(held_out).logits) ** 2).mean())

    assert logits_err(tmp_path / "q") < logits_err(tmp_path / "rtn")


def test_calibration_store_round_trip_and_misuse(tmp_path: Path) -> None:
    model, batches = _gpt2()
    cal = calibrate(model, batches[:1], damp=0.05)
    cal.save(tmp_path / "cal")
    back = Calibration.open(tmp_path / "cal")
    assert back.damp == 0.05 and back.input_axis == cal.input_axis
    assert back.samples == cal.samples == dict.fromkeys(cal.hessians, 64)
    assert all(torch.equal(back.hessians[n], h) for n, h in cal.hessians.items())

    bigstore.save({"a": torch.ones(2)}, tmp_path / "plain")
    with pytest.raises(NotAStoreError, match="not a calibration"):
        Calibration.open(tmp_path / "plain")
    sd = bigstore.unique_state_dict(model)
    with pytest.raises(BigstoreError, match="set quantize"):
        bigstore.save(sd, tmp_path / "x", calibration=cal)
    # names from another model: refused, nothing written
    other = Calibration({f"other.{n}": h for n, h in cal.hessians.items()},
                        {f"other.{n}": a for n, a in cal.input_axis.items()})
    with pytest.raises(QuantizeError, match="made on this model"):
        bigstore.quantize(sd, tmp_path / "x", scheme="int4", group_size=16, min_dim=16,
                          calibration=other)
    assert not (tmp_path / "x").exists()
    # a Hessian of the wrong size names the tensor; the previous store stays
    bigstore.save({"a": torch.ones(2)}, tmp_path / "x")
    wrong = Calibration({"transformer.h.0.mlp.c_fc.weight": torch.eye(3)},
                        {"transformer.h.0.mlp.c_fc.weight": 0})
    with pytest.raises(ShapeError, match=r"transformer\.h\.0\.mlp\.c_fc\.weight"):
        bigstore.quantize(sd, tmp_path / "x", scheme="int4", group_size=16, min_dim=16,
                          calibration=wrong, overwrite=True)
    assert list(bigstore.load(tmp_path / "x")) == ["a"]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bigstore", *args], capture_output=True,
                          text=True, timeout=300)


def test_cli_convert_with_calibration(tmp_path: Path) -> None:
    model, batches = _gpt2()
    calibrate(model, batches).save(tmp_path / "cal")
    # the default policy needs dimensions >= 128: make the MLP that wide
    w = {"mlp.weight": torch.randn(256, 128) * 0.02, "mlp.bias": torch.zeros(256)}
    bigstore.save(w, tmp_path / "src")
    cal = Calibration({"mlp.weight": _correlated(512, 128, 3).T.cov().float() + torch.eye(128)},
                      {"mlp.weight": -1})
    cal.save(tmp_path / "cal2")
    r = _cli("convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--quantize", "int4",
             "--calibration", str(tmp_path / "cal2"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["quantized"] == out["calibrated"] == 1
    want = gptq_tensor("mlp.weight", w["mlp.weight"], cal.hessians["mlp.weight"], group_size=64)
    assert torch.equal(bigstore.load(tmp_path / "dst")["mlp.weight"],
                       torch.from_numpy(dequantize_tensor("mlp.weight", want)))
    r = _cli("convert", str(tmp_path / "src"), str(tmp_path / "d2"), "--calibration",
             str(tmp_path / "cal2"))
    assert r.returncode == 2 and "--calibration needs --quantize" in r.stderr
    assert not (tmp_path / "d2").exists()
    r = _cli("convert", str(tmp_path / "src"), str(tmp_path / "d3"), "--quantize", "int4",
             "--calibration", str(tmp_path / "cal"))  # another model's calibration
    assert r.returncode == 2 and "made on this model" in r.stderr
