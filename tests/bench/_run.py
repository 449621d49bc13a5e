"""Running ``bigstore bench`` in-process, as users run it, and reading its JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bigstore.cli import main

# tiny, quick settings per command: every test passes these before its own arguments
QUICK = {
    "disk": ["--runs", "1", "--readers", "1,2", "--blocks", "4KiB,64KiB", "--random-count",
             "16", "--parts", "64KiB", "--concurrency", "1,2"],
    "load": ["--runs", "1", "--readers", "1"],
    "offload": ["--runs", "1", "--budgets", "50%", "--no-warm"],
    "loader": ["--runs", "2", "--batch-size", "64", "--compute-ms", "0.2"],
}
SIZES = {"disk": "1MiB", "load": "256KiB", "offload": "512KiB", "loader": "600x256"}


def bench(capsys: pytest.CaptureFixture[str], command: str, target: str, *extra: str,
          storage_options: dict[str, Any] | None = None, synthetic: bool = True
          ) -> tuple[int, dict[str, Any] | None, str]:
    """(exit status, the --json document or None, stderr)."""
    argv = ["bench", command, target, "--json", *QUICK[command], *extra]
    if synthetic:
        argv += ["--synthetic", SIZES[command]]
    if storage_options:
        argv += ["--storage-options", json.dumps(storage_options)]
    rc = main(argv)
    out = capsys.readouterr()
    doc = json.loads(out.out) if rc in (0, 1) and out.out.strip() else None
    return rc, doc, out.err
