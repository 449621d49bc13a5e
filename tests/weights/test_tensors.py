"""Tensor round trips on every backend, zarr-python interoperability, lazy slicing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigstore
from bigstore.errors import (
    BigstoreError,
    CorruptChunkError,
    DTypeError,
    InvalidKeyError,
    MissingTensorError,
)

TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
    torch.complex128, torch.float8_e4m3fn, torch.float8_e5m2, torch.uint16, torch.uint32,
    torch.uint64,
]


def bits(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bits, so NaN payloads and -0.0 compare exactly."""
    t = t.contiguous().reshape(-1)
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    if t.dtype.is_complex:
        return torch.view_as_real(t).contiguous().view(torch.uint8)
    return t.view(torch.uint8)


def random_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.randint(0, 256, (int(np.prod(shape)) * dtype.itemsize,), generator=g,
                        dtype=torch.uint8)
    if dtype == torch.bool:
        return (raw[: int(np.prod(shape))] & 1).bool().reshape(shape)
    return raw.view(dtype).reshape(shape)


def test_all_dtypes_roundtrip_bit_exact(store_url: tuple[str, Any]) -> None:
    url, opts = store_url
    tensors = {f"t.{str(d)[6:]}": random_tensor(d, (7, 5), i) for i, d in enumerate(TORCH_DTYPES)}
    tensors["scalar"] = torch.tensor(2.5, dtype=torch.bfloat16)
    tensors["empty"] = torch.empty(0, 3, dtype=torch.float16)
    bigstore.save(tensors, url, storage_options=opts, chunk_bytes=64)
    out = bigstore.load(url, storage_options=opts)
    assert list(out) == list(tensors)
    for k, t in tensors.items():
        assert out[k].dtype == t.dtype and out[k].shape == t.shape, k
        assert torch.equal(bits(out[k]), bits(t)), k
    out_copy = bigstore.load(url, storage_options=opts, mmap=False)
    for k, t in tensors.items():
        assert torch.equal(bits(out_copy[k]), bits(t)), k


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(["<f4", "<i8", "u1", "<f2", "?", "<c8", "<u2"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=7),
    ),
    chunk_bytes=st.integers(1, 200),
    codec=st.sampled_from([None, "zstd"]),
)
def test_property_roundtrip_every_backend(
    store_url: tuple[str, Any], arr: np.ndarray, chunk_bytes: int, codec: str | None
) -> None:
    # each example overwrites the previous store at the same URL: replacement is exercised too
    url, opts = store_url
    other = np.asarray(arr).T  # a non-contiguous view of the same data
    bigstore.save({"x": arr, "y.z": other}, url, storage_options=opts,
                  chunk_bytes=chunk_bytes, codec=codec)
    got = bigstore.load_numpy(url, storage_options=opts)
    assert sorted(got) == ["x", "y.z"]
    assert got["x"].shape == arr.shape and got["x"].tobytes() == arr.tobytes()
    assert got["y.z"].shape == other.shape
    assert got["y.z"].tobytes() == np.ascontiguousarray(other).tobytes()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    arr=hnp.arrays(
        dtype=st.sampled_from(["<f4", "<i8", "u1", "<f2", "?", "<c8", "<u2", "<i2"]),
        shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
    ),
    chunk_bytes=st.integers(1, 300),
    codec=st.sampled_from([None, "zstd", "gzip:1"]),
)
def test_property_roundtrip_numpy(tmp_path_factory: Any, arr: np.ndarray, chunk_bytes: int,
                                  codec: str | None) -> None:
    url = str(tmp_path_factory.mktemp("p") / "s")
    bigstore.save({"x": arr}, url, chunk_bytes=chunk_bytes, codec=codec)
    got = bigstore.load_numpy(url)["x"]
    assert got.shape == arr.shape and got.dtype == arr.dtype
    assert got.tobytes() == arr.tobytes()
    z = zarr.open_array(f"{url}/x", mode="r")[...]  # zarr-python reads it on its own
    assert np.asarray(z).tobytes() == arr.tobytes()


