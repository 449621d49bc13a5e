"""Distributed ingest on a real Dask cluster (worker processes): byte-identical to one process,
locally and on S3; a task that fails once is retried without rewriting finished shards; a job
killed mid-way leaves the old dataset readable and resumes with the same job token."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest

dask = pytest.importorskip("dask")
distributed = pytest.importorskip("distributed")
pd = pytest.importorskip("pandas")

import dask.array as da  # noqa: E402
import dask.bag as db  # noqa: E402
import dask.dataframe as dd  # noqa: E402

from bigstore import open_dataset, write_dataset  # noqa: E402
from bigstore.data.ingest import PLAN_KEY  # noqa: E402
from bigstore.errors import DistributedError, DTypeError  # noqa: E402
from bigstore.plan.ingest import ArrayRows, plan_ingest  # noqa: E402
from bigstore.store import open_store  # noqa: E402
from tests._stores import LoggedStore, log_lines  # noqa: E402
from tests.data import _ingest_driver as driver  # noqa: E402

OPTS: dict[str, Any] = {"chunk_rows": 16, "shard_bytes": 2048}


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _frame(n: int = 1500) -> Any:
    i = np.arange(n)
    return pd.DataFrame({
        "label": i.astype(np.int64),
        "x": np.cos(i).astype(np.float32),
        "tok": [np.arange(k % 7, dtype=np.int32) + k for k in range(n)],
        "s": [f"s{k}" * (k % 4) for k in range(n)],
        "cat": pd.Categorical([("b", "a", "c", "d")[(k // 200) % 4] for k in range(n)]),
    })


def _objects(url: str, options: Any = None) -> dict[str, bytes]:
    store = open_store(url, options)
    store.exists("zarr.json")  # an fsspec store learns its root on first use
    return {k: bytes(memoryview(store.get(k)).cast("B")) for k in store.list()}


def _root_sans_id(raw: bytes) -> Any:
    doc = json.loads(raw)
    doc["attributes"]["bigstore"].pop("write_id")  # each write's own random id
    return doc


def _same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    assert [k for k in a if k != "zarr.json" and a[k] != b[k]] == []
    assert _root_sans_id(a["zarr.json"]) == _root_sans_id(b["zarr.json"])


def test_dataframe_bag_arrays_parquet_byte_identical(client: Any, tmp_path: Path) -> None:
    pdf = _frame()
    ref = str(tmp_path / "ref")
    write_dataset(ref, pdf, **OPTS)
    with dask.config.set({"dataframe.convert-string": False}):  # keep object columns as given
        ddf = dd.from_pandas(pdf, npartitions=7)
    write_dataset(tmp_path / "frame", ddf, **OPTS)
    _same(_objects(ref), _objects(str(tmp_path / "frame")))

    cuts = [0, 1, 250, 251, 251, 900, 1500]  # uneven batches, an empty one, one-row ones
    batches = [pdf.iloc[a:b] for a, b in pairwise(cuts)]
    bag = db.from_sequence(batches, npartitions=4)
    # a one-row first batch looks rectangular: say which column is ragged (as for one process)
    write_dataset(tmp_path / "bag", bag, variable=["tok"], **OPTS)
    _same(_objects(ref), _objects(str(tmp_path / "bag")))

    x = np.arange(3000 * 5, dtype=np.uint16).reshape(3000, 5)
    y = np.arange(3000, dtype=np.float64)
    write_dataset(tmp_path / "aref", {"x": x, "y": y}, **OPTS)
    arrays = {"x": da.from_array(x, chunks=(700, 2)), "y": da.from_array(y, chunks=450)}
    write_dataset(tmp_path / "arrays", arrays, **OPTS)
    _same(_objects(str(tmp_path / "aref")), _objects(str(tmp_path / "arrays")))

    pq_dir = tmp_path / "pq"
    pq_dir.mkdir()
    for j, (a, b) in enumerate(pairwise(cuts)):
        pdf.drop(columns=["tok", "cat"]).iloc[a:b].to_parquet(pq_dir / f"part-{j:02d}.parquet")
    write_dataset(tmp_path / "pref", pq_dir, **OPTS)
    write_dataset(tmp_path / "pdist", pq_dir, client=client, **OPTS)  # one partition per file
    _same(_objects(str(tmp_path / "pref")), _objects(str(tmp_path / "pdist")))
    ds = open_dataset(tmp_path / "frame")
    assert ds[1499]["cat"] == "d" and ds[7]["s"] == "s7" * 3
    assert not any(p.name.startswith(".frame.bigstore") for p in tmp_path.iterdir())


@pytest.mark.s3
def test_s3_byte_identical(client: Any, s3_url: tuple[str, dict[str, Any]],
                           tmp_path: Path) -> None:
    url, opts = s3_url
    pdf = _frame(900)
    ref = str(tmp_path / "ref")
    write_dataset(ref, pdf, **OPTS)
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(pdf, npartitions=5)
    write_dataset(url, ddf, storage_options=opts, **OPTS)
    _same(_objects(ref), _objects(url, opts))
    assert open_dataset(url, opts, cache_dir=tmp_path / "c")[899]["label"] == 899


def test_task_failing_once_is_retried_without_rewriting_shards(client: Any,
                                                               tmp_path: Path) -> None:
    pdf = _frame(2400)
    write_dataset(tmp_path / "ref", pdf, **OPTS)
    log = str(tmp_path / "puts.log")
    # label shards hold 256 rows: shards 0-3 lie inside partition 0, whose task has written
    # shards 0-2 when the put of shard 3 fails; the retry must keep them
    store = LoggedStore(open_store(tmp_path / "ds"), log, fail_once="label/c/3")
    with dask.config.set({"dataframe.convert-string": False}):
        ddf = dd.from_pandas(pdf, npartitions=2)
    write_dataset(store, ddf, retries=1, **OPTS)
    _same(_objects(str(tmp_path / "ref")), _objects(str(tmp_path / "ds")))
    puts = Counter((f[1], f[2]) for f in log_lines(log) if f[0] == "put" and "/c/" in f[1])
    assert puts[("label/c/3", "fail")] == 1 and puts[("label/c/3", "ok")] == 1
    assert {k: n for (k, ok), n in puts.items() if ok == "ok" and n != 1} == {}
    assert puts[("label/c/2", "ok")] == 1  # written by the failed attempt, kept by the retry


def test_values_that_do_not_fit_fail_before_anything_is_committed(client: Any,
                                                                   tmp_path: Path) -> None:
    url = tmp_path / "ds"
    write_dataset(url, {"v": np.arange(10)})
    parts = [{"v": np.arange(5)}, {"v": np.arange(3)}, {"v": np.array([1.0, 2.5])}]
    with pytest.raises(DTypeError, match=r"partition 2.*2\.5"):
        write_dataset(url, db.from_sequence(parts, npartitions=3))
    assert open_dataset(url)[9]["v"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    with pytest.raises(DistributedError, match="append"):
        write_dataset(url, db.from_sequence(parts[:1]), mode="a")


def _stage_keys_without(url: str, blocked: int) -> set[str]:
    """Shard keys of ``url``'s arrays that need no rows of partition ``blocked``."""
    ref = open_dataset(url).layout
    counts: dict[str, tuple[int, ...]] = {}
    parts = driver.reference()
    for path in ref.arrays:
        if path == "tok/values":
            counts[path] = tuple(sum(len(t) for t in p["tok"]) for p in parts)
        else:
            counts[path] = tuple(len(p["label"]) for p in parts)
    plan = plan_ingest([ArrayRows(p, counts[p], a.shard_rows) for p, a in ref.arrays.items()])
    keys = {ref.arrays[path].shard_key(g.shard)
            for w in plan.partitions if w.partition != blocked
            for path, segs in w.segments.items() for g in segs if g.kind == "write"}
    keys |= {ref.arrays[s.path].shard_key(s.shard) for s in plan.stitches if blocked not in s.parts}
    return keys


