"""The metadata fuzz, run in its own process under an address-space limit (see
test_metadata_fuzz.py): ``python _fuzz_worker.py WORKDIR EXAMPLES``.

Small tensor and dataset stores are written, every read path is warmed up (imports, thread
pools, numba kernels), then ``RLIMIT_AS`` is set a few hundred MB above the process's address
space. Hypothesis then mutates one JSON document of one store at a time (a value replaced, a
number scaled, a key renamed or deleted, an element dropped or repeated, the file cut short) and
every read path must either raise a BigstoreError or return what the store really holds; a
mutated per-array document must make ``verify`` report the disagreement. Exit 0 when all
examples passed; otherwise hypothesis prints the failing example and the exit code is 1.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import math
import os
import resource
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigstore
from bigstore.data import open_dataset, write_dataset
from bigstore.errors import BigstoreError

HEADROOM = 384 << 20  # bytes of address space allowed above the warmed-up process
PER_EXAMPLE = 60  # seconds before faulthandler dumps every thread's stack and exits

N = 40
TENSORS: dict[str, Any] = {
    "w": np.arange(3 * 1024, dtype=np.float32).reshape(3, 1024),  # 3 page-aligned chunks
    "b": torch.arange(5, dtype=torch.bfloat16),
    "s": np.array(7, np.int64),
    "e": np.zeros((0, 3), np.float16),
}
DATASET: dict[str, Any] = {
    "id": np.arange(N, dtype=np.int64),
    "x": (np.arange(N * 2, dtype=np.int16) % 251).reshape(N, 2),
    "tok": [np.arange(i % 4, dtype=np.int32) + i for i in range(N)],
    "name": [f"s{i}" for i in range(N)],
}
STORES = ["tensors", "tensors-zstd", "dataset", "dataset-zstd"]

VALUES: list[Any] = [
    -1, 0, 1, 2, 3, 7, 255, 256, 4096, 2**31, 2**32, 2**53, 2**63, 2**64, 10**12, 10**30,
    0.5, 1e300, float("nan"), float("inf"), "", "x", "int64", "uint16", "float32", "bfloat16",
    "zstd", "gzip", "bytes", "crc32c", "sharding_indexed", "regular", "array", "group",
    "tensors", "dataset", "../x", "a/b", "end", "start", True, False, None, [], {}, [1],
    [10**12], [0, 3], {"a": 1},
]


def write_stores(base: Path) -> None:
    for kind in STORES:
        codec = "zstd" if kind.endswith("zstd") else None
        if kind.startswith("tensors"):
            bigstore.save(TENSORS, base / kind, codec=codec, chunk_bytes=4096)
        else:
            write_dataset(base / kind, DATASET, chunk_rows=8, shard_bytes=256, codec=codec)


def as_bytes(a: Any) -> bytes:
    """The bytes of a tensor or array (bfloat16 included), in C order."""
    if isinstance(a, torch.Tensor):
        t = a.contiguous().reshape(-1)
        return t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return np.ascontiguousarray(a).tobytes()


EXPECT_T = {k: as_bytes(v) for k, v in TENSORS.items()}


def check_tensor(name: str, got: Any) -> None:
    """A read that succeeded returns the stored bytes (or a prefix: a smaller shape)."""
    want = EXPECT_T.get(name, b"")  # a name never stored: only an empty tensor (no chunks)
    b = as_bytes(got)
    assert want.startswith(b), f"tensor {name!r}: bytes that were never stored"


def check_rows(batch: dict[str, Any], ids: Any = None) -> None:
    """Rows that were read are the rows stored (``ids``: which, when no id column came)."""
    ids = np.asarray(batch["id"] if ids is None else ids).astype(np.int64)
    assert ((ids >= 0) & (ids < N)).all(), "sample ids that were never stored"
    for col, got in batch.items():
        if col in ("x",):
            assert np.array_equal(np.asarray(got).view(np.int16).reshape(len(ids), -1),
                                  DATASET["x"][ids].reshape(len(ids), -1)), col
        elif col in ("tok", "name"):  # the same bytes (a kind edited str <-> bytes <-> list
            for t, i in zip(got, ids):  # changes how they are handed out, not what they are)
                raw = (t.encode() if isinstance(t, str) else bytes(t) if isinstance(t, bytes)
                       else as_bytes(np.asarray(t)))
                want = DATASET[col][i]
                assert raw == (want.encode() if isinstance(want, str) else want.tobytes()), col


def read_everything(kind: str, url: Path) -> None:
    """Every read path; a BigstoreError from any of them is an acceptable answer."""
    ops: list[Any] = []
    if kind.startswith("tensors"):
        def open_all() -> None:
            ts = bigstore.open(url)
            for name in ts:
                check_tensor(name, ts[name].numpy())
                if ts[name].shape and ts[name].shape[0]:
                    check_tensor(name, ts[name][0:1].numpy())

        def load(mmap: bool) -> None:
            for name, t in bigstore.load(url, mmap=mmap).items():
                check_tensor(name, t)

        ops = [open_all, lambda: load(True), lambda: load(False)]
    else:
        def read_all() -> None:
            ds = open_dataset(url)
            assert len(ds) <= N
            if len(ds):
                check_rows(ds.read(np.arange(len(ds))), np.arange(len(ds)))
                check_rows(ds[: len(ds)], np.arange(len(ds)))

        def loader(columns: list[str]) -> None:
            ds = open_dataset(url)
            for b in ds.loader(7, shuffle=True, window=2, memory="4MiB", columns=columns):
                check_rows(b)

        ops = [read_all, lambda: loader(["id", "x"]), lambda: loader(["id", "tok", "name"])]
    for op in ops:
        with contextlib.suppress(BigstoreError):
            op()


def paths(node: Any, at: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [at]
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths(v, (*at, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths(v, (*at, i))
    return out


def get(node: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        node = node[p]
    return node


def mutate(doc: Any, data: Any) -> Any:
    """One mutation of the JSON tree ``doc`` (in place where possible); the new root."""
    where = data.draw(st.sampled_from(paths(doc)), label="path")
    what = data.draw(st.sampled_from(["value", "scale", "delete", "rename", "repeat"]),
                     label="mutation")
    parent = get(doc, where[:-1]) if where else None
    cur = get(doc, where)
    if what == "scale" and isinstance(cur, int) and not isinstance(cur, bool):
        new: Any = data.draw(st.sampled_from([cur + 1, cur - 1, -cur, cur * 2, cur * 10**6,
                                              cur // 2, cur * 10**12]), label="scaled")
    elif what == "delete" and parent is not None:
        del parent[where[-1]]
        return doc
    elif what == "rename" and isinstance(parent, dict):
        parent[data.draw(st.sampled_from(["x", "w", "zz", "id", "../up", "b/c"]),
                         label="new key")] = parent.pop(where[-1])
        return doc
    elif what == "repeat" and isinstance(cur, list) and cur:
        cur.append(cur[-1])
        return doc
    else:
        new = data.draw(st.sampled_from(VALUES), label="value")
    if parent is None:
        return new
    parent[where[-1]] = new
    return doc


def main() -> None:
    work, examples = Path(sys.argv[1]), int(sys.argv[2])
    pristine = work / "pristine"
    write_stores(pristine)
    for kind in STORES:  # warm up: every import, thread pool and kernel, both read paths
        for nomap in ("", "1"):
            os.environ["BIGSTORE_NO_MMAP"] = nomap
            read_everything(kind, pristine / kind)
            assert bigstore.verify(pristine / kind).ok
    size = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (size + HEADROOM, size + HEADROOM))
    print(f"address space {size >> 20} MiB, limit +{HEADROOM >> 20} MiB", flush=True)
    docs = {kind: sorted(str(p.relative_to(pristine / kind))
                         for p in (pristine / kind).rglob("zarr.json")) for kind in STORES}
    counter = iter(range(1 << 30))

    @settings(max_examples=examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def fuzz(data: Any) -> None:
        kind = data.draw(st.sampled_from(STORES), label="store")
        # the root carries the copy reads use: mutate it most often
        doc_key = data.draw(st.sampled_from(["zarr.json"] * len(docs[kind]) + docs[kind]),
                            label="document")
        url = work / f"case-{next(counter)}"
        shutil.copytree(pristine / kind, url)
        target = url / doc_key
        raw = target.read_bytes()
        if data.draw(st.booleans(), label="cut short") and data.draw(st.booleans()):
            text = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
            changed = True
        else:
            doc = json.loads(raw)
            new = mutate(doc, data)
            changed = new != json.loads(raw) or (isinstance(new, float) and math.isnan(new))
            text = json.dumps(new).encode()
        target.write_bytes(text)
        os.environ["BIGSTORE_NO_MMAP"] = data.draw(st.sampled_from(["", "1"]), label="nomap")
        faulthandler.dump_traceback_later(PER_EXAMPLE, exit=True)
        try:
            read_everything(kind, url)
            try:
                report = bigstore.verify(url)
            except BigstoreError:
                report = None
            if report is not None and doc_key != "zarr.json" and changed:
                assert not report.ok, f"verify missed a changed {doc_key}"
        finally:
            faulthandler.cancel_dump_traceback_later()
            shutil.rmtree(url, ignore_errors=True)

    fuzz()
    print("ok", flush=True)


if __name__ == "__main__":
    main()
