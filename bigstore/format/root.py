"""The store's root ``zarr.json``: format version, kind, and the commit marker.

The root document is written last, after every chunk and array document: its presence is the
commit. It also carries zarr-python's inline consolidated metadata (every array's document), so
opening a store with thousands of tensors is one read, on local disk and on object storage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    FormatVersionError,
    IncompleteStoreError,
    NotAStoreError,
    StoreNotFoundError,
)
from ..store import Store

__all__ = ["FORMAT_VERSION", "QUANTIZED_VERSION", "ROOT_KEY", "RootDoc", "read_root", "write_root"]

FORMAT_VERSION = 2  # the newest version this reader knows
QUANTIZED_VERSION = 2  # added quantized tensors (a group of parts per tensor)
ROOT_KEY = "zarr.json"


@dataclass(frozen=True)
class RootDoc:
    kind: str  # "tensors" or "dataset"
    format_version: int
    attrs: dict[str, Any] = field(default_factory=dict)  # bigstore's own root attributes
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> array document


def encode_root(kind: str, attrs: dict[str, Any], arrays: dict[str, dict[str, Any]],
                version: int = 1) -> bytes:
    from ..version import __version__

    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {
            "bigstore": {
                **attrs,
                "format_version": version,
                "kind": kind,
                "written_by": f"bigstore {__version__}",
            }
        },
        "consolidated_metadata": {"kind": "inline", "must_understand": False, "metadata": arrays},
    }
    return json.dumps(doc, indent=1).encode()


def write_root(store: Store, kind: str, attrs: dict[str, Any], arrays: dict[str, Any], *,
               version: int = 1) -> None:
    """Commit: ``version`` is the oldest format version that describes what was written (1
    unless the store uses a later addition), so older readers still open what they can read."""
    store.put(ROOT_KEY, encode_root(kind, attrs, arrays, version))


def read_root(store: Store, *, expect_kind: str | None = None) -> RootDoc:
    """Read and check the root: present, committed, a bigstore store, a version we know."""
    try:
        raw = store.get(ROOT_KEY)
    except StoreNotFoundError:
        if any(True for _ in store.list()):
            raise IncompleteStoreError(
                f"{store.url} holds data but no commit marker (root zarr.json): "
                "a write was interrupted, or this is not a bigstore store; write it again"
            ) from None
        raise StoreNotFoundError(f"no bigstore store at {store.url}") from None
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise NotAStoreError(f"{store.url}/zarr.json is not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("zarr_format") != 3 or doc.get("node_type") != "group":
        raise NotAStoreError(f"{store.url} is not a Zarr v3 group")
    attrs = (doc.get("attributes") or {}).get("bigstore")
    if not isinstance(attrs, dict) or "format_version" not in attrs:
        raise NotAStoreError(f"{store.url} is a Zarr v3 group but not a bigstore store")
    version = attrs["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise FormatVersionError(
            f"{store.url} was written with bigstore format version {version}; this bigstore "
            f"reads versions 1..{FORMAT_VERSION}: upgrade bigstore to read it"
        )
    kind = attrs.get("kind")
    if expect_kind is not None and kind != expect_kind:
        raise NotAStoreError(f"{store.url} holds a bigstore {kind}, not {expect_kind}")
    arrays = (doc.get("consolidated_metadata") or {}).get("metadata") or {}
    own = {k: v for k, v in attrs.items() if k not in ("format_version", "kind")}
    return RootDoc(str(kind), int(version), own, dict(arrays))
