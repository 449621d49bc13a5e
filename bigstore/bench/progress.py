"""The live progress display of ``bigstore bench`` (tqdm, on stderr): one labelled bar per
phase, with its total, counting in the units the summary uses."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["Progress"]


class _Off:
    """A bar that draws nothing (progress disabled)."""

    def update(self, n: float = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Off:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class Progress:
    """Makes bars; ``enabled=False`` makes silent ones, so callers never branch."""

    def __init__(self, enabled: bool, prefix: str = "bench") -> None:
        self.enabled = enabled
        self.prefix = prefix

    def bar(self, label: str, total: float | None, unit: str = "run") -> Any:
        """A bar ``"<prefix>: <label>"``; unit "B" counts decimal bytes (kB, MB, GB), as the
        summary's GB/s do."""
        if not self.enabled:
            return _Off()
        from tqdm.auto import tqdm

        scaled = unit == "B"
        return tqdm(total=total, desc=f"{self.prefix}: {label}", unit=unit, unit_scale=scaled,
                    unit_divisor=1000, file=sys.stderr, leave=False, dynamic_ncols=True)
