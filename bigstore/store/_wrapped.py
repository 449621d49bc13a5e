"""A store that passes every call to another one: the base of stores that observe or change
a few calls (a read-only view, a primed root document, test probes) and leave the rest alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING

from ..config import LOCK_STALE_AFTER
from ._base import Buffer, ByteRange, Store

if TYPE_CHECKING:
    from .lock import WriteLock

__all__ = ["WrappedStore"]


class WrappedStore(Store):
    """Delegates to ``inner``: reads, writes, capabilities and the conditional writes (so an
    S3 ``If-Match`` stays atomic through the wrapper). The reads the base class composes from
    :meth:`get` and :meth:`get_ranges` (``get_many``, ``read_into``, ``read_tail``) stay
    composed, so a wrapper that observes those two sees every byte read; one that only
    forwards can pass the inner store's faster versions through by overriding them."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner.url)
        self.inner = inner
        self.zero_copy_reads = inner.zero_copy_reads
        self.is_remote = inner.is_remote

    def get(self, key: str) -> Buffer:
        return self.inner.get(key)

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        return self.inner.get_ranges(key, ranges)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def put(self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False) -> None:
        self.inner.put(key, data, writeback=writeback)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.inner.delete_prefix(prefix)

    def is_file(self) -> bool:
        return self.inner.is_file()

    def local_file(self, key: str) -> tuple[str, int] | None:
        return self.inner.local_file(key)

    def version(self, key: str) -> str | None:
        return self.inner.version(key)

    def staging(self, tag: str) -> Store:
        return self.inner.staging(tag)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        return self.inner.put_if_absent(key, data)

    def token(self, key: str) -> str:
        return self.inner.token(key)

    def replace_if(self, key: str, data: Buffer, token: str) -> str | None:
        return self.inner.replace_if(key, data, token)

    def delete_if(self, key: str, token: str) -> bool:
        return self.inner.delete_if(key, token)

    def write_lock(
        self, timeout: float, *, stale_after: float = LOCK_STALE_AFTER
    ) -> AbstractContextManager[WriteLock]:
        return self.inner.write_lock(timeout, stale_after=stale_after)

    def replace_with(self, stage: Store, *, durable: bool = True) -> bool:
        inner = stage.inner if isinstance(stage, WrappedStore) else stage
        return self.inner.replace_with(inner, durable=durable)

    def drop_cache(self, key: str) -> None:
        self.inner.drop_cache(key)

    def flush(self, keys: Sequence[str] | None = None) -> None:
        self.inner.flush(keys)

    def close(self) -> None:
        self.inner.close()
