"""A Store wrapper that makes every read request cost a known time: ``latency`` seconds plus
``nbytes / bandwidth``. Reads sleep (the GIL is released), so concurrent requests overlap as
they would against a real object store; writes pass straight through."""

from __future__ import annotations

import time
from collections.abc import Sequence

from bigstore.store import Buffer, ByteRange, Store, WrappedStore


class LatencyStore(WrappedStore):
    def __init__(self, inner: Store, *, latency: float, bandwidth: float) -> None:
        super().__init__(inner)
        self.latency = latency
        self.bandwidth = bandwidth  # bytes/s of one request
        self.requests = 0

    def request_seconds(self, nbytes: int) -> float:
        """What one request of ``nbytes`` costs: the truth the benchmark must report."""
        return self.latency + nbytes / self.bandwidth

    def _wait(self, nbytes: int) -> None:
        self.requests += 1
        time.sleep(self.request_seconds(nbytes))

    def get(self, key: str) -> Buffer:
        data = self.inner.get(key)
        self._wait(memoryview(data).nbytes)
        return data

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        out = self.inner.get_ranges(key, ranges)
        for b in out:  # each range is one request
            self._wait(memoryview(b).nbytes)
        return out

    def local_file(self, key: str) -> tuple[str, int] | None:
        return None  # every read is a request: never mapped around the latency
