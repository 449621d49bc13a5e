"""The command line fails the way users expect: one line on stderr, exit status 2, no
traceback, nothing drawn first; a closed pipe is not an error."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bigstore
from bigstore.cli import build_parser, main
from tests.conftest import S3Server, _free_port


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    bigstore.save({"w": torch.zeros(4, 4)}, tmp_path / "s")
    return tmp_path / "s"


def test_bad_storage_option(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(store), "-o", "foo=bar"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("bigstore: error: bad storage option(s) foo")


def test_bad_storage_options_json(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", str(store), "--storage-options", "{nope"]) == 2
    assert "not valid JSON" in _one_line(capsys.readouterr().err)


def test_unreachable_endpoint(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("s3fs")
    opts = {"key": "k", "secret": "s", "skip_instance_cache": True,
            "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_free_port()}"},
            "config_kwargs": {"retries": {"max_attempts": 1}}}
    assert main(["info", "s3://bucket/store", "--storage-options", json.dumps(opts)]) == 2
    assert "cannot reach the storage endpoint" in _one_line(capsys.readouterr().err)


@pytest.mark.s3
def test_missing_credentials(s3_server: S3Server, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(HOME=str(tmp_path), AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
               AWS_EC2_METADATA_DISABLED="true")
    opts = {"client_kwargs": {"endpoint_url": s3_server.endpoint}, "skip_instance_cache": True}
    r = subprocess.run([sys.executable, "-m", "bigstore", "info", "s3://bucket/store",
                        "--storage-options", json.dumps(opts)], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 2
    assert "no credentials" in _one_line(r.stderr)


def test_missing_optional_dependency_names_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    rc = main(["bench", "disk", str(tmp_path), "--synthetic", "1MiB", "--plot", "x.png"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pip install 'bigstore[plot]'" in _one_line(err)  # and no bar was drawn first
    assert not any(tmp_path.iterdir())  # nothing was written either

    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    (tmp_path / "m.safetensors").write_bytes(b"\0" * 16)
    assert main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "out")]) == 2
    assert "bigstore[convert]" in _one_line(capsys.readouterr().err)


def test_argument_errors_are_one_line_without_bars(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["bench", "disk", "/tmp", "--runs", "x"], ["info"], ["nope"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "error:" in _one_line(capsys.readouterr().err)
    # checked by bigstore, not argparse: still one line, before any bar
    for argv in (["bench", "disk", "/tmp", "--readers", "0"],
                 ["bench", "loader", "/tmp", "--synthetic", "0x4"],
                 ["bench", "offload", "/tmp", "--budgets", "lots"]):
        assert main(argv) == 2
        _one_line(capsys.readouterr().err)


def test_codec_spellings_and_bad_levels(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    save_file({"w": torch.ones(8, 8)}, tmp_path / "m.safetensors")
    for i, codec in enumerate(["none", "None", "NONE", "zstd", "zstd:5", "gzip:0"]):
        rc = main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / f"s{i}"),
                   "--codec", codec, "-q"])
        assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    for codec, words in [("zstd:99", "out of range"), ("gzip:10", "0-9"),
                         ("zstd:x", "not an integer"), ("lz4", "unknown codec")]:
        rc = main(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "bad"),
                   "--codec", codec])
        assert rc == 2
        assert words in _one_line(capsys.readouterr().err)  # and no bar before it
        assert not (tmp_path / "bad").exists()


def _all_help(parser: argparse.ArgumentParser) -> list[str]:
    """The --help text of the parser and of every subcommand under it."""
    texts = [parser.format_help()]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                texts += _all_help(sub)
    return texts


def test_help_has_no_rst_markup() -> None:
    texts = _all_help(build_parser())
    assert len(texts) >= 11  # bigstore, 6 commands, bench and its 4 commands
    for t in texts:
        assert "``" not in t and ":func:" not in t and ":class:" not in t, t


def test_ls_into_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    # enough lines to fill the pipe's buffer after the reader has gone
    bigstore.save({f"layer.{i}.weight": torch.zeros(1) for i in range(1500)}, tmp_path / "s")
    p = subprocess.Popen([sys.executable, "-m", "bigstore", "ls", str(tmp_path / "s")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None and p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0
    assert first.startswith(b"layer.") and err == b""


def test_progress_bars_are_labelled_with_totals(store: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(store)]) == 0
    err = capsys.readouterr().err
    assert "verify: checking checksums" in err and "100%" in err  # a total was known
    assert main(["bench", "disk", str(store.parent / "d"), "--synthetic", "1MiB", "--runs",
                 "1", "--readers", "1", "--blocks", "4KiB", "--random-count", "4"]) == 0
    err = capsys.readouterr().err
    assert "bench disk: writing the synthetic file" in err
    assert "bench disk: timed cold reads" in err and "run" in err
