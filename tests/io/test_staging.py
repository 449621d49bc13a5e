"""Stored bytes read ahead of the read that decodes them: the staging pool, and
``ChunkReader.fetches`` / ``fetch`` / ``read_rows(staged=...)``: the staged bytes are the ones
used (the files may change under them), checked and decoded like any others."""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import torch

import bigstore
from bigstore.errors import BigstoreError, ChecksumError
from bigstore.io import RowRequest, StagingPool
from bigstore.io.buffers import StagingFull
from bigstore.store import Store


def _addr(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def test_staging_pool_caps_reuses_and_aligns() -> None:
    page = Store.DIRECT_ALIGN
    pool = StagingPool(10 * page)
    a = pool.take(6 * page - 100)
    assert a.nbytes == 6 * page - 100 and _addr(a) % page == 0  # direct reads may land in it
    with pytest.raises(StagingFull):
        pool.take(5 * page)  # 11 pages > the cap: nothing handed out beyond it
    b = pool.take(4 * page)
    assert pool.used == 10 * page
    where = _addr(a)
    pool.give([a[100:]])  # a view of it gives it back too
    again = pool.take(6 * page - 7)  # a size of the same step: its pages already faulted in
    assert _addr(again) == where and pool.used == 10 * page
    pool.give([again, b])
    assert pool.used == 0 and pool.held_bytes == 10 * page
    c = pool.take(8 * page)  # a new size: idle buffers are let go to stay under the cap
    assert pool.held_bytes <= 10 * page and c.nbytes == 8 * page


def test_idle_staging_buffers_are_reused_or_let_go() -> None:
    page = Store.DIRECT_ALIGN
    pool = StagingPool(100 * page)
    big = pool.take(40 * page)
    pool.give([big])
    # a slightly smaller size reuses it (at most a quarter larger); a much smaller one does not
    again = pool.take(33 * page)
    assert pool.used == 40 * page
    pool.give([again])
    small = pool.take(8 * page)
    assert pool.used == 8 * page and pool.held_bytes == 48 * page
    for _ in range(StagingPool.IDLE_TAKES + 1):  # the big one idles through many takes
        pool.give([pool.take(8 * page)])
    pool.give([small])
    assert pool.held_bytes == 16 * page  # the big one let go; the two small ones stay
    assert pool.peak == 40 * page  # never more than one big buffer out at once


def test_staging_steps_waste_little() -> None:
    sizes = [1, 4095, 4097, 65_537, 1_000_000, 6_123_457, 17 << 20, (1 << 30) + 1]
    for n in sizes:
        s = StagingPool.step(n)
        assert n <= s <= max(n * 17 // 16, -(-n // 4096) * 4096) and s % 4096 == 0, n
    # chunks whose compressed sizes differ by little share a step (and so idle buffers)
    assert StagingPool.step(6_100_000) == StagingPool.step(6_200_000)


def _store(tmp_path: Path, kind: str) -> str:
    g = torch.Generator().manual_seed(0)
    w = {
        "a.weight": torch.randn(96, 128, generator=g).bfloat16(),
        "b.weight": torch.randn(40, 64, generator=g),
        "a.bias": torch.randn(96, generator=g).bfloat16(),  # 1-D: kept as it is
    }
    url = str(tmp_path / kind)
    if kind == "lossless":
        bigstore.save(w, url, codec="lossless", chunk_bytes="4KiB")
    else:
        scheme, _, codec = kind.partition("+")
        bigstore.quantize(w, url, scheme, 32, include=("*.weight",), chunk_bytes="4KiB",
                          codec=codec or None)
    return url


def _read(ts: bigstore.TensorStore, staged: dict | None = None, direct: bool = False,
          jobs: int | None = None) -> dict[str, np.ndarray]:
    outs = {n: np.empty(ts.meta(n).nbytes, np.uint8) for n in ts}
    ts.reader.read_rows([RowRequest(ts.meta(n), 0, ts.meta(n).rows, memoryview(outs[n]))
                         for n in ts], direct=direct, staged=staged, jobs=jobs)
    return outs


def _bytes(n: int) -> memoryview:
    return memoryview(bytearray(n))


@pytest.mark.parametrize("kind", ["int4", "int8", "int4+lossless", "lossless"])
@pytest.mark.parametrize("direct", [False, True])
def test_staged_bytes_are_the_ones_read(tmp_path: Path, kind: str, direct: bool) -> None:
    url = _store(tmp_path, kind)
    with bigstore.open(url) as ts:
        want = _read(ts)
        layouts = [ts.meta(n) for n in ts]
        fetches = ts.reader.fetches(layouts)
        assert fetches and len(set(fetches)) == len(fetches)
        assert ts.reader.fetches([lay for lay in layouts if not lay.decoded]) == []
        staged = {f: ts.reader.fetch(f, _bytes, direct=direct) for f in fetches}
        # every stored object of a decoded tensor is overwritten with other bytes of its size:
        # a read that went to the files now would fail its checksum
        keys = {f[0] for f in fetches}
        for key in keys:
            p = Path(url) / key
            p.write_bytes(bytes(255 - b for b in p.read_bytes()))
        with pytest.raises(BigstoreError):
            _read(ts, direct=direct)
        got = _read(ts, staged, direct=direct, jobs=1)  # (one read and decode at a time)
    for n in want:
        assert np.array_equal(got[n], want[n]), n


@pytest.mark.parametrize("kind", ["int4", "lossless"])
def test_damaged_or_short_staged_bytes_are_caught(tmp_path: Path, kind: str) -> None:
    url = _store(tmp_path, kind)
    with bigstore.open(url) as ts:
        fetches = ts.reader.fetches(ts.meta(n) for n in ts)
        good = {f: ts.reader.fetch(f, _bytes) for f in fetches}
        f = max(fetches, key=lambda f: good[f].nbytes)  # a data chunk, not a crc-sized one
        damaged = dict(good)
        damaged[f] = _bytes(good[f].nbytes)
        damaged[f][:] = good[f]
        damaged[f][good[f].nbytes // 2] ^= 0x10
        name = f[0].split("/")[0]
        with pytest.raises(ChecksumError, match=name):
            _read(ts, damaged)
        short = dict(good)
        short[f] = good[f][:-5]
        with pytest.raises(BigstoreError, match=name):
            _read(ts, short)
        _read(ts, good)  # the store itself was never touched
