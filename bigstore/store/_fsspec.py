"""Any filesystem fsspec reaches (s3://, gs://, az://, http(s)://, memory://, ...).

Batched calls (``cat`` over many paths, ``cat_ranges``) run concurrently on fsspec's own event
loop for async backends such as s3fs. The filesystem object is created lazily per process, so a
store handed to a forked DataLoader worker never reuses the parent's event loop or sockets.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import StoreNotFoundError
from ._base import Buffer, ByteRange, Store, check_key

__all__ = ["FsspecStore"]


class FsspecStore(Store):
    def __init__(
        self,
        url: str,
        *,
        storage_options: Mapping[str, Any] | None = None,
        fs: Any = None,
        root: str | None = None,
    ) -> None:
        super().__init__(url.rstrip("/"))
        self.storage_options = dict(storage_options or {})
        self._fs = fs
        self._root = root
        self._pid = os.getpid() if fs is not None else -1
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Pickled into spawn/forkserver workers: ship the URL and options, never the client.
        state = self.__dict__.copy()
        state["_fs"] = None
        state["_pid"] = -1
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def fs(self) -> Any:
        with self._lock:
            if self._fs is None or self._pid != os.getpid():
                import fsspec

                opts = dict(self.storage_options)
                if self._pid != -1:  # re-made after fork: a cached instance holds the parent's loop
                    opts["skip_instance_cache"] = True
                fs, root = fsspec.core.url_to_fs(self.url, **opts)
                self._fs, self._root, self._pid = fs, root.rstrip("/"), os.getpid()
            return self._fs

    def _path(self, key: str) -> str:
        fs = self.fs
        del fs
        return f"{self._root}/{check_key(key)}"

    def _missing(self, key: str) -> StoreNotFoundError:
        return StoreNotFoundError(f"{self.url}/{key} does not exist")

    def get(self, key: str) -> Buffer:
        try:
            data: bytes = self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise self._missing(key) from None
        return data

    def get_many(self, keys: Sequence[str]) -> list[Buffer]:
        if len(keys) <= 1:
            return [self.get(k) for k in keys]
        paths = [self._path(k) for k in keys]
        out = self.fs.cat(paths, on_error="return")
        result: list[Buffer] = []
        for k, p in zip(keys, paths):
            v = out.get(p)
            if isinstance(v, FileNotFoundError) or v is None:
                raise self._missing(k)
            if isinstance(v, BaseException):
                raise v
            result.append(v)
        return result

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        if not ranges:
            return []
        path = self._path(key)
        try:
            out = self.fs.cat_ranges(
                [path] * len(ranges), [r.start for r in ranges], [r.end for r in ranges],
                on_error="return",
            )
        except FileNotFoundError:
            raise self._missing(key) from None
        for v in out:
            if isinstance(v, FileNotFoundError):
                raise self._missing(key)
            if isinstance(v, BaseException):
                raise v
        return list(out)

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError:
            raise self._missing(key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self._root or ""
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        root = (self._root or "").rstrip("/") + "/"
        for p in found:
            p = p if not self._root or p.startswith(root) else "/" + p  # memory:// drops '/'
            if p.startswith(root):
                yield p[len(root) :]

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(data) if not isinstance(data, bytes) else data
        else:
            payload = b"".join(bytes(memoryview(d).cast("B")) for d in data)
        self.fs.pipe_file(self._path(key), payload)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        base = self._path(prefix) if prefix else self._root or ""
        try:
            if self.fs.exists(base):
                self.fs.rm(base, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()
