"""One contract suite, run on every backend: local, memory, fsspec (memory), real S3 (moto)."""

from __future__ import annotations

from typing import Any

import pytest

from bigstore.errors import BigstoreError, InvalidKeyError, StoreNotFoundError
from bigstore.store import ByteRange, LocalStore, MemoryStore, Store, open_store
from bigstore.store._fsspec import FsspecStore


@pytest.fixture
def store(store_url: tuple[str, dict[str, Any] | None]) -> Store:
    url, opts = store_url
    return open_store(url, opts)


def test_backend_is_the_expected_one(store: Store, store_url: tuple[str, Any]) -> None:
    url, opts = store_url
    expected = (
        LocalStore if "://" not in url
        else MemoryStore if url.startswith("memory://") and not opts
        else FsspecStore
    )
    assert type(store) is expected


def test_put_get_roundtrip(store: Store) -> None:
    store.put("a/b/c.bin", b"hello world")
    store.put("a/two", [b"ab", memoryview(b"cd"), bytearray(b"ef")])
    assert bytes(store.get("a/b/c.bin")) == b"hello world"
    assert bytes(store.get("a/two")) == b"abcdef"
    assert store.exists("a/b/c.bin") and not store.exists("a/b/missing")
    assert store.size("a/two") == 6


def test_overwrite_replaces(store: Store) -> None:
    store.put("k", b"1111")
    store.put("k", b"22")
    assert bytes(store.get("k")) == b"22"


def test_get_ranges_and_many(store: Store) -> None:
    data = bytes(range(256)) * 4
    store.put("r", data)
    store.put("s", b"xyz")
    out = store.get_ranges("r", [ByteRange(0, 3), ByteRange(250, 260), ByteRange(1020, 1024)])
    assert [bytes(o) for o in out] == [data[0:3], data[250:260], data[1020:1024]]
    assert [bytes(b) for b in store.get_many(["s", "r"])] == [b"xyz", data]


def test_read_into_scatter(store: Store) -> None:
    data = bytes(range(200))
    store.put("x", data)
    a, b = bytearray(10), bytearray(30)
    store.read_into("x", 5, [memoryview(a), memoryview(b)])
    assert bytes(a) == data[5:15] and bytes(b) == data[15:45]


def test_read_past_end_is_an_error(store: Store) -> None:
    store.put("short", b"abc")
    with pytest.raises(BigstoreError):
        store.read_into("short", 0, [memoryview(bytearray(10))])


def test_list_and_delete(store: Store) -> None:
    for k in ("p/1", "p/2", "p/q/3", "other"):
        store.put(k, b"v")
    assert sorted(store.list("p")) == ["p/1", "p/2", "p/q/3"]
    assert sorted(store.list()) == ["other", "p/1", "p/2", "p/q/3"]
    store.delete("p/1")
    store.delete("p/never-existed")  # not an error
    assert sorted(store.list("p")) == ["p/2", "p/q/3"]
    store.delete_prefix("p")
    assert sorted(store.list()) == ["other"]


def test_missing_key_names_it(store: Store) -> None:
    with pytest.raises(StoreNotFoundError, match="nope"):
        store.get("nope")
    with pytest.raises(FileNotFoundError):  # the builtin a caller would catch
        store.size("nope")


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "a//b", "", "a/./b",
                                 "s3://bucket/x", "a\\b"])
def test_keys_cannot_escape_the_root(store: Store, key: str) -> None:
    with pytest.raises(InvalidKeyError):
        store.put(key, b"x")
    with pytest.raises(InvalidKeyError):
        store.get(key)


def test_local_store_does_not_follow_escapes(tmp_path: Any) -> None:
    (tmp_path / "secret").write_bytes(b"s")
    s = LocalStore(tmp_path / "root")
    with pytest.raises(InvalidKeyError):
        s.get("../secret")


def test_many_buffers_in_one_call(store: Store) -> None:
    # more buffers than one preadv/writev takes (IOV_MAX = 1024), empty ones among them
    parts = [bytes([i % 251]) * (i % 3) for i in range(3000)]
    store.put("many", parts)
    assert bytes(store.get("many")) == b"".join(parts)
    outs = [memoryview(bytearray(len(p))) for p in parts]
    store.read_into("many", 0, outs)
    assert [bytes(o) for o in outs] == parts
