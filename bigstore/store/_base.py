"""The Store contract: small, synchronous, thread-safe, batch-shaped.

Keys are '/'-separated paths relative to the store's root. Every backend validates keys with
:func:`check_key`, so no key can reach outside the root.
"""

from __future__ import annotations

import posixpath
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import LOCK_STALE_AFTER
from ..errors import InvalidKeyError, StoreNotFoundError, TruncatedChunkError

if TYPE_CHECKING:
    from .lock import WriteLock

__all__ = ["ByteRange", "Store", "check_key", "Buffer"]

# Anything exposing the buffer protocol: bytes, bytearray, memoryview, numpy arrays.
Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True, order=True)
class ByteRange:
    """Bytes [start, end) of one object."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.end < self.start:
            raise InvalidKeyError(f"invalid byte range [{self.start}, {self.end})")

    @property
    def length(self) -> int:
        return self.end - self.start


def check_key(key: str) -> str:
    """Return ``key`` if it names something inside the store; raise otherwise."""
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"store keys must be non-empty strings, got {key!r}")
    if "\\" in key or "\x00" in key:
        raise InvalidKeyError(f"key {key!r} contains a backslash or NUL byte")
    if key.startswith("/") or "://" in key:
        raise InvalidKeyError(f"key {key!r} is absolute: keys are relative to the store's root")
    parts = key.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise InvalidKeyError(
            f"key {key!r} escapes the store's root or has empty segments ('', '.', '..')"
        )
    return key


def join_key(*parts: str) -> str:
    return check_key(posixpath.join(*[p for p in parts if p]))


class Store(ABC):
    """Bytes by key. Implementations must be safe to call from several threads at once.

    Capabilities beyond plain bytes are optional methods with a neutral default, so callers
    ask the store instead of testing its type: :meth:`local_file` (memory-mappable objects),
    :meth:`replace_with` (atomic publication), :meth:`staging` (where writers stage),
    :meth:`version` (detect a replaced object).
    """

    #: True when :meth:`read_into` avoids an intermediate copy (local files: preadv).
    zero_copy_reads: bool = False
    #: True when bytes cross a network to get here: worth a local cache (object storage).
    is_remote: bool = False

    def __init__(self, url: str) -> None:
        self.url = url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    # -- reads --------------------------------------------------------------------------------
    @abstractmethod
    def get(self, key: str) -> Buffer:
        """The whole object. Raises StoreNotFoundError naming the key when absent."""

    @abstractmethod
    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        """Several byte ranges of one object, fetched concurrently where the backend can."""

    def get_into(self, key: str, alloc: Callable[[int], memoryview]) -> memoryview:
        """The whole object, read into ``alloc(size)`` (a buffer the caller reuses) where the
        backend reads into buffers without a copy (local files); the default returns
        :meth:`get`'s own buffer. Raises like :meth:`get`."""
        return memoryview(self.get(key)).cast("B")

    def get_many(self, keys: Sequence[str]) -> list[Buffer]:
        """Several whole objects; backends with concurrent I/O override this."""
        return [self.get(k) for k in keys]

    def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
        """Fill ``outs`` back to back with the bytes starting at ``offset`` (a scatter read).

        Raises TruncatedChunkError when the object ends before the buffers are full.
        The default fetches then copies; local files override it with one ``preadv``.
        """
        total = sum(o.nbytes for o in outs)
        (data,) = self.get_ranges(key, [ByteRange(offset, offset + total)])
        view = memoryview(data).cast("B")
        if view.nbytes < total:
            raise TruncatedChunkError(
                f"{self.url}/{key}: wanted {total} bytes at offset {offset}, got {view.nbytes}"
            )
        pos = 0
        for o in outs:
            o.cast("B")[:] = view[pos : pos + o.nbytes]
            pos += o.nbytes

    def read_tail(self, key: str, n: int) -> tuple[int, Buffer]:
        """(the object's size, its last ``n`` bytes or all of it when shorter): both of the
        same object, where the backend can promise it (local files: one open descriptor)."""
        size = self.size(key)
        (data,) = self.get_ranges(key, [ByteRange(max(0, size - n), size)])
        return size, data

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key under ``prefix`` (all keys when empty), in no particular order."""

    # -- writes -------------------------------------------------------------------------------
    @abstractmethod
    def put(
        self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False
    ) -> None:
        """Write an object whole (a sequence of buffers is written back to back).
        ``writeback``: it will be flushed before a commit: local files start writing it to
        disk now, without waiting, so that :meth:`flush` has little left to wait for."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix``; ``""`` removes the whole store."""

    # -- capabilities (neutral defaults) ------------------------------------------------------
    def is_file(self) -> bool:
        """True when the store's own location is a plain object (a file), where no store can
        be. Local stores refuse such a path when opened; object stores answer here."""
        return False

    def local_file(self, key: str) -> tuple[str, int] | None:
        """Where the object lies on a local file system, so it can be memory-mapped: (path of
        the file holding it, offset of its first byte there); None for other stores."""
        return None

    def version(self, key: str) -> str | None:
        """A token that changes whenever the object is replaced (ETag, mtime...), or None when
        the backend has none. Missing objects raise StoreNotFoundError."""
        return None

    def staging(self, tag: str) -> Store:
        """A store beside this one (its URL + ``tag``), for a writer to stage into."""
        from . import open_store

        return open_store(self.url + tag)

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        """Create ``key`` only if it does not exist; False when it did. Backends with a
        conditional put make this atomic; the default checks first (not atomic)."""
        if self.exists(key):
            return False
        self.put(key, data)
        return True

    def token(self, key: str) -> str:
        """What :meth:`replace_if` and :meth:`delete_if` compare: the object's version, or its
        bytes (hex) where the backend has no versions. Missing objects raise
        StoreNotFoundError."""
        v = self.version(key)
        return v if v is not None else bytes(memoryview(self.get(key)).cast("B")).hex()

    def replace_if(self, key: str, data: Buffer, token: str) -> str | None:
        """Overwrite ``key`` only if its :meth:`token` is still ``token``; the new token, or
        None (nothing written) when the object changed or vanished. Backends with conditional
        writes make this atomic (S3 ``If-Match``); the default checks first (not atomic)."""
        try:
            if self.token(key) != token:
                return None
        except StoreNotFoundError:
            return None
        self.put(key, data)
        return self.token(key)

    def delete_if(self, key: str, token: str) -> bool:
        """Delete ``key`` only if its :meth:`token` is still ``token``; False otherwise. Atomic
        where the backend has conditional deletes (S3 ``If-Match``)."""
        try:
            if self.token(key) != token:
                return False
        except StoreNotFoundError:
            return False
        self.delete(key)
        return True

    def write_lock(
        self, timeout: float, *, stale_after: float = LOCK_STALE_AFTER
    ) -> AbstractContextManager[WriteLock]:
        """Hold the store's writer lock (see :mod:`bigstore.store.lock`); waits up to
        ``timeout`` seconds, then raises ConcurrentWriteError. ``stale_after``: seconds after
        which an unrefreshed lease (object stores) is taken for a dead writer's."""
        from .lock import lease_lock

        return lease_lock(self.staging(".bigstore-lock"), self.url, timeout,
                          stale_after=stale_after)

    def replace_with(self, stage: Store, *, durable: bool = True) -> bool:
        """Make this store's contents exactly ``stage``'s in one atomic step, consuming
        ``stage``; False when the backend cannot (the caller then copies, commit marker last).
        ``durable``: the step itself survives a power loss once this returns."""
        return False

    #: buffers handed to :meth:`read_direct`'s ``alloc`` must start at a multiple of this
    DIRECT_ALIGN = 4096

    @property
    def reads_direct(self) -> bool:
        """Whether :meth:`read_direct` reads past the page cache here (a local file system
        that refused ``O_DIRECT`` once turns it off for good)."""
        return False

    def read_direct(self, key: str, start: int, stop: int | None,
                    alloc: Callable[[int], memoryview]) -> memoryview | None:
        """Bytes [start, stop) of ``key`` (``stop`` None: to its end) read past the OS page
        cache (local files: ``O_DIRECT``, the disk's DMA straight into the buffer), or None
        where this store or its file system cannot (the caller reads as usual). ``alloc(n)``
        gives a buffer of ``n`` bytes aligned to :attr:`DIRECT_ALIGN`; the result is a view
        of it. For reads whose bytes will not be wanted again soon: nothing enters the cache,
        so nothing has to be evicted (both cost CPU per page). Raises like :meth:`read_into`."""
        return None

    # -- cache hints (no-ops where meaningless) -----------------------------------------------
    def drop_cache(self, key: str) -> None:  # noqa: B027 - optional hook
        """Ask the OS to forget cached pages of ``key`` (local files only)."""

    def flush(self, keys: Sequence[str] | None = None) -> None:  # noqa: B027 - optional hook
        """Make the objects ``keys`` (all when None) durable (local files: fsync), called by
        writers before they commit. Object stores are durable once a put returns."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release handles; the store stays usable (handles reopen lazily)."""
