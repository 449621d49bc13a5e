"""Lossless stores (codec="lossless"): bit-exact through save/load, open()[rows], convert and
write_dataset; raw or compressed per chunk; zarr-python reads them alone; damage is caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from zarr.core.metadata import ArrayV3Metadata

import bigstore
from bigstore.errors import ChecksumError, UnsupportedCodecError
from bigstore.format import lossless, parse_codec
from bigstore.format.codecs import CRC_BYTES
from tests._floats import FLOATS, KINDS, float_values


def _values(dtype: str, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor of ``dtype`` holding ``kind`` data (random: arbitrary bit patterns)."""
    return float_values(dtype, kind, int(np.prod(shape))).reshape(shape)


def _bits(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    # 300 rows of 24 values: several chunks at 4 KiB chunks, and a partial last chunk
    out = {f"{dt}.{kind}": _values(dt, kind, (300, 24)) for dt in FLOATS for kind in KINDS}
    out["ints"] = torch.arange(5000, dtype=torch.int64).reshape(100, 50) % 7
    out["flags"] = torch.rand(333) > 0.5
    out["cplx"] = torch.randn(40, 3, dtype=torch.complex128)
    out["scalar"] = torch.tensor(-2.5, dtype=torch.bfloat16)
    out["empty"] = torch.zeros(0, 4, dtype=torch.float16)
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tensors: dict[str, torch.Tensor]) -> str:
    url = str(tmp_path_factory.mktemp("lossless") / "w")
    bigstore.save(tensors, url, codec="lossless", chunk_bytes="4KiB")
    return url


def test_load_is_bit_exact_for_every_dtype_and_kind(store: str,
                                                    tensors: dict[str, torch.Tensor]) -> None:
    back = bigstore.load(store)
    assert set(back) == set(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
        assert _bits(back[name]) == _bits(t), name
    # the chain is what the documents say: bytes -> blosc(zstd, shuffle, typesize) -> crc32c
    with bigstore.open(store) as ts:
        codec = ts.meta("bfloat16.normal").codec
        assert (codec.compressor, codec.level, codec.typesize) == ("blosc", 1, 2)
        assert ts.meta("float64.normal").codec.typesize == 8
        assert ts.meta("bfloat16.normal").n_chunks > 1


@pytest.mark.parametrize("rows", [(0, 1), (5, 170), (170, 171), (0, 300), (299, 300), (40, 40)])
def test_rows_read_only_their_chunks_bit_exact(store: str, tensors: dict[str, torch.Tensor],
                                               rows: tuple[int, int]) -> None:
    a, b = rows
    with bigstore.open(store) as ts:
        for name in ("bfloat16.normal", "float32.random", "float16.special"):
            assert _bits(ts[name][a:b].torch()) == _bits(tensors[name][a:b]), (name, rows)
        assert _bits(ts["float64.subnormal"][a].torch()) == _bits(tensors["float64.subnormal"][a])


def test_each_chunk_is_raw_or_compressed_by_what_it_saves(store: str) -> None:
    root = Path(store)
    for name, expect_raw in (("bfloat16.normal", False), ("float32.constant", False),
                             ("bfloat16.random", True), ("float64.random", True)):
        for f in (root / name / "c").rglob("*"):
            if f.is_file():
                frame = f.read_bytes()[:-CRC_BYTES]
                assert lossless.frame_info(frame).memcpyed is expect_raw, (name, f)
    # a raw chunk is the data after the 16-byte Blosc header: a reader may copy it directly
    data = (root / "bfloat16.random" / "c" / "0" / "0").read_bytes()[:-CRC_BYTES]
    with bigstore.open(store) as ts:
        assert len(data) == lossless.HEADER_BYTES + ts.meta("bfloat16.random").chunk_nbytes


def test_zarr_python_reads_a_lossless_store_on_its_own(store: str,
                                                       tensors: dict[str, torch.Tensor]) -> None:
    group = zarr.open_group(store, mode="r")
    for name in ("bfloat16.normal", "bfloat16.random", "float32.special", "float16.subnormal",
                 "float64.constant", "ints"):
        arr = group[name]
        assert isinstance(arr, zarr.Array)
        assert isinstance(arr.metadata, ArrayV3Metadata)
        assert arr.metadata.codecs[1].to_dict()["name"] == "blosc"
        got = np.asarray(arr[...])
        assert got.tobytes() == _bits(tensors[name]), name


def test_corrupt_compressed_and_raw_chunks_are_detected(tmp_path: Path) -> None:
    url = str(tmp_path / "w")
    t = {"mlp.weight": _values("bfloat16", "normal", (300, 24)),
         "noise.weight": _values("bfloat16", "random", (300, 24))}
    bigstore.save(t, url, codec="lossless", chunk_bytes="4KiB")
    for name in t:
        f = tmp_path / "w" / name / "c" / "1" / "0"
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        f.write_bytes(bytes(raw))
        with pytest.raises(ChecksumError, match=rf"{name}.*chunk 1"):
            bigstore.load(url, names=[name])
        with bigstore.open(url) as ts, pytest.raises(ChecksumError, match=name):
            ts[name][80:90].numpy()  # rows of chunk 1 (75 rows a chunk)
    report = bigstore.verify(url)
    assert report.corrupted_tensors == sorted(t)


def test_convert_with_the_lossless_codec_round_trips(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    t = {"a.weight": _values("bfloat16", "normal", (64, 32)),
         "b.weight": _values("float32", "special", (10, 7))}
    save_file(t, str(tmp_path / "m.safetensors"))
    out = bigstore.convert(str(tmp_path / "m.safetensors"), str(tmp_path / "s"), codec="lossless:3")
    assert out["tensors"] == 2
    with bigstore.open(str(tmp_path / "s")) as ts:
        assert ts.meta("a.weight").codec.level == 3
    back = bigstore.load(str(tmp_path / "s"))
    assert all(_bits(back[k]) == _bits(v) for k, v in t.items())


def test_codec_specs_are_checked() -> None:
    assert parse_codec("lossless").spec == "lossless:1"
    assert parse_codec("lossless:9").level == 9
    for bad in ("lossless:0", "lossless:x", "blosc2"):
        with pytest.raises(UnsupportedCodecError):
            parse_codec(bad)
    with pytest.raises(UnsupportedCodecError):
        bigstore.save({"x": torch.ones(2)}, "memory://never", codec="lossless:12")


def test_write_dataset_with_the_lossless_codec(tmp_path: Path) -> None:
    n = 500
    rng = np.random.default_rng(0)
    cols: dict[str, Any] = {
        "x": _values("bfloat16", "normal", (n, 16)).view(torch.int16).numpy().view(np.uint16),
        "y": _values("float32", "special", (n, 3)).numpy(),
        "tok": [rng.integers(0, 100, i % 9).astype(np.int32) for i in range(n)],
    }
    url = str(tmp_path / "d")
    bigstore.write_dataset(url, cols, codec="lossless", chunk_rows=64)
    ds = bigstore.open_dataset(url)
    idx = np.array([0, 63, 64, 499, 250, 7])
    got = ds[idx]
    assert got["x"].tobytes() == cols["x"][idx].tobytes()
    assert got["y"].tobytes() == cols["y"][idx].tobytes()
    assert all(np.array_equal(a, cols["tok"][i]) for a, i in zip(got["tok"], idx))
    seen = np.concatenate([b["y"] for b in ds.loader(100, shuffle=False)])
    assert seen.tobytes() == cols["y"].tobytes()
    assert np.asarray(zarr.open_array(f"{url}/y", mode="r")[...]).tobytes() == cols["y"].tobytes()
    assert bigstore.verify(url).ok
