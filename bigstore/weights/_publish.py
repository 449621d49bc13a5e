"""Staging and atomic publication of a freshly written store.

A writer never writes into the live store. It writes into a sibling staging location, and
publishing swaps the staging store into place:

* local directories: one ``renameat2(RENAME_EXCHANGE)`` swaps old and new atomically (two plain
  renames where the kernel lacks it); readers see the old store or the new one, never a mix;
* other stores (object storage, memory): the old root ``zarr.json`` (the commit marker) is
  removed first, then the old objects, then the new objects are copied in and the new root is
  written last. A crash in that window leaves a store ``open`` refuses with a clear message.

A writer killed before publishing leaves the old store untouched; its staging directory is
removed by the next writer to the same place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path

from ..errors import NotAStoreError
from ..format import ROOT_KEY
from ..io import get_executor
from ..store import LocalStore, Store, open_store
from ..store._fsspec import FsspecStore
from ..store._memory import MemoryStore

__all__ = ["check_replaceable", "make_staging", "publish", "discard"]

_STAGE_TAG = ".bigstore-tmp-"


def check_replaceable(target: Store) -> None:
    """Refuse to replace anything that is not (an interrupted write of) a bigstore store."""
    if target.exists(ROOT_KEY):
        import json

        try:
            doc = json.loads(bytes(target.get(ROOT_KEY)))
            ok = isinstance(doc, dict) and "bigstore" in (doc.get("attributes") or {})
        except ValueError:
            ok = False
        if ok:
            return
    elif not any(True for _ in target.list()):
        return
    raise NotAStoreError(
        f"refusing to overwrite {target.url}: it holds data that is not a bigstore store "
        "(remove it yourself or write somewhere else)"
    )


def make_staging(target: Store) -> Store:
    if isinstance(target, LocalStore):
        root = target.root
        root.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(root)
        stage = root.parent / f".{root.name}{_STAGE_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        stage.mkdir()
        return LocalStore(stage, access=target.access)
    if isinstance(target, FsspecStore):
        return FsspecStore(
            f"{target.url}{_STAGE_TAG}{uuid.uuid4().hex[:12]}",
            storage_options=target.storage_options,
        )
    return open_store(f"{target.url}{_STAGE_TAG}{uuid.uuid4().hex[:12]}")


def _remove_stale_staging(root: Path) -> None:
    prefix = f".{root.name}{_STAGE_TAG}"
    for p in root.parent.glob(prefix + "*"):
        pid_s = p.name[len(prefix) :].split("-", 1)[0]
        if pid_s.isdigit() and not _alive(int(pid_s)):
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def discard(stage: Store) -> None:
    with contextlib.suppress(Exception):
        stage.delete_prefix("")


def publish(stage: Store, target: Store) -> None:
    """Make ``stage``'s contents the contents of ``target`` (see the module docstring)."""
    if isinstance(stage, LocalStore) and isinstance(target, LocalStore):
        _publish_local(stage.root, target.root)
        target.close()
        return
    if isinstance(stage, MemoryStore) and isinstance(target, MemoryStore):
        new = dict(stage._data)
        with target._lock:
            target._data.clear()
            target._data.update(new)
        discard(stage)
        return
    target.delete(ROOT_KEY)  # uncommit first: from here on, open() refuses the half state
    target.delete_prefix("")
    keys = [k for k in stage.list() if k != ROOT_KEY]

    def copy(key: str) -> None:
        target.put(key, stage.get(key))

    for _ in get_executor().map(copy, keys):
        pass
    target.put(ROOT_KEY, stage.get(ROOT_KEY))  # the commit marker, last
    discard(stage)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _publish_local(stage: Path, target: Path) -> None:
    if not target.exists():
        os.rename(stage, target)
        return
    if target.is_dir() and not any(target.iterdir()):
        os.rename(stage, target)  # replaces an empty directory atomically
        return
    if _renameat2_exchange(stage, target):
        shutil.rmtree(stage)  # now holds the old store
        return
    old = target.parent / f".{target.name}.bigstore-old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    os.rename(target, old)
    os.rename(stage, target)
    shutil.rmtree(old, ignore_errors=True)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    from ..io.mapping import _lib

    fn = getattr(_lib(), "renameat2", None)
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(rc == 0)
