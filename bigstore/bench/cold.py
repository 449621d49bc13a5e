"""Cold runs: drop the page cache of exactly the files a run reads, and say when that is not
possible (an object store has no page cache of ours; tmpfs keeps files in memory; pages a
process still has mapped stay cached)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .bounds import drop_page_cache
from .counters import mapped_files, resident_bytes
from .machine import filesystem_of

__all__ = ["ColdCache", "DropResult"]

# A drop is taken as honoured when at most this fraction of the files stays resident.
_LEFT_OVER = 0.05


@dataclass(frozen=True)
class DropResult:
    """What a drop achieved: ``ok`` when the files' pages left the cache (files this process
    has mapped excepted: ``mapped`` of them, whose pages stay and are said so in ``reason``)."""

    ok: bool
    resident_after: int | None
    reason: str | None = None
    mapped: int = 0


class ColdCache:
    """Drops the page cache of one set of local files (the files a contender reads)."""

    def __init__(self, files: Sequence[str | os.PathLike[str]]) -> None:
        self.files = [os.fspath(f) for f in files]

    def drop(self) -> DropResult:
        drop_page_cache(self.files)
        mapped = set(mapped_files(self.files))
        rest = [f for f in self.files if os.path.realpath(f) not in mapped]
        note = (f"{len(mapped)} file(s) mapped by this process keep their pages cached "
                "(in use by the contender itself)" if mapped else None)
        left = resident_bytes(rest)
        if left is None:
            return DropResult(True, None, "page-cache residency cannot be read (no mincore)",
                              len(mapped))
        size = sum(Path(f).stat().st_size for f in rest)
        if left <= _LEFT_OVER * max(1, size):
            return DropResult(True, left, note, len(mapped))
        return DropResult(False, left, self._why(rest), len(mapped))

    def _why(self, files: list[str]) -> str:
        fs = filesystem_of(files[0]) if files else ""
        if fs in ("tmpfs", "ramfs"):
            return f"the files live on {fs} (memory): there is no page cache to drop"
        return (f"the files' pages stayed cached after POSIX_FADV_DONTNEED ({fs or 'unknown'} "
                "file system; mapped by another process?)")
