"""The --json document is stable (each command run on an in-memory store): its shape (every
key path, per command) matches the golden file. A deliberate change of shape updates the golden
file and the schema version:
``BIGSTORE_UPDATE_GOLDEN=1 pytest tests/bench/test_schema.py``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from bigstore.bench import SCHEMA
from tests.bench._run import bench

GOLDEN = Path(__file__).parent / "golden" / "schema.json"
# free-form maps (name -> scalar): their keys depend on the run, not on the schema
OPEN = {"settings", "params", "metrics"}


def shape(value: Any, path: str = "") -> set[str]:
    """Every key path of a JSON document; lists contribute their elements' paths ("[]")."""
    out: set[str] = {path} if path else set()
    if isinstance(value, dict):
        if path.rsplit(".", 1)[-1].removesuffix("[]") in OPEN:
            return out
        for k, v in value.items():
            out |= shape(v, f"{path}.{k}" if path else k)
    elif isinstance(value, list):
        for v in value:
            out |= shape(v, f"{path}[]")
    return out


@pytest.mark.parametrize("command", ["disk", "load", "offload", "loader"])
def test_json_document_matches_the_golden_schema(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, doc, err = bench(capsys, command, f"memory://golden-{command}", "--no-peers")
    assert rc == 0, err
    assert doc is not None
    got = sorted(shape(doc))
    if os.environ.get("BIGSTORE_UPDATE_GOLDEN"):
        want = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {"paths": {}}
        want["schema"] = SCHEMA
        want["paths"][command] = got
        GOLDEN.write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")
    want = json.loads(GOLDEN.read_text())
    assert want["schema"] == SCHEMA
    assert got == want["paths"][command]
    assert doc["schema"] == SCHEMA
    row = doc["rows"][0]
    assert {"n", "mean", "stdev", "min", "max", "p50", "p95", "p99"} <= set(row["rate"])
    assert row["role"] in ("contender", "peer", "bound")
    # the memory:// run is also the "every command on an in-memory store" check
    assert doc["ok"] is True and doc["synthetic"]["bytes"] > 0 and row["rate"]["p50"] > 0
    assert all(r["cache"] in ("memory", "warm") for r in doc["rows"])
    assert any("memory" in n for n in doc["notes"])


def test_shape_sees_nested_and_list_keys() -> None:
    doc = {"a": 1, "rows": [{"b": {"c": 2}, "params": {"x": 1}}, {"d": None}]}
    assert shape(doc) == {"a", "rows", "rows[]", "rows[].b", "rows[].b.c", "rows[].params",
                          "rows[].d"}
