"""Crash safety: a real writer process killed midway never damages what was there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import bigstore
from bigstore.errors import IncompleteStoreError, StoreNotFoundError

WRITER = Path(__file__).with_name("_writer_proc.py")


def kill_writer_after(url: str, opts: dict[str, Any] | None, n: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), url, json.dumps(opts)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == f"wrote {n}":
            break
    else:
        raise AssertionError(f"writer died early: {proc.stderr.read() if proc.stderr else ''}")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_killed_writer_leaves_old_store_intact(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "local":
        url, opts = str(tmp_path / "store"), None
    else:
        url, opts = request.getfixturevalue("s3_url")
    old = {"keep.me": torch.arange(1000.0), "and.me": torch.eye(5)}
    bigstore.save(old, url, storage_options=opts)
    kill_writer_after(url, opts, 5)
    got = bigstore.load(url, storage_options=opts)
    assert sorted(got) == sorted(old)
    assert all(torch.equal(got[k], old[k]) for k in old)
    assert bigstore.verify(url, storage_options=opts).ok


def test_killed_writer_to_a_new_place_leaves_nothing_openable(tmp_path: Path) -> None:
    url = str(tmp_path / "fresh")
    kill_writer_after(url, None, 3)
    with pytest.raises((StoreNotFoundError, IncompleteStoreError)):
        bigstore.open(url)
    # the next writer cleans the dead writer's staging directory and succeeds
    assert any(".bigstore-tmp-" in p.name for p in tmp_path.iterdir())
    bigstore.save({"x": torch.ones(3)}, url)
    assert not any(".bigstore-tmp-" in p.name for p in tmp_path.iterdir())
    assert torch.equal(bigstore.load(url)["x"], torch.ones(3))


def test_killed_writer_on_s3_new_place_is_refused_clearly(
    s3_url: tuple[str, dict[str, Any]],
) -> None:
    url, opts = s3_url
    kill_writer_after(url, opts, 2)
    with pytest.raises((StoreNotFoundError, IncompleteStoreError)):
        bigstore.open(url, storage_options=opts)
