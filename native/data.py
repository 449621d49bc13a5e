"""Dataset kernels: numba when its JIT is on, the numpy twins when ``NUMBA_DISABLE_JIT=1``."""

from __future__ import annotations

import numba

JIT_ENABLED = not getattr(numba.config, "DISABLE_JIT", False)

if JIT_ENABLED:
    from ._data_jit import (
        gather_chunk_rows,
        gather_mapped,
        new_chunks,
        split_by_chunk,
        window_samples,
    )
else:  # exercised by a subprocess test with NUMBA_DISABLE_JIT=1
    from ._data_numpy import (  # type: ignore[assignment]
        gather_chunk_rows,
        gather_mapped,
        new_chunks,
        split_by_chunk,
        window_samples,
    )

__all__ = [
    "JIT_ENABLED",
    "gather_chunk_rows",
    "gather_mapped",
    "new_chunks",
    "split_by_chunk",
    "window_samples",
]
