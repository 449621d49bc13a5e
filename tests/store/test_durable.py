"""Durability: with ``durable=True`` (the default) every file and directory a write made is
fsynced before its commit, and the commit itself after; appends fsync only what they wrote;
``durable=False`` fsyncs nothing. The real ``os.fsync`` runs: the spy only records its paths."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

import bigstore
from bigstore import posix
from bigstore.data import open_dataset, write_dataset


class Syncs:
    """Every fsync (file or directory, any thread) and every commit step, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def fsynced(self) -> list[str]:
        return [p for kind, p in self.events if kind == "fsync"]

    def before(self, kind: str) -> list[str]:
        """Paths fsynced before the first event of ``kind``."""
        i = next(i for i, (k, _) in enumerate(self.events) if k == kind)
        return [p for k, p in self.events[:i] if k == "fsync"]


@pytest.fixture
def syncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Syncs]:
    s = Syncs()
    real_fsync, real_exchange, real_rename = os.fsync, posix.renameat2_exchange, os.rename

    def fsync(fd: int) -> None:
        s.events.append(("fsync", str(Path(f"/proc/self/fd/{fd}").readlink())))
        real_fsync(fd)

    def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
        s.events.append(("commit", str(b)))
        return bool(real_exchange(a, b))

    def rename(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        if ".bigstore-tmp-" in str(a):  # publishing a staging directory: the commit
            s.events.append(("commit", str(b)))
        real_rename(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(posix, "renameat2_exchange", exchange)
    monkeypatch.setattr(os, "rename", rename)
    yield s


def files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def staged(paths: list[str], target: Path) -> set[str]:
    """The fsynced paths inside ``target``'s staging directory, relative to it."""
    prefix = f".{target.name}.bigstore-tmp-"
    out = set()
    for p in map(Path, paths):
        for parent in (p, *p.parents):
            if parent.name.startswith(prefix):
                out.add(p.relative_to(parent).as_posix() if p != parent else ".")
                break
    return out


@pytest.mark.parametrize("existing", [False, True])
def test_a_durable_save_syncs_everything_before_its_commit(
    tmp_path: Path, syncs: Syncs, existing: bool
) -> None:
    url = tmp_path / "ckpt"
    if existing:  # replaced by renameat2(RENAME_EXCHANGE); else renamed into place
        bigstore.save({"old": torch.zeros(3)}, url, durable=False)
    syncs.events.clear()
    bigstore.save({"w": torch.arange(3000.0).reshape(3, 1000), "b": torch.ones(3)}, url,
                  chunk_bytes=4096)
    before = staged(syncs.before("commit"), url)
    stored = files(url)
    assert stored <= before  # every file, the root (the commit marker) included
    dirs = {d for f in stored for d in [str(Path(f).parent)]} | {"."}
    assert dirs <= before  # and every directory holding them
    after = syncs.events[[k for k, _ in syncs.events].index("commit"):]
    assert ("fsync", str(tmp_path)) in after  # the commit (a rename in the parent) itself
    assert torch.equal(bigstore.load(url)["b"], torch.ones(3))


def test_a_durable_dataset_write_syncs_everything_before_its_commit(
    tmp_path: Path, syncs: Syncs
) -> None:
    url = tmp_path / "ds"
    write_dataset(url, {"x": np.arange(1000), "t": ["ab"] * 1000}, chunk_rows=64,
                  shard_bytes=2048)
    before = staged(syncs.before("commit"), url)
    assert files(url) <= before
    assert ("fsync", str(tmp_path)) in syncs.events[-3:]


def test_appends_fsync_only_what_they_wrote(tmp_path: Path, syncs: Syncs) -> None:
    url = tmp_path / "ds"
    write_dataset(url, {"x": np.arange(1000, dtype=np.int64), "t": ["ab"] * 1000},
                  chunk_rows=64, shard_bytes=2048)
    mtimes = {f: (url / f).stat().st_mtime_ns for f in files(url)}
    syncs.events.clear()
    write_dataset(url, {"x": np.arange(1000, 1100, dtype=np.int64), "t": ["cd"] * 100},
                  mode="a")
    synced = {Path(p).relative_to(url).as_posix() for p in syncs.fsynced()
              if Path(p).is_relative_to(url)}
    changed = {f for f in files(url) if mtimes.get(f) != (url / f).stat().st_mtime_ns}
    untouched = files(url) - changed
    assert len(untouched) >= 10  # most shards were not rewritten ...
    assert not synced & untouched  # ... and none of them was fsynced
    assert changed <= synced  # every new or rewritten object was, the root last
    assert syncs.fsynced()[-2:] == [str(url / "zarr.json"), str(url)]
    ds = open_dataset(url)
    assert len(ds) == 1100 and ds[1099]["t"] == "cd"


def test_not_durable_syncs_nothing(tmp_path: Path, syncs: Syncs) -> None:
    bigstore.save({"w": torch.ones(5)}, tmp_path / "w", durable=False)
    bigstore.save({"w": torch.zeros(5)}, tmp_path / "w", durable=False)
    write_dataset(tmp_path / "d", {"x": np.arange(10)}, durable=False)
    write_dataset(tmp_path / "d", {"x": np.arange(10)}, durable=False, mode="a")
    assert syncs.fsynced() == []
    assert len(open_dataset(tmp_path / "d")) == 20
