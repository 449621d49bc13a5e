"""Every ``bigstore bench`` command runs with --synthetic on a local directory, an in-memory
store and a real S3 server (moto), and reports what it measured."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest

from bigstore.bench import SCHEMA
from bigstore.bench.load import LoadOptions, run_load
from bigstore.bench.peers import PEERS, Peer
from bigstore.cli import main
from tests.bench._run import bench
from tests.conftest import S3Server

COMMANDS = ["disk", "load", "offload", "loader"]


def _contender_or_bound(doc: dict[str, Any]) -> dict[str, Any]:
    rows = [r for r in doc["rows"] if r["role"] == "contender"] or doc["rows"]
    return rows[0]


def _check(doc: dict[str, Any], command: str) -> None:
    assert doc["schema"] == SCHEMA and doc["command"] == command and doc["ok"] is True
    assert doc["synthetic"] is not None and doc["synthetic"]["bytes"] > 0
    assert doc["packages"]["bigstore"] is not None and doc["machine"]["cores"] >= 1
    row = _contender_or_bound(doc)
    assert row["runs"] >= 1 and row["rate"]["p50"] > 0
    if command != "disk":
        # the contender is compared with a bound measured in the same run
        assert any(r["role"] == "bound" for r in doc["rows"]) or command == "loader"


@pytest.mark.parametrize("command", COMMANDS)
def test_local(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, err = bench(capsys, command, str(tmp_path / "here"),
                         *(["--no-peers"] if command in ("offload",) else []))
    assert rc == 0, err
    assert doc is not None
    _check(doc, command)
    assert doc["machine"]["filesystem"]  # the local file system is named
    # every measured cold row says whether its drops worked (offload's "bound" is computed)
    cold = [r for r in doc["rows"] if r["cache"] == "cold" and r["name"] != "bound"]
    assert cold and all(r["cold_honoured"] is not None for r in cold)
    # the synthetic data is removed afterwards
    assert not any((tmp_path / "here").iterdir())


@pytest.mark.s3
@pytest.mark.parametrize("command", COMMANDS)
def test_s3(command: str, s3_server: S3Server, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"s3://{s3_server.new_bucket()}/bench"
    rc, doc, err = bench(capsys, command, url, "--no-peers",
                         storage_options=s3_server.options)
    assert rc == 0, err
    assert doc is not None
    _check(doc, command)
    assert any(r["cache"] == "remote" for r in doc["rows"])
    assert any("object store" in n for n in doc["notes"])


def test_missing_peer_is_skipped_with_a_note(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    monkeypatch.setitem(PEERS, "runai", Peer("runai-model-streamer", "bigstore_no_such_peer",
                                             "runai-model-streamer"))
    report = run_load(tmp_path, synthetic=1 << 20,
                      options=LoadOptions(runs=1, warm=False, peers=("runai", "torch")))
    names = {r.name for r in report.rows}
    assert "runai-model-streamer" not in names
    assert "torch.load(mmap=True)" in names  # an installed peer still runs
    assert any("runai-model-streamer skipped: not installed" in n for n in report.notes)
    assert report.ok


def test_csv_plot_and_a_missed_au_target(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png, table = tmp_path / "au.png", tmp_path / "rows.csv"
    # no compute at all: the accelerator is never busy, AU is ~0, the target is missed
    rc, doc, err = bench(capsys, "loader", str(tmp_path / "ds"), "--csv", str(table),
                         "--plot", str(png), "--compute-ms", "0", "--require-au", "0.9")
    assert rc == 1
    assert doc is not None and doc["ok"] is False
    assert doc["checks"][0]["passed"] is False and "target missed" in err
    # the outputs are written all the same
    rows = list(csv.DictReader(io.StringIO(table.read_text())))
    assert [r["name"] for r in rows] == [r["name"] for r in doc["rows"]]
    assert float(rows[0]["rate_p50"]) == pytest.approx(doc["rows"][0]["rate"]["p50"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    aus = [run["metrics"]["au"] for run in doc["rows"][0]["per_run"]]
    assert len(aus) == 2 and all(0 <= a <= 1 for a in aus)
    assert {r["name"] for r in doc["rows"]} >= {"bigstore loader", "pyarrow take"}
    # with nothing computed AU is 0 by definition: the report says so instead of "MISSED"
    assert any("AU not judged" in n for n in doc["notes"])
    assert not any(n.startswith("AU target") for n in doc["notes"])


def test_table_is_printed_without_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    rc = main(["bench", "disk", str(tmp_path), "--synthetic", "1MiB", "--runs", "1",
               "--readers", "1", "--blocks", "4KiB", "--random-count", "8", "-q"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert "O_DIRECT read, 1 reader" in out.out and "GB/s" in out.out
    assert "random 4 KiB reads (lat p50" in out.out and "IOPS" in out.out
    assert out.err == ""  # -q: no progress display


def test_require_au_met_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc, err = bench(capsys, "loader", str(tmp_path), "--no-peers", "--compute-ms", "5",
                         "--require-au", "0.01")
    assert rc == 0, err
    assert doc is not None and doc["checks"][0]["passed"] is True
    assert any(n.startswith("AU target 90%: bigstore") for n in doc["notes"])


def test_require_bound_and_peer_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                       ) -> None:
    # an impossible target: 1000x the raw read and 1000x every peer
    rc, doc, _err = bench(capsys, "load", str(tmp_path), "--no-warm", "--require-bound",
                          "1000", "--require-peer", "1000", "--runs", "1")
    assert rc == 1
    assert doc is not None
    names = [c["name"] for c in doc["checks"]]
    assert any(n.startswith("bound [cold]") for n in names)
    assert any("torch.load(mmap=True)" in n for n in names)
    assert not any(c["passed"] for c in doc["checks"])
