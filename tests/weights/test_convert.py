"""Conversion from the checkpoint formats people have, and back to safetensors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import bigstore
from bigstore.errors import BigstoreError, DTypeError, StoreNotFoundError, UnsupportedSourceError


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
        # raw bits: NaN, -0.0 and every float8 value compare exactly
        x = a[k].reshape(-1).contiguous().view(torch.uint8)
        y = b[k].reshape(-1).contiguous().view(torch.uint8)
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
    arrays: dict[str, Any] = {
        "a.b": np.arange(12, dtype=np.int16).reshape(3, 4), "c": np.float32(1.5),
    }
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


# -- destinations: the format the suffix names, or a clear refusal -------------------------------
def all_dtypes() -> dict[str, torch.Tensor]:
    """Every dtype each format can hold, with awkward values (NaN, -0.0, extremes)."""
    g = torch.Generator().manual_seed(2)
    out = {f"f.{d}": (torch.randn(5, 3, generator=g) * 1e3).to(d) for d in
           (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
    out["f.special"] = torch.tensor([float("nan"), -0.0, float("inf"), 1e-45, 3.4e38])
    for d in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
        info = torch.iinfo(d)
        out[f"i.{d}"] = torch.tensor([info.min, -1 if info.min else 0, info.max], dtype=d)
    out["b"] = torch.tensor([True, False])
    out["fp8"] = torch.randn(4, generator=g).to(torch.float8_e5m2)
    out["c64"] = torch.randn(3, dtype=torch.complex64, generator=g)
    out["scalar"] = torch.tensor(2**40 + 5, dtype=torch.int64)
    return out


NUMPY_OK = [k for k in all_dtypes() if k not in ("f.torch.bfloat16", "fp8")]


@pytest.mark.parametrize("dst", ["out.pt", "out.pth", "out.bin", "out.safetensors", "out.npz"])
def test_store_to_file_formats(tmp_path: Path, dst: str) -> None:
    sd = all_dtypes()
    if dst.endswith(".safetensors"):
        sd.pop("c64")  # safetensors has no complex64 in every version
    if dst.endswith(".npz"):
        sd = {k: sd[k] for k in NUMPY_OK}
    bigstore.save(sd, tmp_path / "store")
    summary = bigstore.convert(tmp_path / "store", tmp_path / dst)
    out = tmp_path / dst
    assert out.is_file() and summary["tensors"] == len(sd)
    if dst.endswith(".npz"):
        with np.load(out, allow_pickle=False) as z:
            back = {k: torch.from_numpy(z[k]) for k in z.files}
    elif dst.endswith(".safetensors"):
        back = load_file(out)
    else:
        back = torch.load(out, weights_only=True)
    assert_same(back, sd)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


@pytest.mark.parametrize("src", ["in.safetensors", "in.pt", "in.npz"])
@pytest.mark.parametrize("dst", ["out.pt", "out.npz", "out.safetensors", "store"])
def test_every_path_keeps_dtypes_exactly(tmp_path: Path, src: str, dst: str) -> None:
    sd = all_dtypes()
    sd.pop("c64")
    if src.endswith(".npz") or dst.endswith(".npz"):
        sd = {k: sd[k] for k in NUMPY_OK if k in sd}
    if src.endswith(".safetensors"):
        save_file(sd, tmp_path / src)
    elif src.endswith(".pt"):
        torch.save(sd, tmp_path / src)
    else:
        npz: dict[str, Any] = {k: v.numpy() for k, v in sd.items()}
        np.savez(tmp_path / src, **npz)
    bigstore.convert(tmp_path / src, tmp_path / dst)
    if dst == "store":
        back = bigstore.load(tmp_path / dst)
    elif dst.endswith(".npz"):
        with np.load(tmp_path / dst, allow_pickle=False) as z:
            back = {k: torch.from_numpy(z[k]) for k in z.files}
    elif dst.endswith(".safetensors"):
        back = load_file(tmp_path / dst)
    else:
        back = torch.load(tmp_path / dst, weights_only=True)
    assert_same(back, sd)


def test_destination_refusals(tmp_path: Path) -> None:
    sd = {"w": torch.randn(3).bfloat16(), "x": torch.ones(2)}
    bigstore.save(sd, tmp_path / "store")
    with pytest.raises(DTypeError, match=r"'w' is bfloat16.*\.npz"):
        bigstore.convert(tmp_path / "store", tmp_path / "out.npz")
    assert list(tmp_path.iterdir()) == [tmp_path / "store"]  # nothing half-written
    for bad in ("out.ckpt", "model.onnx", "x.gguf"):
        with pytest.raises(UnsupportedSourceError, match="does not write"):
            bigstore.convert(tmp_path / "store", tmp_path / bad)
    with pytest.raises(UnsupportedSourceError, match="local paths only"):
        bigstore.convert(tmp_path / "store", "memory://somewhere/out.pt")
    save_file({"x": torch.ones(2)}, tmp_path / "a.safetensors")
    with pytest.raises(BigstoreError, match="same path"):
        bigstore.convert(tmp_path / "a.safetensors", tmp_path / "a.safetensors")
    # a.safetensors -> b.safetensors re-encodes: same tensors, a file of its own
    bigstore.convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert_same(load_file(tmp_path / "b.safetensors"), {"x": torch.ones(2)})
    assert not (tmp_path / "out.ckpt").exists() and not (tmp_path / "model.onnx").exists()


def test_tied_weights_to_safetensors(tmp_path: Path) -> None:
    emb = torch.randn(4, 3)
    torch.save({"embed": emb, "head": emb, "part": emb[1:]}, tmp_path / "tied.pt")
    bigstore.convert(tmp_path / "tied.pt", tmp_path / "out.safetensors")
    assert_same(load_file(tmp_path / "out.safetensors"),
                {"embed": emb, "head": emb, "part": emb[1:].clone()})
