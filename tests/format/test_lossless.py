"""The lossless chain: bit-exact round trips, the per-chunk raw rule, zarr-python reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from zarr.core.metadata import ArrayV3Metadata

from bigstore.config import LosslessConfig
from bigstore.errors import CorruptChunkError, TruncatedChunkError, UnsupportedCodecError
from bigstore.format import lossless
from bigstore.format.codecs import ChunkCodec, crc32c_of
from tests._floats import FLOATS, float_values

Arr = np.ndarray[Any, Any]
DTYPES = FLOATS


def _values(dtype: str, kind: str, n: int = 50_000) -> Arr:
    """``n`` values of ``dtype`` as their storage array (bfloat16 as uint16 bits)."""
    t = float_values(dtype, kind, n)
    if dtype == "bfloat16":
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["normal", "constant", "special", "subnormal", "random"])
def test_round_trip_is_bit_exact(dtype: str, kind: str) -> None:
    x = _values(dtype, kind)
    frame = lossless.encode(x, x.itemsize)
    out = np.empty_like(x)
    lossless.decode(frame, out)
    assert out.tobytes() == x.tobytes()
    buf = bytearray(x.nbytes)  # any writable buffer will do
    lossless.decode(frame, buf)
    assert bytes(buf) == x.tobytes()
    info = lossless.frame_info(frame)
    assert info.nbytes == x.nbytes and info.typesize == x.itemsize
    if kind == "random":
        assert info.memcpyed  # nothing to gain: stored raw
    if kind in ("normal", "constant") and dtype in ("bfloat16", "float32"):
        assert not info.memcpyed and len(frame) < 0.95 * x.nbytes


def test_raw_rule_keeps_one_valid_frame_format() -> None:
    x = _values("bfloat16", "normal")
    compressed = lossless.encode(x, 2)
    raw = lossless.encode(x, 2, min_saving=0.9)  # bf16 never saves 90%: stored raw
    assert not lossless.frame_info(compressed).memcpyed
    assert lossless.frame_info(raw).memcpyed
    assert len(raw) == lossless.HEADER_BYTES + x.nbytes
    view = lossless.raw_payload(raw)
    assert view is not None and bytes(view) == x.tobytes()
    assert lossless.raw_payload(compressed) is None
    for frame in (raw, compressed):  # the stock Blosc decoder reads both
        from numcodecs import Blosc

        assert bytes(Blosc().decode(frame)) == x.tobytes()


def test_encoding_is_deterministic() -> None:
    x = _values("float32", "normal")
    assert lossless.encode(x, 4) == lossless.encode(x.copy(), 4)


def test_bad_input_and_damaged_frames_are_refused_by_name() -> None:
    x = _values("float32", "normal")
    frame = lossless.encode(x, 4)
    with pytest.raises(TruncatedChunkError, match=r"w\.0"):
        lossless.decode(frame, np.empty(x.size - 1, np.float32), where="w.0")
    with pytest.raises(TruncatedChunkError, match=r"w\.0"):
        lossless.decode(frame[:-10], np.empty_like(x), where="w.0")
    with pytest.raises(TruncatedChunkError):
        lossless.decode(frame[:5], np.empty_like(x))
    # zstd blocks carry no checksum (the chunk's crc32c does that job): damage the structure
    bad = bytearray(frame)
    bad[16:20] = b"\xf0\xff\xff\x0f"  # the first block's offset, past the end
    with pytest.raises(CorruptChunkError):
        lossless.decode(bytes(bad), np.empty_like(x), where="w.0")
    with pytest.raises(TruncatedChunkError):
        lossless.encode(b"abc", 2)
    with pytest.raises(UnsupportedCodecError):
        LosslessConfig(clevel=0)
    with pytest.raises(UnsupportedCodecError):
        LosslessConfig(shuffle="zigzag")


def _write_array(root: Path, storage: Arr, logical: str, chunk_rows: int,
                 config: LosslessConfig) -> list[bool]:
    """An array written by hand (chunk files + zarr.json) the way a bigstore store lays it out:
    bytes -> blosc -> crc32c, chunked along axis 0. Returns which chunks were stored raw."""
    from zarr.core.dtype import parse_data_type
    from zarr.core.metadata.v3 import ArrayV3Metadata

    root.mkdir(parents=True)
    rows, cols = storage.shape
    md = ArrayV3Metadata(
        shape=storage.shape, data_type=parse_data_type(storage.dtype, zarr_format=3),
        chunk_grid={"name": "regular", "configuration": {"chunk_shape": [chunk_rows, cols]}},
        chunk_key_encoding={"name": "default", "configuration": {"separator": "/"}},
        fill_value=0,
        codecs=ChunkCodec.lossless(config).bind(storage.itemsize).zarr_codecs(),
        attributes={"bigstore": {"dtype": logical}}, dimension_names=None,
    )
    (root / "zarr.json").write_text(json.dumps(md.to_dict(), default=str))
    raw = []
    for i in range(-(-rows // chunk_rows)):
        chunk = np.zeros((chunk_rows, cols), storage.dtype)  # zarr pads the edge chunk
        part = storage[i * chunk_rows:(i + 1) * chunk_rows]
        chunk[: len(part)] = part
        frame = lossless.encode(chunk, storage.itemsize, clevel=config.clevel,
                                blocksize=config.blocksize, min_saving=config.min_saving,
                                shuffle=config.shuffle, where=f"chunk {i}")
        raw.append(lossless.frame_info(frame).memcpyed)
        crc = np.array([crc32c_of([frame])], "<u4").tobytes()
        path = root / "c" / str(i) / "0"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(frame + crc)
    return raw


@pytest.mark.parametrize("dtype", DTYPES)
def test_zarr_python_reads_the_chain_on_its_own(tmp_path: Path, dtype: str) -> None:
    normal = _values(dtype, "normal", 64 * 40).reshape(64, 40)
    noise = _values(dtype, "random", 64 * 40).reshape(64, 40)
    storage = np.concatenate([normal, noise, normal[:10]])  # 138 rows, chunks of 64
    raw = _write_array(tmp_path / "w", storage, dtype, 64, LosslessConfig())
    assert raw == [False, True, False]  # one chain, raw or compressed per chunk
    arr = zarr.open_array(str(tmp_path / "w"), mode="r")
    got = np.asarray(arr[...])
    assert got.dtype == storage.dtype and got.tobytes() == storage.tobytes()
    assert isinstance(arr.metadata, ArrayV3Metadata)
    assert arr.metadata.codecs[1].to_dict()["name"] == "blosc"
