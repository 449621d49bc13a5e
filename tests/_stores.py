"""Store wrappers for tests: a real store underneath, something observed on top.

They subclass the Store contract and delegate every call, so they pass wherever a store URL is
accepted (``open_store`` returns a Store as it is) and pickle into other processes (Dask workers,
ranks): what they observe is appended to a log file, one line per request, which every process
can write to (``O_APPEND`` lines of a few bytes are atomic).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from bigstore.store import Buffer, ByteRange, Store, WrappedStore


def _log(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


class LoggedStore(WrappedStore):
    """Delegates to ``inner``; logs ``read KEY NBYTES`` for every read and ``put KEY ok|fail``
    for every put. ``fail_once``: the first put of that key raises OSError (the marker file
    ``<log>.failed`` records that it happened, across processes)."""

    def __init__(self, inner: Store, log: str, fail_once: str | None = None) -> None:
        super().__init__(inner)
        self.log, self.fail_once = log, fail_once

    # reads: counted in bytes (get_many and read_tail come through these two)
    def get(self, key: str) -> Buffer:
        data = self.inner.get(key)
        _log(self.log, f"read {key} {memoryview(data).nbytes}")
        return data

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        out = self.inner.get_ranges(key, ranges)
        _log(self.log, f"read {key} {sum(memoryview(b).nbytes for b in out)}")
        return out

    def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
        self.inner.read_into(key, offset, outs)
        _log(self.log, f"read {key} {sum(o.nbytes for o in outs)}")

    # writes
    def put(self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False) -> None:
        marker = self.log + ".failed"
        if key == self.fail_once and not Path(marker).exists():
            Path(marker).touch()
            _log(self.log, f"put {key} fail")
            raise OSError(f"injected failure writing {key}")
        self.inner.put(key, data, writeback=writeback)
        _log(self.log, f"put {key} ok")

    def staging(self, tag: str) -> Store:  # staged writes are logged too
        return LoggedStore(self.inner.staging(tag), self.log, self.fail_once)


def log_lines(log: str | Path) -> list[list[str]]:
    p = Path(log)
    return [ln.split() for ln in p.read_text().splitlines()] if p.exists() else []


def bytes_read(log: str | Path) -> Counter[str]:
    """Bytes read per key, from a LoggedStore's log."""
    out: Counter[str] = Counter()
    for f in log_lines(log):
        if f[0] == "read":
            out[f[1]] += int(f[2])
    return out


def takes_o_direct(directory: str | Path) -> bool:
    """Whether files in ``directory`` can be read with ``O_DIRECT`` (tmpfs cannot): what a
    local store's direct reads need, probed without the store."""
    import mmap

    probe = Path(directory) / ".o_direct_probe"
    probe.write_bytes(b"x" * 4096)
    try:
        fd = os.open(probe, os.O_RDONLY | getattr(os, "O_DIRECT", 0))
    except OSError:
        return False
    try:
        os.preadv(fd, [mmap.mmap(-1, 4096)], 0)  # mmap: page-aligned
        return hasattr(os, "O_DIRECT")
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()
