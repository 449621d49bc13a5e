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


_VERSION_FIELDS = ("ETag", "ETAG", "etag", "LastModified", "mtime", "created", "generation",
                   "size")


def _etag(token: str) -> str | None:
    for part in token.split(";"):
        name, _, value = part.partition("=")
        if name in ("ETag", "ETAG", "etag"):
            return value
    return None


def _condition_failed(e: BaseException) -> bool:
    """A 412 Precondition Failed (or 409 ConditionalRequestConflict: a concurrent conditional
    write) behind whatever OSError s3fs turned it into."""
    for err in (e, e.__cause__, e.__context__):
        response = getattr(err, "response", None)
        if isinstance(response, dict):
            code = str((response.get("Error") or {}).get("Code", ""))
            status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict", "412", "409") or (
                status in (409, 412)
            ):
                return True
    return False


class FsspecStore(Store):
    is_remote = True

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        super().__init__(url.rstrip("/"))
        self.storage_options = dict(storage_options or {})
        self._root: str | None = None
        self._made_in = os.getpid()
        self._parent: FsspecStore | None = None  # a staging store shares its store's client
        # the client (with its event loop and sockets) belongs to one process; pickling ships
        # the URL and options only, and a forked child makes its own
        self._client: PerProcess[Any] = PerProcess(self._connect)

    def _connect(self) -> Any:
        import fsspec

        parent = self._parent.fs if self._parent is not None else None
        if parent is not None and os.getpid() == self._made_in:
            # same filesystem, same options: no second client (a new one costs ~0.5 s on S3)
            self._root = str(type(parent)._strip_protocol(self.url)).rstrip("/")
            return parent
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

    def is_file(self) -> bool:
        return bool(self.root) and bool(self.fs.isfile(self.root))

    def exists(self, key: str) -> bool:
        return bool(self.fs.isfile(self._path(key)))

    def version(self, key: str) -> str | None:
        path = self._path(key)
        self.fs.invalidate_cache(path)  # a listing's cached entry would hide a replacement
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            raise self._missing(key) from None
        parts = [f"{k}={info[k]}" for k in _VERSION_FIELDS if k in info]
        return ";".join(parts) or None

    @property
    def _s3(self) -> bool:
        proto = self.fs.protocol
        return proto in ("s3", "s3a") or "s3" in tuple(proto)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        path = self._path(key)
        payload = bytes(memoryview(data).cast("B"))
        if self._s3:
            try:
                self.fs.pipe_file(path, payload, mode="create")  # If-None-Match: *
            except FileExistsError:
                return False
            except OSError as e:
                if _condition_failed(e) or self.fs.exists(path):
                    return False
                raise
            finally:
                self.fs.invalidate_cache(path)
            return True
        return super().put_if_absent(key, payload)

    # S3 conditional writes and deletes (If-Match on the ETag): atomic compare-and-swap
    def replace_if(self, key: str, data: Buffer, token: str) -> str | None:
        etag = _etag(token)
        if not self._s3 or etag is None:
            return super().replace_if(key, data, token)
        bucket, obj = self._split(key)
        try:
            self.fs.call_s3("put_object", Bucket=bucket, Key=obj,
                            Body=bytes(memoryview(data).cast("B")), IfMatch=etag)
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or _condition_failed(e):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self._path(key))
        return self.token(key)

    def delete_if(self, key: str, token: str) -> bool:
        etag = _etag(token)
        if not self._s3 or etag is None:
            return super().delete_if(key, token)
        bucket, obj = self._split(key)
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=obj, IfMatch=etag)
        except (FileNotFoundError, OSError) as e:
            if isinstance(e, FileNotFoundError) or _condition_failed(e):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self._path(key))
        return True

    def _split(self, key: str) -> tuple[str, str]:
        bucket, obj, _ = self.fs.split_path(self._path(key))
        return str(bucket), str(obj)

    def staging(self, tag: str) -> FsspecStore:
        stage = FsspecStore(self.url + tag, storage_options=self.storage_options)
        stage._parent = self
        return stage

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

    def put(
        self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False
    ) -> None:
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
