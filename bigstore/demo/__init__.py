"""``bigstore demo``: the main job, one part per capability (weights, offload, datasets)."""

from __future__ import annotations

import argparse
import importlib
import shutil
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["run_all"]

PARTS = ("weights", "offload", "data")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    parts = args.only or list(PARTS)
    progress = not args.json and not args.quiet
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bigstore-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"workdir": str(base), "ok": True}
    lines: list[str] = []
    try:
        for part in parts:
            try:
                mod = importlib.import_module(f"._{part}", __name__)
            except ModuleNotFoundError:
                continue
            work = base / part
            work.mkdir(exist_ok=True)
            kwargs: dict[str, Any] = {"quick": args.quick, "progress": progress}
            if part == "weights":
                kwargs["size"] = args.size
            r = mod.run(work, **kwargs)
            results[part] = r
            results["ok"] = results["ok"] and r.get("ok", True)
            lines += r.get("lines", [])
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(base, ignore_errors=True)
    results["lines"] = lines
    return results
