"""Staging and publication of a freshly written store, shared by every writer.

A writer never writes into the live store. It writes into a sibling staging location
(:func:`make_staging`) and :func:`publish` swaps it into place:

* backends that can (local directories: one ``renameat2(RENAME_EXCHANGE)``; memory stores: one
  step under their lock) replace the old contents atomically: readers see the old store or the
  new one, never a mix;
* others (object storage): the old root ``zarr.json`` (the commit marker) is removed first, then
  the old objects, then the new objects are copied in and the new root is written last. A crash
  in that window leaves a store ``open`` refuses with a clear message, never a mix.

Before publishing, the stage is flushed (local files: fsync of every file and directory), so a
power loss after the commit never finds the commit pointing at bytes that were not written.
A writer killed before publishing leaves the old store untouched; its local staging directory
is removed by the next writer to the same place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..errors import NotAStoreError, StoreNotFoundError
from ._base import Store

__all__ = ["STAGE_TAG", "check_replaceable", "discard", "make_staging", "publish", "stored_kind"]

STAGE_TAG = ".bigstore-tmp-"
ROOT_KEY = "zarr.json"


def stored_kind(target: Store) -> str | None:
    """The bigstore kind ("tensors", "dataset") of what ``target`` holds; None when empty.

    Raises NotAStoreError when it holds something that is not a bigstore store. Writers ask
    under the store's writer lock: another writer's publication is then not half done."""
    try:
        raw: bytes | None = bytes(memoryview(target.get(ROOT_KEY)).cast("B"))
    except StoreNotFoundError:
        raw = None
    if raw is not None:
        try:
            doc = json.loads(raw)
            own = (doc.get("attributes") or {}).get("bigstore") if isinstance(doc, dict) else None
        except (ValueError, AttributeError):
            own = None
        if isinstance(own, dict):
            return str(own.get("kind", ""))
    elif target.is_file():
        raise NotAStoreError(f"{target.url} is a file: no store can be written there")
    elif not any(True for _ in target.list()):
        return None
    else:  # data but no commit marker: an interrupted bigstore write, or a stranger's files
        return "" if _looks_interrupted(target) else _refuse(target)
    return _refuse(target)


def _looks_interrupted(target: Store) -> bool:
    return any(k.endswith("/zarr.json") for k in target.list())


def _refuse(target: Store) -> str:
    raise NotAStoreError(
        f"refusing to overwrite {target.url}: it holds data that is not a bigstore store "
        "(remove it yourself or write somewhere else)"
    )


def check_replaceable(target: Store, kind: str, *, overwrite: bool = False) -> None:
    """Refuse to replace anything but an empty location, an interrupted write, or a bigstore
    store of the same ``kind`` (another kind only with ``overwrite=True``)."""
    have = stored_kind(target)
    if have and have != kind and not overwrite:
        raise NotAStoreError(
            f"{target.url} holds a bigstore {have} store; writing {kind} there would destroy "
            "it: pass overwrite=True to replace it"
        )


def make_staging(target: Store) -> Store:
    """A fresh, empty staging store beside ``target``."""
    local = target.local_file(ROOT_KEY)
    if local is not None:
        _remove_stale_staging(Path(local[0]).parent)
    # the pid lets the next writer recognise a killed writer's leftovers
    return target.staging(f"{STAGE_TAG}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _remove_stale_staging(root: Path) -> None:
    prefix = f".{root.name}{STAGE_TAG}"
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


def publish(stage: Store, target: Store, *, durable: bool = True) -> None:
    """Make ``stage``'s contents the contents of ``target`` (see the module docstring)."""
    if durable:
        stage.flush()
    if target.replace_with(stage, durable=durable):
        return
    target.delete(ROOT_KEY)  # uncommit first: from here on, open() refuses the half state
    target.delete_prefix("")
    keys = [k for k in stage.list() if k != ROOT_KEY]

    def copy(key: str) -> None:
        target.put(key, stage.get(key))

    # a short-lived pool: object stores want many requests in flight
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="bigstore-publish") as pool:
        for _ in pool.map(copy, keys):
            pass
    target.put(ROOT_KEY, stage.get(ROOT_KEY))  # the commit marker, last
    discard(stage)
