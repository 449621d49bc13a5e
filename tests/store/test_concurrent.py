"""Concurrent writers, with real processes, locally and on S3 (the moto server): every write
lands (one after the other) or fails with ConcurrentWriteError having changed nothing; a killed
(or frozen) lock holder never blocks the next writer for good."""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_mod
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import bigstore
from bigstore.data import open_dataset, write_dataset
from bigstore.errors import ConcurrentWriteError
from bigstore.store import open_store

from ._concurrent_proc import child

ORIGINAL = 10  # rows written before the writers start (writer id 9)
FORK = multiprocessing.get_context("fork")

pytestmark = pytest.mark.timeout(240)


def rows(writer: int, start: int, n: int) -> dict[str, Any]:
    return {
        "writer": np.full(n, writer, np.int32),
        "seq": np.arange(start, start + n, dtype=np.int64) + writer * 1_000_000,
    }


class Writer:
    def __init__(self, proc: Any, queue: Any) -> None:
        self.proc, self.queue = proc, queue
        self.lines: list[str] = []

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def expect(self, prefix: str, timeout: float = 120) -> str:
        """Wait for the writer's next line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.queue.get(timeout=0.2)
            except queue_mod.Empty:
                if not self.proc.is_alive():
                    break
                continue
            self.lines.append(line)
            if line.startswith(prefix):
                return str(line)
        raise AssertionError(f"writer {self.pid} (exit {self.proc.exitcode}) never said "
                             f"{prefix!r}; it said {self.lines}")

    def finish(self, timeout: float = 180) -> int:
        """Wait for the writer to exit; its exit code (its lines are collected in ``lines``)."""
        self.proc.join(timeout)
        assert not self.proc.is_alive(), f"writer {self.pid} still running after {timeout} s"
        while True:
            try:
                self.lines.append(self.queue.get(timeout=0.5))
            except queue_mod.Empty:
                return int(self.proc.exitcode)


class Writers:
    """Forked writer processes started together (each waits for ``release()``)."""

    def __init__(self) -> None:
        self.go = FORK.Event()
        self.all: list[Writer] = []

    def start(self, action: str, url: str, opts: dict[str, Any] | None, *args: float) -> Writer:
        q = FORK.Queue()
        p = FORK.Process(target=child, args=(action, url, opts, list(args), q, self.go))
        p.start()
        w = Writer(p, q)
        self.all.append(w)
        w.expect("ready")
        return w

    def release(self) -> None:
        self.go.set()

    def close(self) -> None:
        for w in self.all:
            if w.proc.is_alive():
                w.proc.kill()
            w.proc.join()


@pytest.fixture
def writers() -> Iterator[Writers]:
    w = Writers()
    yield w
    w.close()


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, Any] | None]:
    if request.param == "local":
        return str(tmp_path / "store"), None
    request.applymarker(pytest.mark.s3)
    url, opts = request.getfixturevalue("s3_url")
    return url, opts


def read_all(url: str, opts: dict[str, Any] | None, tmp: Path) -> dict[str, np.ndarray]:
    ds = open_dataset(url, opts, cache_dir=tmp / "cache")
    got = ds.read(np.arange(len(ds)))
    assert bigstore.verify(url, storage_options=opts).ok
    return got


def no_leftovers(url: str, opts: dict[str, Any] | None) -> None:
    """No staging directory, temporary object or lease is left beside the store."""
    if "://" not in url:
        parent = Path(url).parent
        assert not [p.name for p in parent.iterdir() if ".bigstore-" in p.name]  # nor a lock
    else:
        assert not list(open_store(url + ".bigstore-lock", opts).list())
        store = open_store(url.rsplit("/", 1)[0], opts)
        assert not [k for k in store.list() if ".bigstore-tmp-" in k]


def test_three_processes_appending_all_land(
    target: tuple[str, dict[str, Any] | None], writers: Writers, tmp_path: Path
) -> None:
    url, opts = target
    # small shards: every append rewrites a partial last shard someone else may have written
    write_dataset(url, rows(9, 0, ORIGINAL), storage_options=opts, chunk_rows=16,
                  shard_bytes=1024)
    procs = [writers.start("append", url, opts, w, 10, 100) for w in range(3)]
    writers.release()
    for p in procs:
        assert p.finish() == 0, p.lines
        assert sum(line.startswith("appended") for line in p.lines) == 10
    got = read_all(url, opts, tmp_path)
    assert len(got["seq"]) == ORIGINAL + 3 * 10 * 100
    want = np.concatenate([rows(w, 0, n)["seq"] for w, n in [(9, ORIGINAL), (0, 1000),
                                                                 (1, 1000), (2, 1000)]])
    assert np.array_equal(np.sort(got["seq"]), np.sort(want))  # every row exactly once
    assert np.array_equal(got["seq"][:ORIGINAL], rows(9, 0, ORIGINAL)["seq"])
    for w in range(3):  # each append landed whole, in the writer's order
        mine = got["seq"][got["writer"] == w]
        assert np.array_equal(mine, rows(w, 0, 1000)["seq"])
        at = np.flatnonzero(got["writer"] == w).reshape(10, 100)
        assert (np.diff(at, axis=1) == 1).all()
    no_leftovers(url, opts)


def test_append_and_overwrite(
    target: tuple[str, dict[str, Any] | None], writers: Writers, tmp_path: Path
) -> None:
    url, opts = target
    write_dataset(url, rows(9, 0, ORIGINAL), storage_options=opts, chunk_rows=16,
                  shard_bytes=1024)
    appender = writers.start("append", url, opts, 0, 10, 100)
    replacer = writers.start("overwrite", url, opts, 7, 500)
    writers.release()
    for p in (appender, replacer):
        assert p.finish() == 0, p.lines
    got = read_all(url, opts, tmp_path)
    # the overwrite replaced whatever was there (original rows and appends before it); every
    # append after it landed whole: the replacement's rows, then appends k..9 in order
    assert np.array_equal(got["seq"][:500], rows(7, 0, 500)["seq"])
    rest = got["seq"][500:]
    assert len(rest) % 100 == 0
    k = 10 - len(rest) // 100
    assert np.array_equal(rest, rows(0, k * 100, 1000 - k * 100)["seq"])
    no_leftovers(url, opts)


def test_save_and_save(
    target: tuple[str, dict[str, Any] | None], writers: Writers
) -> None:
    url, opts = target
    procs = [writers.start("save", url, opts, tag, 3) for tag in (1, 2)]  # 2 chunks a tensor
    writers.release()
    saved = set()
    for p in procs:
        assert p.finish() == 0, p.lines
        saved |= {float(line.split()[1]) for line in p.lines if line.startswith("saved")}
    assert len(saved) == 6
    got = bigstore.load(url, storage_options=opts)
    assert sorted(got) == sorted(f"t.{j}" for j in range(10))
    values = {float(t.flatten()[0]) for t in got.values()}
    assert len(values) == 1 and values <= saved  # exactly one save, never a mix
    value = values.pop()
    assert all(torch.equal(t, torch.full((32, 64), value)) for t in got.values())
    assert bigstore.verify(url, storage_options=opts).ok
    no_leftovers(url, opts)


def test_killed_lock_holder_never_blocks_the_next_writer(
    target: tuple[str, dict[str, Any] | None], writers: Writers, tmp_path: Path
) -> None:
    url, opts = target
    write_dataset(url, rows(9, 0, ORIGINAL), storage_options=opts)
    holder = writers.start("hold", url, opts, 1.0)
    writers.release()
    holder.expect("held")
    if opts is not None:  # a live-looking lease is honoured: a clear error naming its holder
        with pytest.raises(ConcurrentWriteError, match=f"pid {holder.pid}"):
            write_dataset(url, rows(1, 0, 5), mode="a", storage_options=opts, lock_timeout=0.5)
    os.kill(holder.pid, signal.SIGKILL)
    assert holder.finish() == -signal.SIGKILL
    # local: the kernel released the flock; S3: the lease, unrefreshed for 1 s, is broken
    write_dataset(url, rows(1, 0, 5), mode="a", storage_options=opts, lock_timeout=60,
                  lock_stale_after=1.0)
    got = read_all(url, opts, tmp_path)
    want = np.concatenate([rows(9, 0, ORIGINAL)["seq"], rows(1, 0, 5)["seq"]])
    assert np.array_equal(got["seq"], want)
    no_leftovers(url, opts)


def test_writer_killed_midway_through_an_append(
    target: tuple[str, dict[str, Any] | None], writers: Writers, tmp_path: Path
) -> None:
    url, opts = target
    write_dataset(url, rows(9, 0, ORIGINAL), storage_options=opts, chunk_rows=4,
                  shard_bytes=64)
    victim = writers.start("slow-append", url, opts, 1, 200, 1.0)
    writers.release()
    victim.expect("row 20")  # several shards written into the live store by now
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.finish() == -signal.SIGKILL
    assert np.array_equal(read_all(url, opts, tmp_path)["seq"], rows(9, 0, ORIGINAL)["seq"])
    write_dataset(url, rows(2, 0, 7), mode="a", storage_options=opts, lock_timeout=60,
                  lock_stale_after=1.0)
    want = np.concatenate([rows(9, 0, ORIGINAL)["seq"], rows(2, 0, 7)["seq"]])
    assert np.array_equal(read_all(url, opts, tmp_path)["seq"], want)


@pytest.mark.s3
def test_frozen_holder_loses_its_lease_and_commits_nothing(
    s3_url: tuple[str, dict[str, Any]], writers: Writers, tmp_path: Path
) -> None:
    url, opts = s3_url
    write_dataset(url, rows(9, 0, ORIGINAL), storage_options=opts)
    frozen = writers.start("slow-append", url, opts, 1, 30, 1.0)
    writers.release()
    frozen.expect("row 3")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        # its lease goes unrefreshed: after a second this writer breaks it and commits
        write_dataset(url, rows(2, 0, 50), mode="a", storage_options=opts, lock_timeout=60,
                      lock_stale_after=1.0)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    assert frozen.finish() == 3, frozen.lines
    assert any(line.startswith("conflict") and "lost its lock" in line for line in frozen.lines)
    want = np.concatenate([rows(9, 0, ORIGINAL)["seq"], rows(2, 0, 50)["seq"]])
    assert np.array_equal(read_all(url, opts, tmp_path)["seq"], want)  # nothing of the loser
