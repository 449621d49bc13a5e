"""The store's root ``zarr.json``: format version, kind, and the commit marker.

The root document is written last, after every chunk and array document: its presence is the
commit. It also carries zarr-python's inline consolidated metadata (every array's document), so
opening a store with thousands of tensors is one read, on local disk and on object storage.

Its ``write_id`` names the contents: a random id chosen by every write that replaces them (a
save, a dataset write) and kept by appends, which never change committed bytes. A reader records
the commit it opened as a :class:`Stamp` (the commit marker's version, the write id) and so
tells "appended since" (reads go on) from "replaced since" (:class:`StoreChangedError`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    FormatVersionError,
    IncompleteStoreError,
    NotAStoreError,
    StoreNotFoundError,
)
from ..store import Store

__all__ = ["FORMAT_VERSION", "QUANTIZED_VERSION", "ROOT_KEY", "RootDoc", "Stamp", "read_root",
           "read_stamped", "write_root"]

FORMAT_VERSION = 2  # the newest version this reader knows
QUANTIZED_VERSION = 2  # added quantized tensors (a group of parts per tensor)
ROOT_KEY = "zarr.json"


@dataclass(frozen=True)
class RootDoc:
    kind: str  # "tensors" or "dataset"
    format_version: int
    attrs: dict[str, Any] = field(default_factory=dict)  # bigstore's own root attributes
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> array document

    @property
    def write_id(self) -> str | None:
        """The id of the write that made these contents (None: a store from before ids)."""
        wid = self.attrs.get("write_id")
        return wid if isinstance(wid, str) else None


@dataclass(frozen=True)
class Stamp:
    """The commit a reader opened: the commit marker's version token (None when the backend
    has none: then nothing can be checked) and the root's write id."""

    version: str | None
    write_id: str | None


def encode_root(
    kind: str, attrs: dict[str, Any], arrays: dict[str, dict[str, Any]],
    write_id: str | None = None, version: int = 1,
) -> bytes:
    from ..version import __version__

    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {
            "bigstore": {
                **attrs,
                "format_version": version,
                "kind": kind,
                "write_id": write_id or uuid.uuid4().hex,
                "written_by": f"bigstore {__version__}",
            }
        },
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": arrays},
    }
    return json.dumps(doc, indent=1).encode()


def write_root(
    store: Store, kind: str, attrs: dict[str, Any], arrays: dict[str, Any],
    write_id: str | None = None, *, version: int = 1,
) -> None:
    """Commit: write the root document. ``write_id``: keep the contents' id (appends); None
    for a new one (writes that replace the contents). ``version``: the oldest format version
    that describes what was written (1 unless the store uses a later addition), so older
    readers still open what they can read."""
    store.put(ROOT_KEY, encode_root(kind, attrs, arrays, write_id, version))


def read_root(store: Store, *, expect_kind: str | None = None) -> RootDoc:
    """Read and check the root: present, committed, a bigstore store, a version we know."""
    try:
        raw = store.get(ROOT_KEY)
    except StoreNotFoundError:
        if store.is_file():
            raise NotAStoreError(f"{store.url} is a file, not a store") from None
        if any(True for _ in store.list()):
            raise IncompleteStoreError(
                f"{store.url} holds data but no commit marker (root zarr.json): "
                "a write was interrupted, or this is not a bigstore store; write it again"
            ) from None
        raise StoreNotFoundError(f"no bigstore store at {store.url}") from None
    try:
        doc = json.loads(bytes(memoryview(raw).cast("B")))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, a 5000-digit number...
        raise NotAStoreError(f"{store.url}/zarr.json is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise NotAStoreError(f"{store.url} is not a Zarr v3 group")
    group_attrs = doc.get("attributes") or {}
    consolidated = doc.get("consolidated_metadata") or {}
    if not isinstance(group_attrs, dict) or not isinstance(consolidated, dict):
        raise NotAStoreError(f"{store.url}/zarr.json: malformed attributes or consolidated "
                             "metadata")
    attrs = group_attrs.get("bigstore")
    if not isinstance(attrs, dict) or "format_version" not in attrs:
        raise NotAStoreError(f"{store.url} is a Zarr v3 group but not a bigstore store")
    version = attrs["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or not (
        1 <= version <= FORMAT_VERSION
    ):
        raise FormatVersionError(
            f"{store.url} was written with bigstore format version {version}; this bigstore "
            f"reads versions 1..{FORMAT_VERSION}: upgrade bigstore to read it"
        )
    kind = attrs.get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise NotAStoreError(f"{store.url} holds a bigstore {kind}, not {expect_kind}")
    arrays = consolidated.get("metadata") or {}
    if not isinstance(arrays, dict) or not all(isinstance(d, dict) for d in arrays.values()):
        raise NotAStoreError(f"{store.url}/zarr.json: consolidated metadata is not a mapping "
                             "of node documents")
    own = {k: v for k, v in attrs.items() if k not in ("format_version", "kind")}
    return RootDoc(str(kind), int(version), own, dict(arrays))


def read_stamped(store: Store, *, expect_kind: str | None = None) -> tuple[RootDoc, Stamp]:
    """The root, and the stamp of the commit it belongs to. The version is taken first: a
    replacement in between then shows as a changed version with the new id, which readers
    accept (the layout they hold is the new one), never as the old version with new contents."""
    try:
        version = store.version(ROOT_KEY)
    except StoreNotFoundError:
        version = None
    root = read_root(store, expect_kind=expect_kind)
    return root, Stamp(version, root.write_id)
