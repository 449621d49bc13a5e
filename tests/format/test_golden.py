"""Golden stores pin the on-disk format: written once, committed under ``golden/``.

For the same input, today's writer must produce the same bytes (every chunk and shard byte for
byte; every JSON document equal, except the ``written_by`` stamp), and today's reader must read
the committed stores back exactly. Compressed stores are only read back: a newer zstd may encode
the same data differently and still be the same format.

Regenerate (only for a deliberate format change, with a new format version):
``python -m tests.format.test_golden``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bigstore
from bigstore.data import open_dataset, write_dataset

GOLDEN = Path(__file__).with_name("golden")


def tensors() -> dict[str, Any]:
    return {
        "f32": np.arange(15, dtype=np.float32).reshape(3, 5) / 7,
        "bf16": torch.tensor([1.5, -2.25, 3.0e-3, 65504.0], dtype=torch.bfloat16),
        "scalar": np.array(-7, dtype=np.int64),
        "multi": (np.arange(300 * 16) % 251).astype(np.uint8).reshape(300, 16),
        "empty": np.zeros((0, 4), np.float16),
    }


def dataset() -> dict[str, Any]:
    n = 37
    return {
        "label": np.arange(n, dtype=np.int32),
        "x": (np.arange(n * 3) % 13).astype(np.float32).reshape(n, 3),
        "tok": [np.arange(i % 4, dtype=np.int16) + i for i in range(n)],
        "name": [f"sample-{i}" for i in range(n)],
    }


def write(kind: str, dst: Path) -> None:
    codec = "zstd:3" if kind.endswith("zstd") else None
    if kind.startswith("tensors"):
        bigstore.save(tensors(), dst, codec=codec, chunk_bytes=4096)
    else:
        write_dataset(dst, dataset(), chunk_rows=8, chunk_bytes=64, shard_bytes=100, codec=codec)


KINDS = ["tensors", "tensors-zstd", "dataset", "dataset-zstd"]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _doc(raw: bytes) -> Any:
    doc = json.loads(raw)
    own = doc.get("attributes", {}).get("bigstore", {})
    own.pop("written_by", None)
    own.pop("write_id", None)  # random: names the contents of one write
    return doc


@pytest.mark.parametrize("kind", [k for k in KINDS if not k.endswith("zstd")])
def test_writer_bytes_never_change(tmp_path: Path, kind: str) -> None:
    write(kind, tmp_path / kind)
    got, want = _files(tmp_path / kind), _files(GOLDEN / kind)
    assert sorted(got) == sorted(want)
    for name in want:
        if name.endswith("zarr.json"):
            assert _doc(got[name]) == _doc(want[name]), name
        else:
            assert got[name] == want[name], name


@pytest.mark.parametrize("kind", KINDS)
def test_golden_stores_read_back(kind: str) -> None:
    assert bigstore.verify(GOLDEN / kind).ok
    if kind.startswith("tensors"):
        got = bigstore.load(GOLDEN / kind, mmap=False)
        for name, want in tensors().items():
            t = torch.as_tensor(want) if isinstance(want, np.ndarray) else want
            assert got[name].dtype == t.dtype and torch.equal(got[name], t), name
        return
    ds = open_dataset(GOLDEN / kind)
    ref = dataset()
    batch = ds.read(np.arange(len(ds)))
    assert np.array_equal(batch["label"], ref["label"])
    assert np.array_equal(batch["x"], ref["x"])
    assert [t.tolist() for t in batch["tok"]] == [t.tolist() for t in ref["tok"]]
    assert batch["name"] == ref["name"]


@pytest.mark.parametrize("kind", KINDS)
def test_zarr_python_reads_golden_stores(kind: str) -> None:
    import zarr

    g = zarr.open_group(str(GOLDEN / kind), mode="r", use_consolidated=False)

    def read(name: str) -> np.ndarray:
        arr = g[name]
        assert isinstance(arr, zarr.Array)
        return np.asarray(arr[...])

    if kind.startswith("tensors"):
        assert np.array_equal(read("f32"), tensors()["f32"])
        assert np.array_equal(read("multi"), tensors()["multi"])
    else:
        assert np.array_equal(read("label"), dataset()["label"])


if __name__ == "__main__":  # regenerate
    for k in KINDS:
        shutil.rmtree(GOLDEN / k, ignore_errors=True)
        write(k, GOLDEN / k)
        print("wrote", GOLDEN / k)
