"""Any filesystem fsspec reaches (s3://, gs://, az://, http(s)://, memory://, ...).

Batched calls (``cat`` over many paths, ``cat_ranges``) run concurrently on fsspec's own event
loop for async backends such as s3fs. The filesystem object is created lazily per process, so a
store handed to a forked DataLoader worker never reuses the parent's event loop or sockets.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import StoreNotFoundError
from ..forksafe import PerProcess
from ._base import Buffer, ByteRange, Store, check_key

__all__ = ["FsspecStore"]


class FsspecStore(Store):
    is_remote = True

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url.rstrip("/"))
        self.storage_options = dict(storage_options or {})
        self._root: str | None = None
        self._made_in = os.getpid()
        # the client (with its event loop and sockets) belongs to one process; pickling ships
        # the URL and options only, and a forked child makes its own
        self._client: PerProcess[Any] = PerProcess(self._connect)

    def _connect(self) -> Any:
        import fsspec

        opts = dict(self.storage_options)
        if os.getpid() != self._made_in:  # a cached instance would hold the parent's loop
            opts["skip_instance_cache"] = True
        try:
            fs, root = fsspec.core.url_to_fs(self.url, **opts)
        except TypeError as e:  # an option the filesystem does not take
            from ..errors import InvalidURLError

            raise InvalidURLError(f"{self.url}: bad storage options ({e})") from None
        self._root = root.rstrip("/")
        return fs

    @property
    def fs(self) -> Any:
        return self._client.get()

    def __getstate__(self) -> dict[str, Any]:
        # spawn/forkserver workers get the URL and options, never a client
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], storage_options=state["storage_options"])  # type: ignore[misc]

    @property
    def root(self) -> str:
        """The store's root path inside its filesystem (known once the client exists)."""
        self._client.get()
        return self._root or ""

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

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

    def version(self, key: str) -> str | None:
        try:
            info = self.fs.info(self._path(key))
        except FileNotFoundError:
            raise self._missing(key) from None
        parts = [f"{k}={info[k]}" for k in ("ETag", "ETAG", "etag", "LastModified", "mtime",
                                             "created", "generation", "size") if k in info]
        return ";".join(parts) or None

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        path = self._path(key)
        payload = bytes(memoryview(data).cast("B"))
        if self.fs.protocol in ("s3", "s3a") or "s3" in tuple(self.fs.protocol):
            try:
                self.fs.pipe_file(path, payload, mode="create")  # If-None-Match: *
            except FileExistsError:
                return False
            except OSError:
                if self.fs.exists(path):  # a precondition failure reported as another errno
                    return False
                raise
            return True
        return super().put_if_absent(key, payload)

    def staging(self, tag: str) -> FsspecStore:
        return FsspecStore(self.url + tag, storage_options=self.storage_options)

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._path(key)))
        except FileNotFoundError:
            raise self._missing(key) from None

    def list(self, prefix: str = "") -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            found = self.fs.find(base)
        except FileNotFoundError:
            return
        root = self.root.rstrip("/") + "/"
        for p in found:
            p = p if not self.root or p.startswith(root) else "/" + p  # memory:// drops '/'
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
        base = self._path(prefix) if prefix else self.root
        try:
            if self.fs.exists(base):
                self.fs.rm(base, recursive=True)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache()
