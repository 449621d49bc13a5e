"""Cold runs and where the bytes came from: the contamination flag is raised when a "cold"
run is made warm on purpose, and not raised on a truly cold one; a drop that cannot work
(tmpfs, a mapped file) is said so."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import pytest

from bigstore.bench import drop_page_cache, read_seconds, resident_bytes
from bigstore.bench.cold import ColdCache
from bigstore.bench.machine import filesystem_of
from bigstore.bench.runs import Case, Outcome, measure
from bigstore.bench.synthetic import write_random_file

SIZE = 4 << 20


def _file(tmp_path: Path) -> Path:
    f = tmp_path / "data.bin"
    write_random_file(f, SIZE)
    return f


def _cold_or_skip(f: Path) -> None:
    """Skip (with the reason) where this file system does not let us drop its pages."""
    drop_page_cache([f])
    left = resident_bytes([f])
    if left is None:
        pytest.skip("mincore is unavailable: page-cache residency cannot be read")
    if left > SIZE // 20:
        pytest.skip(f"{filesystem_of(f) or 'this'} file system keeps pages cached after "
                    "POSIX_FADV_DONTNEED (tmpfs/overlay): no cold run is possible here")


def _case(f: Path, warm_on_purpose: bool) -> Case:
    def read() -> Outcome:
        dt, n = read_seconds([f], direct=False)
        return Outcome(n, seconds=dt)

    return Case("buffered read", "cold", "bound", read, files=[f], cold=True,
                before_run=(lambda: read_seconds([f], direct=False)) if warm_on_purpose
                else None)


def test_residency_follows_reads_and_drops(tmp_path: Path) -> None:
    f = _file(tmp_path)
    _cold_or_skip(f)
    assert resident_bytes([f]) == pytest.approx(0, abs=SIZE // 20)
    read_seconds([f], direct=False)
    resident = resident_bytes([f])
    assert resident is not None and resident >= SIZE * 0.95


def test_truly_cold_run_is_not_flagged(tmp_path: Path) -> None:
    f = _file(tmp_path)
    _cold_or_skip(f)
    (row,) = measure([_case(f, warm_on_purpose=False)], runs=2)
    d = row.to_dict()
    assert d["cold_honoured"] is True
    assert d["cache_contaminated"] is False
    assert d["device_bytes"] >= 0.9 * SIZE  # the bytes came from the device
    assert d["bytes"] == SIZE


def test_cold_run_made_warm_on_purpose_is_flagged(tmp_path: Path) -> None:
    f = _file(tmp_path)
    _cold_or_skip(f)
    (row,) = measure([_case(f, warm_on_purpose=True)], runs=2)
    d = row.to_dict()
    assert d["cache_contaminated"] is True
    assert d["device_bytes"] < 0.5 * SIZE
    assert d["per_run"][0]["metrics"]["resident_before_bytes"] >= 0.95 * SIZE


def test_tmpfs_cannot_be_dropped_and_says_so() -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or filesystem_of(shm) != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    f = shm / f"bigstore-bench-test-{os.getpid()}"
    try:
        write_random_file(f, 1 << 20)
        result = ColdCache([f]).drop()
        assert result.ok is False
        assert result.reason is not None and "tmpfs" in result.reason
        # a "cold" row over it is flagged, not silently reported
        (row,) = measure([_case(f, warm_on_purpose=False)], runs=1)
        assert row.to_dict()["cold_honoured"] is False
        assert row.to_dict()["cache_contaminated"] is True
    finally:
        f.unlink(missing_ok=True)


def test_a_mapped_file_is_named_in_the_note(tmp_path: Path) -> None:
    f = _file(tmp_path)
    with f.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as m:
        m[:: mmap.PAGESIZE]
        result = ColdCache([f]).drop()
        assert result.mapped == 1
        assert result.reason is not None and "mapped" in result.reason
