"""The local store's descriptor cache under concurrent reads: a descriptor another thread is
reading through is never closed (its number would be reused by the next open, and that read
would return another file's bytes)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from bigstore.store import open_store
from bigstore.store._local import LocalStore, _FdCache

pytestmark = pytest.mark.timeout(120)


def test_reads_through_an_evicting_cache_get_their_own_files(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_FdCache, "limit", 3)  # evictions on almost every open
    n = 24
    contents = {f"f{i}": bytes([i]) * (4096 + 512 * i) for i in range(n)}
    for key, data in contents.items():
        (tmp_path / key).write_bytes(data)
    store = open_store(str(tmp_path))
    errors: list[str] = []

    def reader(seed: int) -> None:
        for j in range(400):
            key = f"f{(seed * 7 + j * 5) % n}"
            want = contents[key]
            buf = bytearray(len(want))
            try:
                store.read_into(key, 0, [memoryview(buf)])
            except Exception as e:  # collected, asserted below
                errors.append(f"{key}: {e}")
                continue
            if buf != want:
                errors.append(f"{key}: read another file's bytes")
            if store.read_tail(key, 100)[0] != len(want):
                errors.append(f"{key}: another file's size")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]


def test_forgotten_descriptor_in_use_is_closed_after_its_read(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 10)
    store = open_store(str(tmp_path))
    assert isinstance(store, LocalStore)
    cache = _FdCache()
    with cache.lease("a", store) as fd:
        cache.forget("a")  # the file was replaced meanwhile: the read in progress keeps its fd
        assert cache.open_count == 1
        assert os.pread(fd, 10, 0) == b"x" * 10
    assert cache.open_count == 0
