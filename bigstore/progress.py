"""Progress bars: one place that makes them, so every long operation shows the same kind.

Bars go to stderr (stdout stays clean for ``--json``), are labelled for what they do, carry a
total where it is known, and count in the unit the operation's summary uses.
"""

from __future__ import annotations

import sys
from typing import Any, Literal

__all__ = ["progress_bar"]


def progress_bar(
    enabled: bool, desc: str, total: int | None = None, unit: Literal["B", "samples"] = "B"
) -> Any:
    """A tqdm bar (``.update(n)``, ``.close()``), or None when ``enabled`` is False."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    if unit == "B":
        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024,
                    file=sys.stderr)
    return tqdm(total=total, desc=desc, unit=" samples", unit_scale=True, file=sys.stderr)