def test_killed_job_leaves_old_store_and_resumes(client: Any, tmp_path: Path) -> None:
    ref, url, token = str(tmp_path / "ref"), str(tmp_path / "ds"), "job-kill-1"
    write_dataset(ref, driver.reference(), **driver.OPTIONS)
    write_dataset(url, {"old": np.arange(50)})
    stage = tmp_path / f".ds.bigstore-ingest-{token}"
    want = _stage_keys_without(ref, driver.N_PARTS - 1)
    script = str(Path(driver.__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    gate = str(stage / PLAN_KEY)  # saved between the scan and the write pass
    proc = subprocess.Popen([sys.executable, script, url, token, gate], env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # a safety net against a hang, not a measurement
        while not all((stage / k).is_file() for k in want):
            assert proc.poll() is None, "the driver exited before it was killed"
            missing = sorted(k for k in want if not (stage / k).is_file())
            assert time.monotonic() < deadline, f"the job did not stage {missing}"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver, its scheduler and its workers
        proc.wait()
    assert open_dataset(url)[49]["old"] == 49  # the old dataset, untouched
    staged = {k: (stage / k).stat().st_ino for k in want}
    write_dataset(url, driver.source(), job_token=token, client=client, **driver.OPTIONS)
    _same(_objects(ref), _objects(url))
    assert {k: (Path(url) / k).stat().st_ino for k in want} == staged  # kept, not rewritten
    assert not stage.exists()
