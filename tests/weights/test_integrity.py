"""Damaged stores get clear errors naming the tensor and chunk; nothing stored is lost."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr

import bigstore
from bigstore.errors import (
    ChecksumError,
    CorruptChunkError,
    FormatVersionError,
    IncompleteStoreError,
    InvalidURLError,
    NotAStoreError,
    StoreNotFoundError,
    TruncatedChunkError,
)
from bigstore.store import open_store


def make(tmp_path: Path, codec: str | None = None) -> tuple[Path, torch.Tensor]:
    w = torch.randn(256, 64)  # 256 B rows, 16 rows per chunk -> 16 chunks
    url = tmp_path / "s"
    bigstore.save({"w": w, "ok": torch.ones(4)}, url, chunk_bytes=4096, codec=codec)
    return url, w


def flip(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("codec", [None, "zstd"])
@pytest.mark.parametrize("mmap", [True, False])
def test_flipped_byte_is_a_checksum_error_naming_the_chunk(
    tmp_path: Path, codec: str | None, mmap: bool
) -> None:
    url, _ = make(tmp_path, codec)
    flip(url / "w" / "c" / "5" / "0", 10)
    with pytest.raises(ChecksumError, match=r"tensor 'w' chunk 5"):
        bigstore.load(url, mmap=mmap)
    # other tensors, and rows outside the damaged chunk, still read
    assert torch.equal(bigstore.load(url, names=["ok"])["ok"], torch.ones(4))
    s = bigstore.open(url)
    s["w"][0:16].numpy()
    with pytest.raises(ChecksumError):
        s["w"][80:81].numpy()


def test_verify_lists_damaged_tensors_and_chunks(tmp_path: Path) -> None:
    url, _ = make(tmp_path)
    assert bigstore.verify(url).ok
    flip(url / "w" / "c" / "3" / "0")
    with open(url / "w" / "c" / "7" / "0", "ab") as f:
        f.write(b"junk")
    report = bigstore.verify(url)
    assert not report.ok and report.corrupted_tensors == ["w"]
    # (a None chunk, a bad metadata document, is not expected: -1 makes the comparison fail)
    assert sorted(-1 if p.chunk is None else p.chunk for p in report.problems) == [3, 7]
    assert report.chunks == 17


@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_chunk(tmp_path: Path, mmap: bool) -> None:
    url, _ = make(tmp_path)
    p = url / "w" / "c" / "2" / "0"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(TruncatedChunkError, match=r"'w' chunk 2"):
        bigstore.load(url, mmap=mmap)


def test_missing_chunk(tmp_path: Path) -> None:
    url, _ = make(tmp_path)
    (url / "w" / "c" / "9" / "0").unlink()
    with pytest.raises(CorruptChunkError, match=r"'w' chunk 9.*missing"):
        bigstore.load(url)
    assert [p.chunk for p in bigstore.verify(url).problems] == [9]


def test_corruption_on_s3(s3_url: tuple[str, dict[str, Any]]) -> None:
    url, opts = s3_url
    w = torch.randn(256, 16)
    bigstore.save({"w": w}, url, storage_options=opts, chunk_bytes=4096)
    store = open_store(url, opts)
    blob = bytearray(bytes(store.get("w/c/1/0")))
    blob[3] ^= 1
    store.put("w/c/1/0", bytes(blob))
    with pytest.raises(ChecksumError, match=r"'w' chunk 1"):
        bigstore.load(url, storage_options=opts)
    assert [p.chunk for p in bigstore.verify(url, storage_options=opts).problems] == [1]


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    url, _ = make(tmp_path)
    doc = json.loads((url / "zarr.json").read_text())
    doc["attributes"]["bigstore"]["format_version"] = 99
    (url / "zarr.json").write_text(json.dumps(doc))
    with pytest.raises(FormatVersionError, match=r"99.*upgrade"):
        bigstore.open(url)


def test_store_states(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="no bigstore store"):
        bigstore.open(tmp_path / "nothing")
    url, _ = make(tmp_path)
    (url / "zarr.json").unlink()  # as if the writer died before the commit marker
    with pytest.raises(IncompleteStoreError, match="interrupted"):
        bigstore.open(url)
    g = zarr.open_group(tmp_path / "plain", mode="w")
    g.create_array("a", shape=(3,), dtype="f4")
    with pytest.raises(NotAStoreError, match="not a bigstore store"):
        bigstore.open(tmp_path / "plain")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "zarr.json").write_text("{not json")
    with pytest.raises(NotAStoreError, match="not valid JSON"):
        bigstore.open(tmp_path / "garbage")
    with pytest.raises(InvalidURLError, match="nosuchproto"):
        bigstore.open("nosuchproto://x/y")


def test_refuses_to_overwrite_what_is_not_a_store(tmp_path: Path) -> None:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    with pytest.raises(NotAStoreError, match="refusing to overwrite"):
        bigstore.save({"x": torch.ones(2)}, d)
    assert (d / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in d.iterdir()) == ["thesis.tex"]


def test_bad_input_midway_keeps_the_old_store(store_url: tuple[str, Any]) -> None:
    url, opts = store_url
    old = {"a": torch.arange(10), "b": torch.randn(3, 3)}
    bigstore.save(old, url, storage_options=opts)

    def bad() -> Any:
        yield "a", torch.zeros(5)
        yield "oops", np.array(["not", "numeric"], dtype=object)

    with pytest.raises(bigstore.BigstoreError, match="'oops'"):
        bigstore.save(bad(), url, storage_options=opts)
    got = bigstore.load(url, storage_options=opts)
    assert sorted(got) == ["a", "b"] and all(torch.equal(got[k], old[k]) for k in old)
    # and a good overwrite replaces it whole
    bigstore.save({"c": torch.ones(1)}, url, storage_options=opts)
    assert list(bigstore.load(url, storage_options=opts)) == ["c"]


def test_a_chunk_back_from_disk_is_checked_again(tmp_path: Path) -> None:
    """Loads skip re-checking a chunk checked earlier in this process only while its pages
    stayed cached: bytes that come back from disk are checked again, even when a corruption
    kept the file's size and modification time."""
    url, w = make(tmp_path)
    for _ in range(2):  # checked once, then trusted: still cached
        got = bigstore.load(url)["w"]
        same = torch.equal(got, w)
        del got  # unmapped: a mapped page cannot leave the page cache
        assert same
    p = url / "w" / "c" / "5" / "0"
    st = p.stat()
    with open(p, "r+b") as f:  # a silent corruption in place, behind the page cache's back
        f.seek(10)
        b = f.read(1)
        f.seek(10)
        f.write(bytes([b[0] ^ 0x40]))
        f.flush()
        os.fsync(f.fileno())
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    fd = os.open(p, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    with pytest.raises(ChecksumError, match=r"'w' chunk 5"):
        bigstore.load(url)
