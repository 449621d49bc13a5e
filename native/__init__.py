"""bigstore's numba kernels (installed as ``bigstore_native``).

Each kernel has a pure-numpy twin in ``_numpy``; when numba's JIT is disabled
(``NUMBA_DISABLE_JIT=1``) the twins are used, since numba would otherwise run the kernels' loops
as slow interpreted Python.
"""

from __future__ import annotations

import numba

JIT_ENABLED = not getattr(numba.config, "DISABLE_JIT", False)

if JIT_ENABLED:
    from ._jit import chunk_spans, coalesce_ranges, gather_rows
else:  # exercised by a subprocess test with NUMBA_DISABLE_JIT=1
    from ._numpy import (  # type: ignore[assignment]
        chunk_spans,
        coalesce_ranges,
        gather_rows,
    )

__all__ = ["JIT_ENABLED", "chunk_spans", "coalesce_ranges", "gather_rows"]
