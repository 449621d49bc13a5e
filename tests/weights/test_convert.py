"""Conversion from the checkpoint formats people have, and back to safetensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import bigstore
from bigstore.errors import StoreNotFoundError, UnsupportedSourceError


def state_dict() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "model.embed_tokens.weight": torch.randn(50, 16, generator=g).to(torch.bfloat16),
        "model.layers.0.self_attn.q_proj.weight": torch.randn(16, 16, generator=g),
        "model.layers.0.mlp.fp8": torch.randn(8, 8, generator=g).to(torch.float8_e4m3fn),
        "model.layers.1.input_layernorm.weight": torch.ones(16, dtype=torch.float16),
        "model.counter": torch.tensor(7, dtype=torch.int64),
        "model.mask": torch.tensor([True, False, True]),
    }


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        x, y = a[k].reshape(-1), b[k].reshape(-1)
        if x.dtype.itemsize == 1 and x.dtype.is_floating_point:
            x, y = x.view(torch.uint8), y.view(torch.uint8)
        assert torch.equal(x, y), k


def test_safetensors_roundtrip(tmp_path: Path) -> None:
    sd = state_dict()
    save_file(sd, tmp_path / "m.safetensors")
    summary = bigstore.convert(tmp_path / "m.safetensors", tmp_path / "store")
    assert summary["tensors"] == len(sd)
    assert_same(bigstore.load(tmp_path / "store"), sd)  # names keep their dots
    bigstore.convert(tmp_path / "store", tmp_path / "back.safetensors")
    assert_same(load_file(tmp_path / "back.safetensors"), sd)  # safetensors reads our export


def test_sharded_hf_directory(tmp_path: Path) -> None:
    sd = state_dict()
    names = sorted(sd)
    d = tmp_path / "hf"
    d.mkdir()
    shards = {"model-00001-of-00002.safetensors": names[:3],
              "model-00002-of-00002.safetensors": names[3:]}
    weight_map = {}
    for fname, keys in shards.items():
        save_file({k: sd[k] for k in keys}, d / fname)
        weight_map.update(dict.fromkeys(keys, fname))
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    bigstore.convert(d, tmp_path / "store", codec="zstd")
    assert_same(bigstore.load(tmp_path / "store"), sd)


def test_torch_state_dict(tmp_path: Path) -> None:
    sd = state_dict()
    torch.save(sd, tmp_path / "m.pt")
    bigstore.convert(tmp_path / "m.pt", tmp_path / "store")
    assert_same(bigstore.load(tmp_path / "store"), sd)
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "ckpt.bin")
    bigstore.convert(tmp_path / "ckpt.bin", tmp_path / "store2")
    assert_same(bigstore.load(tmp_path / "store2"), sd)


class Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return (os.system, ("touch /tmp/bigstore-pwned-by-pickle",))


@pytest.mark.parametrize("writer", ["torch.save", "legacy-pickle"])
def test_torch_file_with_arbitrary_objects_is_never_unpickled(tmp_path: Path, writer: str) -> None:
    marker = Path("/tmp/bigstore-pwned-by-pickle")
    marker.unlink(missing_ok=True)
    if writer == "torch.save":
        torch.save({"w": Evil()}, tmp_path / "evil.pt")
    else:
        with open(tmp_path / "evil.pt", "wb") as f:
            pickle.dump({"w": Evil()}, f)
    with pytest.raises(UnsupportedSourceError, match="never unpickles"):
        bigstore.convert(tmp_path / "evil.pt", tmp_path / "store")
    assert not marker.exists()
    assert not (tmp_path / "store").exists()


def test_legacy_torch_file(tmp_path: Path) -> None:
    # (torch's own legacy loader cannot read bf16/fp8 back, so plain dtypes here)
    sd = {"w": torch.randn(4, 4), "n": torch.arange(3)}
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    bigstore.convert(tmp_path / "old.pt", tmp_path / "store")
    assert_same(bigstore.load(tmp_path / "store"), sd)


def test_npz(tmp_path: Path) -> None:
    arrays = {"a.b": np.arange(12, dtype=np.int16).reshape(3, 4), "c": np.float32(1.5)}
    np.savez(tmp_path / "x.npz", **arrays)
    bigstore.convert(tmp_path / "x.npz", tmp_path / "store")
    got = bigstore.load_numpy(tmp_path / "store")
    assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in arrays.items())


def test_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError):
        bigstore.convert(tmp_path / "missing.safetensors", tmp_path / "s")
    (tmp_path / "w.onnx").write_bytes(b"x")
    with pytest.raises(UnsupportedSourceError, match="onnx"):
        bigstore.convert(tmp_path / "w.onnx", tmp_path / "s")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(UnsupportedSourceError, match="safetensors"):
        bigstore.convert(tmp_path / "bad.safetensors", tmp_path / "s")
    assert not (tmp_path / "s").exists()
