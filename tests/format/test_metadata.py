"""Metadata that lies: refused before anything is allocated, named by array; ``verify`` notices
a per-array document that disagrees with the root's consolidated copy; and a fuzz of every JSON
document of small stores yields only BigstoreErrors or correct reads, with no hang and no
allocation beyond the store's real size (run in a subprocess under an address-space limit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bigstore
from bigstore.data import open_dataset, write_dataset
from bigstore.errors import CorruptChunkError, MetadataError

FUZZ = Path(__file__).with_name("_fuzz_worker.py")
HUGE = 10**12


def edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def arrays(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["consolidated_metadata"]["metadata"]


def grid(array_doc: dict[str, Any]) -> list[int]:
    return array_doc["chunk_grid"]["configuration"]["chunk_shape"]


@pytest.mark.parametrize("codec", [None, "zstd", "gzip"])
@pytest.mark.parametrize("lie", ["rows", "rows and chunks", "chunk rows", "int64 overflow"])
def test_absurd_tensor_shapes_are_refused_before_allocating(
    tmp_path: Path, codec: str | None, lie: str
) -> None:
    url = tmp_path / "w"
    bigstore.save({"x": torch.arange(3000.0).reshape(1000, 3), "y": torch.ones(2)}, url,
                  codec=codec, chunk_bytes=4096)

    def claim(doc: dict[str, Any]) -> None:
        x = arrays(doc)["x"]
        if lie == "rows":  # the chunk count alone gives it away: no such chunk object
            x["shape"][0] = HUGE
        elif lie == "rows and chunks":  # one huge chunk: the one object is far too small
            x["shape"][0] = grid(x)[0] = HUGE
        elif lie == "chunk rows":  # as many chunks, each claiming more rows than it holds
            x["shape"][0] *= 100
            grid(x)[0] *= 100
        else:  # past int64: refused when the document is read (the whole store, then)
            x["shape"][0] = 2**62

    edit(url / "zarr.json", claim)
    if lie == "int64 overflow":
        with pytest.raises(MetadataError, match=r"'x'.*more than any array can hold"):
            bigstore.open(url)
        assert "x" in bigstore.verify(url).corrupted_tensors
        return
    for read in (lambda: bigstore.load(url), lambda: bigstore.load(url, mmap=False),
                 lambda: bigstore.open(url)["x"][-2:].numpy(),  # the last rows claimed
                 lambda: bigstore.open(url)["x"].numpy()):
        with pytest.raises(CorruptChunkError, match=r"'x' chunk .*cannot hold"):
            read()
    head = bigstore.open(url)["x"]  # the rows that are really there: refused, or read right
    if lie == "rows":
        assert torch.equal(head[0:2].torch(), torch.arange(6.0).reshape(2, 3))
    else:
        with pytest.raises(CorruptChunkError, match="'x' chunk 0 "):
            head[0:2].numpy()
    assert torch.equal(bigstore.open(url)["y"].torch(), torch.ones(2))  # the others still read
    report = bigstore.verify(url)
    assert "x" in report.corrupted_tensors and report.chunks <= 4  # never 10**9 of them


def test_offload_refuses_a_lying_document_before_allocating(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 1000), torch.nn.Linear(1000, 2))
    url = tmp_path / "w"
    bigstore.save(model.state_dict(), url, chunk_bytes=4096)

    def one_chunk(doc: dict[str, Any]) -> None:  # same shape, but "one chunk of 1000 rows"
        grid(arrays(doc)["0.weight"])[0] = 1000

    edit(url / "zarr.json", one_chunk)
    with pytest.raises(CorruptChunkError, match=r"'0.weight' chunk 0 .*cannot hold"):
        bigstore.offload(model, url, device="cpu", budget="1MiB")
    # the model was left as it was: offload can be asked again once the store is fixed
    bigstore.save(model.state_dict(), url, chunk_bytes=4096)
    x = torch.randn(4, 3)
    want = model(x)
    with bigstore.offload(model, url, device="cpu", budget="1MiB") as m:
        assert torch.equal(m(x), want)


@pytest.mark.parametrize("codec", [None, "zstd"])
def test_absurd_dataset_sizes_are_refused_before_allocating(
    tmp_path: Path, codec: str | None
) -> None:
    url = tmp_path / "d"
    write_dataset(url, {"x": np.arange(200, dtype=np.int64), "t": [[1, 2], [3]] * 100},
                  chunk_rows=16, shard_bytes=512, codec=codec)

    def claim(rows: int) -> Any:
        def change(doc: dict[str, Any]) -> None:  # consistent: root, columns, arrays agree
            doc["attributes"]["bigstore"]["num_rows"] = rows
            for name in ("x", "t/offsets"):
                arrays(doc)[name]["shape"][0] = rows
        return change

    edit(url / "zarr.json", claim(HUGE))  # 6e10 chunks: no store lists that many
    with pytest.raises(MetadataError, match=r"'x'.*chunks"):
        open_dataset(url)
    rows = 10**10
    edit(url / "zarr.json", claim(rows))
    ds = open_dataset(url)
    assert len(ds) == rows  # opening reads only the document; every read checks it first
    for read in (lambda: ds[rows - 1], lambda: ds.read([0]),
                 lambda: next(iter(ds.loader(10, shuffle=True))),
                 lambda: next(iter(ds.loader(10, columns=["t"])))):
        with pytest.raises(CorruptChunkError, match=r"array '(x|t/offsets)' chunk"):
            read()


def test_verify_notices_a_per_array_document_that_disagrees(tmp_path: Path) -> None:
    w, d = tmp_path / "w", tmp_path / "d"
    bigstore.save({"a": np.arange(10.0), "b": np.ones(3)}, w)
    write_dataset(d, {"x": np.arange(10), "t": ["ab", "c"] * 5})
    assert bigstore.verify(w).ok and bigstore.verify(d).ok

    def shape(doc: dict[str, Any]) -> None:
        doc["shape"] = [5]

    edit(w / "a" / "zarr.json", shape)  # reads use the root's copy: only verify can tell
    assert torch.equal(bigstore.load(w)["a"], torch.arange(10.0, dtype=torch.float64))
    report = bigstore.verify(w)
    assert report.corrupted_tensors == ["a"]
    assert "disagrees with the consolidated copy" in report.problems[0].error
    for key in ("x/zarr.json", "t/zarr.json", "t/offsets/zarr.json"):  # arrays and groups
        edit(d / key, lambda doc: doc.setdefault("attributes", {}).update(edited=True))
    bad = bigstore.verify(d)
    assert sorted(p.tensor for p in bad.problems) == ["t", "t/offsets", "x"]
    (w / "b" / "zarr.json").write_text("{not json")
    assert "b" in bigstore.verify(w).corrupted_tensors


@pytest.mark.timeout(300)
def test_metadata_fuzz_only_clear_errors_no_hang_no_allocation(tmp_path: Path) -> None:
    env = dict(os.environ, MALLOC_ARENA_MAX="2")  # glibc's per-thread arenas: 64 MiB each
    proc = subprocess.run(
        [sys.executable, str(FUZZ), str(tmp_path), "300"], capture_output=True, text=True,
        timeout=280, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    assert proc.stdout.rstrip().endswith("ok")
