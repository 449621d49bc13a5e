"""In-process memory: ``memory://name`` stores live as long as the process does.

Useful for tests and for staging small stores; gets are zero-copy views of immutable bytes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from ..errors import StoreNotFoundError
from ._base import Buffer, ByteRange, Store, check_key

__all__ = ["MemoryStore"]

_REGISTRY: dict[str, dict[str, bytes]] = {}
_REGISTRY_LOCK = threading.Lock()


class MemoryStore(Store):
    def __init__(self, url: str = "memory://") -> None:
        super().__init__(url.rstrip("/"))
        with _REGISTRY_LOCK:
            self._data = _REGISTRY.setdefault(self.url, {})
        self._lock = threading.Lock()

    def _get(self, key: str) -> bytes:
        try:
            return self._data[check_key(key)]
        except KeyError:
            raise StoreNotFoundError(f"{self.url}/{key} does not exist") from None

    def get(self, key: str) -> Buffer:
        return memoryview(self._get(key))

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        data = memoryview(self._get(key))
        return [data[r.start : r.end] for r in ranges]

    def exists(self, key: str) -> bool:
        return check_key(key) in self._data

    def size(self, key: str) -> int:
        return len(self._get(key))

    def list(self, prefix: str = "") -> Iterator[str]:
        p = check_key(prefix) + "/" if prefix else ""
        with self._lock:
            keys = list(self._data)
        for k in keys:
            if k.startswith(p) or k == prefix:
                yield k

    def put(self, key: str, data: Buffer | Sequence[Buffer]) -> None:
        if isinstance(data, bytes | bytearray | memoryview):
            payload = bytes(memoryview(data).cast("B"))
        else:
            payload = b"".join(bytes(memoryview(d).cast("B")) for d in data)
        with self._lock:
            self._data[check_key(key)] = payload

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(check_key(key), None)

    def delete_prefix(self, prefix: str) -> None:
        with self._lock:
            under = prefix + "/"
            for k in [k for k in self._data if not prefix or k == prefix or k.startswith(under)]:
                del self._data[k]