@pytest.mark.parametrize("codec", [None, "zstd", "gzip"])
def test_zarr_python_reads_what_bigstore_writes(tmp_path: Any, codec: str | None) -> None:
    t = {"model.layers.0.self_attn.q_proj.weight": torch.randn(100, 32),
         "model.embed.bf16": random_tensor(torch.bfloat16, (64, 8), 1)}
    url = str(tmp_path / "s")
    bigstore.save(t, url, chunk_bytes=1000, codec=codec)
    g = zarr.open_group(url, mode="r")
    assert sorted(g.array_keys()) == sorted(t)
    q = g["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q, zarr.Array)
    assert q.chunks[0] < 100  # really chunked
    np.testing.assert_array_equal(np.asarray(q[:]),
                                  t["model.layers.0.self_attn.q_proj.weight"].numpy())
    e = g["model.embed.bf16"]
    assert isinstance(e, zarr.Array)
    meta = e.attrs["bigstore"]
    assert isinstance(meta, Mapping)
    assert meta["dtype"] == "bfloat16"
    assert np.array_equal(np.asarray(e[:]),
                          t["model.embed.bf16"].view(torch.int16).numpy().view(np.uint16))
    # and without consolidated metadata too
    g2 = zarr.open_group(url, mode="r", use_consolidated=False)
    q2 = g2["model.layers.0.self_attn.q_proj.weight"]
    assert isinstance(q2, zarr.Array)
    np.testing.assert_array_equal(np.asarray(q2[5:9]),
                                  t["model.layers.0.self_attn.q_proj.weight"][5:9].numpy())


def test_open_handles_and_slices(store_url: tuple[str, Any]) -> None:
    url, opts = store_url
    w = torch.randn(1000, 16)
    bigstore.save({"w": w, "b": torch.arange(3)}, url, storage_options=opts, chunk_bytes=4096)
    with bigstore.open(url, storage_options=opts) as s:
        assert sorted(s) == ["b", "w"] and len(s) == 2 and "w" in s
        h = s["w"]
        assert h.shape == (1000, 16) and h.dtype == torch.float32 and h.nbytes == 64000
        assert torch.equal(h.torch(), w)
        assert torch.equal(h[130:517].torch(), w[130:517])
        assert torch.equal(h[-1].torch(), w[-1])
        assert np.array_equal(h[5:5].numpy(), w[5:5].numpy())
        with pytest.raises(IndexError):
            h[1000]
        with pytest.raises(MissingTensorError, match="nope"):
            s["nope"]
        with pytest.raises(KeyError):
            s["nope"]


def test_slice_reads_only_the_chunks_it_needs(tmp_path: Any) -> None:
    w = random_tensor(torch.int32, (1024, 256))  # 1 KiB rows
    url = tmp_path / "s"
    bigstore.save({"w": w}, url, chunk_bytes=64 * 1024)  # 64 rows per chunk, 16 chunks
    meta = bigstore.open(url).meta("w")
    assert meta.chunk_rows == 64 and meta.n_chunks == 16
    for i in range(16):  # remove every chunk outside rows 130..200 (chunks 2 and 3)
        if i not in (2, 3):
            (url / "w" / "c" / str(i) / "0").unlink()
    s = bigstore.open(url)
    assert torch.equal(s["w"][130:200].torch(), w[130:200])
    with pytest.raises(CorruptChunkError, match=r"'w' chunk 0.*missing"):
        s["w"].torch()


def test_save_accepts_a_lazy_iterable(tmp_path: Any) -> None:
    produced: list[str] = []

    def gen() -> Any:
        for i in range(5):
            produced.append(str(i))
            yield f"layer.{i}", torch.full((10,), i)

    bigstore.save(gen(), tmp_path / "s")
    out = bigstore.load(tmp_path / "s")
    assert [int(out[f"layer.{i}"][0]) for i in range(5)] == list(range(5))


def test_bad_inputs_raise_bigstore_errors(tmp_path: Any) -> None:
    url = tmp_path / "s"
    with pytest.raises(DTypeError, match="'obj'"):
        bigstore.save({"obj": np.array(["a", "b"], dtype=object)}, url)
    with pytest.raises(DTypeError, match="'lst'"):
        bigstore.save({"lst": [1, 2, 3]}, url)
    with pytest.raises(InvalidKeyError):
        bigstore.save({"a/../b": torch.ones(1)}, url)
    with pytest.raises(InvalidKeyError):
        bigstore.save([("x", torch.ones(1)), ("x", torch.ones(1))], url)
    with pytest.raises(BigstoreError):
        bigstore.save({"x": torch.ones(1)}, url, codec="lz77")
    with pytest.raises(BigstoreError):
        bigstore.open(url, mode="w")
    assert not url.exists()  # nothing half-written left behind


def test_errors_share_one_root_and_builtins() -> None:
    from bigstore import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.BigstoreError)
    assert issubclass(errors.MissingTensorError, KeyError)
    assert issubclass(errors.StoreNotFoundError, FileNotFoundError)
    assert issubclass(errors.ChecksumError, errors.CorruptChunkError)


def test_big_endian_input_is_stored_little_endian(tmp_path: Any) -> None:
    a = np.arange(10, dtype=">i4")
    bigstore.save({"a": a}, tmp_path / "s")
    got = bigstore.load_numpy(tmp_path / "s")["a"]
    assert got.dtype == np.dtype("<i4") and np.array_equal(got, a)


@pytest.mark.parametrize("cols,chunk_bytes,aligned", [(77, 400_000, True), (77, 100_000, False)])
def test_multi_chunk_tensors_are_page_aligned_and_mapped(
    tmp_path: Any, cols: int, chunk_bytes: int, aligned: bool
) -> None:
    w = torch.randn(5000, cols)  # 308-byte rows: alignment needs 1024 rows
    bigstore.save({"w": w}, tmp_path / "s", chunk_bytes=chunk_bytes)
    meta = bigstore.open(tmp_path / "s").meta("w")
    assert meta.n_chunks > 1 and (meta.chunk_nbytes % 4096 == 0) == aligned
    assert meta.chunk_nbytes <= 2 * chunk_bytes
    out = bigstore.load(tmp_path / "s")["w"]
    assert torch.equal(out, w)
    out += 1  # private mapping: the file is untouched
    assert torch.equal(bigstore.load(tmp_path / "s")["w"], w)
