"""The main job, as the README's first command runs it (small): every part checks itself."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_quick_json() -> None:
    r = subprocess.run([sys.executable, "-m", "bigstore", "demo", "--quick", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    d = json.loads(r.stdout)
    assert d["ok"] is True
    assert d["weights"]["bit_exact"] is True
    assert d["offload"]["tokens_match"] is True
    assert d["offload"]["peak_resident_bytes"] <= d["offload"]["budget"]
    assert d["data"]["exactly_once"] is True and d["data"]["samples_per_s"] > 0
    # sizes are printed in a unit that shows them (the quick model is a few hundred KiB)
    assert d["lines"] and not any(" 0.00 " in line for line in d["lines"])
