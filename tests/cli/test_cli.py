"""The bigstore command, run as users run it: a subprocess, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

import bigstore


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bigstore", *args], capture_output=True,
                          text=True, timeout=300)


def test_convert_info_ls_verify(tmp_path: Path) -> None:
    sd = {"a.weight": torch.randn(64, 8), "b.bias": torch.zeros(8, dtype=torch.bfloat16)}
    save_file(sd, tmp_path / "m.safetensors")
    r = cli("convert", str(tmp_path / "m.safetensors"), str(tmp_path / "s"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tensors"] == 2

    info = json.loads(cli("info", str(tmp_path / "s"), "--json").stdout)
    assert info["kind"] == "tensors" and info["arrays"] == 2
    assert info["nbytes"] == 64 * 8 * 4 + 8 * 2 and info["format_version"] == 1

    rows = json.loads(cli("ls", str(tmp_path / "s"), "--json").stdout)
    assert {r["name"]: r["dtype"] for r in rows} == {"a.weight": "float32", "b.bias": "bfloat16"}
    assert "a.weight" in cli("ls", str(tmp_path / "s")).stdout

    r = cli("verify", str(tmp_path / "s"), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True


def test_verify_reports_corruption_with_nonzero_exit(tmp_path: Path) -> None:
    bigstore.save({"w": torch.randn(32, 32)}, tmp_path / "s")
    chunk = tmp_path / "s" / "w" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[7] ^= 0xFF
    chunk.write_bytes(bytes(data))
    r = cli("verify", str(tmp_path / "s"))
    assert r.returncode == 1
    assert "w" in r.stderr and "chunk 0" in r.stdout
    j = cli("verify", str(tmp_path / "s"), "--json")
    assert j.returncode == 1 and json.loads(j.stdout)["corrupted_tensors"] == ["w"]


def test_errors_go_to_stderr_with_exit_2(tmp_path: Path) -> None:
    r = cli("info", str(tmp_path / "nope"))
    assert r.returncode == 2 and r.stdout == ""
    assert "bigstore: error:" in r.stderr and "nope" in r.stderr
    r = cli("convert", str(tmp_path / "x.onnx"), str(tmp_path / "s"))
    assert r.returncode == 2 and "x.onnx" in r.stderr
