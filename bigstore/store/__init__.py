"""Stores: where bytes live. ``open_store(url)`` picks the backend from the URL's scheme."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidURLError
from ._base import Buffer, ByteRange, Store, check_key, join_key
from ._cache import CachedStore, default_cache_dir
from ._fsspec import FsspecStore
from ._local import LocalStore
from ._memory import MemoryStore
from ._wrapped import WrappedStore

__all__ = [
    "Buffer", "ByteRange", "CachedStore", "FsspecStore", "LocalStore", "MemoryStore", "Store",
    "WrappedStore", "check_key", "default_cache_dir", "is_local_url", "join_key", "local_path",
    "open_store",
]

# Install hints for fsspec protocols whose backend lives in another package.
_HINTS = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs",
}


def is_local_url(url: str | os.PathLike[str]) -> bool:
    s = os.fspath(url)
    return "://" not in s or s.startswith("file://")


def local_path(url: str | os.PathLike[str]) -> str:
    s = os.fspath(url)
    return s[len("file://") :] if s.startswith("file://") else s


def open_store(
    url: str | os.PathLike[str] | Store,
    storage_options: Mapping[str, Any] | None = None,
) -> Store:
    """A Store for ``url``: a local path (default), ``memory://``, or any fsspec URL."""
    if isinstance(url, Store):
        return url
    s = os.fspath(url)
    if not s:
        raise InvalidURLError("empty store URL")
    if is_local_url(s):
        return LocalStore(local_path(s), **dict(storage_options or {}))
    protocol = s.split("://", 1)[0]
    if protocol == "memory" and not storage_options:
        return MemoryStore(s)
    import fsspec

    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        raise InvalidURLError(f"{s}: no filesystem is registered for '{protocol}://'") from None
    except ImportError:
        pkg = _HINTS.get(protocol, f"the fsspec backend for '{protocol}'")
        raise InvalidURLError(f"{s}: install {pkg} to access '{protocol}://' URLs") from None
    return FsspecStore(s, storage_options=storage_options)
