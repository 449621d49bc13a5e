"""What a bench command creates is removed afterwards, also when it fails; ``keep`` keeps the
synthetic store; the user's work directory and target are never removed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import bigstore
from bigstore.bench.stores import Scratch


def _scratch(tmp_path: Path, keep: bool = False) -> Scratch:
    (tmp_path / "work").mkdir(exist_ok=True)
    (tmp_path / "target").mkdir(exist_ok=True)
    return Scratch("test", str(tmp_path / "target"), workdir=tmp_path / "work",
                   storage_options=None, keep=keep)


def test_removed_after_a_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="midway"), _scratch(tmp_path) as s:
        url = s.new_store()
        bigstore.save({"x": np.ones(4)}, url)
        assert Path(url).is_dir() and s.work.is_dir()
        raise RuntimeError("midway")
    assert not Path(url).exists() and not s.work.exists()
    assert (tmp_path / "work").is_dir() and (tmp_path / "target").is_dir()


def test_keep_keeps_the_store_only(tmp_path: Path) -> None:
    with _scratch(tmp_path, keep=True) as s:
        url = s.new_store()
        Path(url).mkdir(parents=True)
    assert Path(url).is_dir() and not s.work.exists()
