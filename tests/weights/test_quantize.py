"""Quantization policy and the tensor <-> parts API; torch dequantization == numba, bit for bit."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from bigstore.config import QuantizeConfig
from bigstore.errors import BigstoreError, DTypeError, QuantizeError, ShapeError
from bigstore.weights.quantize import (
    QuantizedTensor,
    QuantSpec,
    dequantize_tensor,
    dequantize_torch,
    quantize_tensor,
    should_quantize,
    why,
)

CFG = QuantizeConfig()
KEPT = [  # (name, shape): kept in original precision by default
    ("model.embed_tokens.weight", (32000, 4096)),
    ("transformer.wte.weight", (50257, 768)),
    ("transformer.wpe.weight", (1024, 768)),
    ("tok_embeddings.weight", (32000, 4096)),
    ("embeddings.word_embeddings.weight", (30522, 384)),
    ("model.layers.0.input_layernorm.weight", (4096,)),
    ("model.norm.weight", (4096,)),
    ("transformer.h.0.ln_1.weight", (768,)),
    ("transformer.ln_f.weight", (768,)),
    ("encoder.layer.0.output.LayerNorm.weight", (384,)),
    ("model.layers.0.self_attn.q_proj.bias", (4096,)),
    ("lm_head.weight", (32000, 4096)),
    ("output.weight", (32000, 4096)),
    ("classifier.weight", (1000, 2048)),
    ("model.layers.0.mlp.gate_proj.weight", (64, 4096)),  # a dimension below min_dim
    ("conv1.weight", (64, 3, 7, 7)),  # not a matrix
    ("model.layers.0.self_attn.rotary_emb.inv_freq", (64,)),
]
QUANTIZED = [
    ("model.layers.0.self_attn.q_proj.weight", (4096, 4096)),
    ("model.layers.0.mlp.down_proj.weight", (4096, 11008)),
    ("transformer.h.0.attn.c_attn.weight", (768, 2304)),
    ("encoder.layer.0.attention.self.query.weight", (384, 384)),
    ("encoder.layer.0.output.dense.weight", (384, 1536)),
]


@pytest.mark.parametrize("name,shape", KEPT)
def test_policy_keeps_embeddings_norms_biases_heads(name: str, shape: tuple[int, ...]) -> None:
    ok, reason = why(name, shape, "bfloat16", CFG)
    assert not ok, reason


@pytest.mark.parametrize("name,shape", QUANTIZED)
def test_policy_quantizes_linear_weights(name: str, shape: tuple[int, ...]) -> None:
    assert should_quantize(name, shape, "float32", CFG)
    assert not should_quantize(name, shape, "int8", CFG)  # floats only
    assert not should_quantize(name, shape, "float8_e4m3fn", CFG)


def test_policy_overrides_by_glob_and_regex_exclude_wins() -> None:
    cfg = QuantizeConfig(include=("lm_head.weight", "re:embed_tokens"),
                         exclude=("*.layers.0.*", "re:down_proj"))
    assert should_quantize("lm_head.weight", (32000, 4096), "float16", cfg)
    assert should_quantize("model.embed_tokens.weight", (32000, 4096), "float16", cfg)
    assert not should_quantize("model.layers.0.self_attn.q_proj.weight", (4096, 4096),
                               "float16", cfg)
    assert not should_quantize("model.layers.3.mlp.down_proj.weight", (4096, 11008),
                               "float16", cfg)
    assert should_quantize("model.layers.3.mlp.up_proj.weight", (11008, 4096), "float16", cfg)
    ok, reason = why("model.layers.0.mlp.up_proj.weight", (11008, 4096), "float16", cfg)
    assert not ok and "*.layers.0.*" in reason
    assert not should_quantize("lm_head.weight", (), "float16", cfg)  # scalars never


@pytest.mark.parametrize("bad", [{"scheme": "int3"}, {"group_size": 0},
                                 {"scale_dtype": "float32"}, {"include": ("re:(",)}])
def test_config_is_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(BigstoreError):
        QuantizeConfig(**bad)


@pytest.mark.parametrize("scheme,bits", [("int8", 8.25), ("int4", 4.375)])
def test_bits_per_weight(scheme: str, bits: float) -> None:
    x = np.random.default_rng(0).standard_normal((256, 1024)).astype(np.float32)
    q = quantize_tensor("w", x, scheme=scheme)
    assert q.spec.bits_per_weight == bits and q.nbytes == q.spec.nbytes
    assert q.spec.bits_per_weight <= 4.5 or scheme == "int8"


def _inputs(dtype: str, shape: tuple[int, ...]) -> tuple[Any, np.ndarray[Any, Any]]:
    """A tensor in ``dtype`` (torch) and its exact float32 values."""
    t = (torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 0.05)
    t = t.to(getattr(torch, dtype))
    return t, t.float().numpy()


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("scale_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape,group", [((48, 128), 64), ((7, 99), 32), ((3, 5, 33), 64)])
def test_torch_dequantize_equals_numba_bit_for_bit(scheme: str, scale_dtype: str,
                                                   shape: tuple[int, ...], group: int) -> None:
    t, _ = _inputs("bfloat16", shape)
    q = quantize_tensor("w", t, scheme=scheme, group_size=group, scale_dtype=scale_dtype)
    assert q.spec.dtype == "bfloat16" and q.spec.shape == shape
    scales = torch.from_numpy(q.scales.view(np.int16))  # bits, as read from the store
    zeros = None if q.zeros is None else torch.from_numpy(q.zeros)
    for name, tdt in (("float32", torch.float32), ("float16", torch.float16),
                      ("bfloat16", torch.bfloat16)):
        ref = dequantize_tensor("w", q, dtype=name)
        got = dequantize_torch(torch.from_numpy(q.packed), scales, zeros, q.spec, tdt)
        assert got.shape == shape and got.dtype == tdt
        bits = got.view(torch.int16 if tdt != torch.float32 else torch.int32).numpy()
        assert bits.tobytes() == ref.tobytes(), name


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_round_trip_from_every_input_dtype(scheme: str) -> None:
    for dtype in ("float32", "float16", "bfloat16", "float64"):
        t, x32 = _inputs(dtype, (16, 130))
        inputs: list[tuple[Any, str | None]] = [(t, None)]
        if dtype == "bfloat16":
            inputs.append((t.view(torch.int16).numpy().view(np.uint16), "bfloat16"))
        else:
            inputs.append((t.numpy(), None))
        for x, given in inputs:
            q = quantize_tensor("w", x, scheme=scheme, dtype=given)
            assert q.spec.dtype == dtype
            d = dequantize_tensor("w", q, dtype="float32")
            s = q.scales.view(np.float16).astype(np.float32)
            per = np.repeat(s, 64, axis=1)[:, :130]
            assert np.all(np.abs(d - x32) <= per * 0.51 + 1e-12)
        out = dequantize_tensor("w", q)  # default: the original dtype (float64 -> float32)
        assert out.dtype == {"float32": np.float32, "float16": np.float16,
                             "bfloat16": np.uint16, "float64": np.float32}[dtype]


def test_dequantize_into_the_callers_buffer() -> None:
    q = quantize_tensor("w", np.ones((4, 64), np.float32), scheme="int4")
    buf = np.empty((4, 64), np.float16)
    assert dequantize_tensor("w", q, dtype="float16", out=buf) is buf
    assert np.all(buf == 1)
    with pytest.raises(ShapeError, match="w"):
        dequantize_tensor("w", q, dtype="float16", out=np.empty((4, 64), np.float32))


def test_errors_name_the_tensor() -> None:
    x = np.ones((4, 64), np.float32)
    x[1, 3] = np.nan
    with pytest.raises(QuantizeError, match=r"layers\.3\.w"):
        quantize_tensor("layers.3.w", x)
    with pytest.raises(DTypeError, match="ids"):
        quantize_tensor("ids", np.ones((4, 64), np.int64))
    with pytest.raises(QuantizeError, match=r"big\.w"):  # group max over float16's range
        quantize_tensor("big.w", np.full((1, 64), 1e10, np.float32))
    q = quantize_tensor("big.w", np.full((1, 64), 1e10, np.float32), scale_dtype="bfloat16")
    assert np.allclose(dequantize_tensor("big.w", q), 1e10, rtol=1e-2)
    with pytest.raises(ShapeError, match="s"):
        quantize_tensor("s", np.float32(1.0))
    bad = QuantizedTensor(q.packed[:, :3], q.scales, q.zeros, q.spec)
    with pytest.raises(ShapeError, match=r"big\.w"):
        dequantize_tensor("big.w", bad)


def test_spec_is_json_and_the_parts_are_plain_zarr_arrays(tmp_path: Path) -> None:
    t, _ = _inputs("float16", (40, 96))
    q = quantize_tensor("layers.0.w", t, scheme="int4", scale_dtype="bfloat16")
    doc = json.loads(json.dumps(q.spec.to_json()))
    assert QuantSpec.from_json(doc, "layers.0.w") == q.spec
    with pytest.raises(QuantizeError, match=r"layers\.0\.w"):
        QuantSpec.from_json({"scheme": "int4"}, "layers.0.w")
    # any Zarr reader gets the raw parts back; the description travels in the attributes
    parts = {"packed": q.packed, "scales": q.scales, "zeros": q.zeros}
    for part, arr in parts.items():
        assert arr is not None
        z = zarr.create_array(str(tmp_path / part), shape=arr.shape, dtype=arr.dtype,
                              chunks=(16, arr.shape[1]), attributes={"quant": doc})
        z[...] = arr
    back = {p: zarr.open_array(str(tmp_path / p), mode="r") for p in parts}
    quant = back["packed"].attrs["quant"]
    assert isinstance(quant, Mapping)
    spec = QuantSpec.from_json(dict(quant), "layers.0.w")
    q2 = QuantizedTensor(np.asarray(back["packed"][...]), np.asarray(back["scales"][...]),
                         np.asarray(back["zeros"][...]), spec)
    assert dequantize_tensor("w", q2).tobytes() == dequantize_tensor("w", q).tobytes()
