"""One contract suite, run on every backend: local, memory, fsspec (memory), real S3 (moto)."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import numpy as np
import pytest

from bigstore.bench import drop_page_cache
from bigstore.bench.counters import resident_bytes
from bigstore.errors import (
    BigstoreError,
    ConcurrentWriteError,
    InvalidKeyError,
    StoreNotFoundError,
    TruncatedChunkError,
)
from bigstore.store import (
    ByteRange,
    CachedStore,
    FsspecStore,
    LocalStore,
    MemoryStore,
    Store,
    WrappedStore,
    open_store,
)
from bigstore.store.publish import make_staging, publish

from .._stores import takes_o_direct

BACKENDS = {
    "local": LocalStore, "memory": MemoryStore, "fsspec-memory": FsspecStore, "s3": FsspecStore,
    "cached-fsspec-memory": FsspecStore, "cached-s3": FsspecStore,
    "wrapped-local": LocalStore, "wrapped-s3": FsspecStore,
}


@pytest.fixture(params=list(BACKENDS))
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Store:
    """Every backend, the local cache in front of each remote one, and a plain wrapper (every
    call passed through: conditional writes must stay atomic) around local and S3 stores."""
    kind = request.param.removeprefix("cached-").removeprefix("wrapped-")
    if kind == "local":
        s: Store = open_store(str(tmp_path / "store"))
    elif kind == "memory":
        s = open_store(f"memory://t-{uuid.uuid4().hex}")
    elif kind == "fsspec-memory":
        s = open_store(f"memory://f-{uuid.uuid4().hex}", {"skip_instance_cache": False})
    else:
        server = request.getfixturevalue("s3_server")
        request.applymarker(pytest.mark.s3)
        s = open_store(f"s3://{server.new_bucket()}/store", server.options)
    assert type(s) is BACKENDS[request.param]
    if request.param.startswith("cached-"):
        s = CachedStore(s, tmp_path / "cache", "1MiB")
    if request.param.startswith("wrapped-"):
        s = WrappedStore(s)
    return s


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


def test_get_into(store: Store) -> None:
    data = bytes(range(256)) * 3
    store.put("c/0", data)
    asked: list[int] = []
    arena = bytearray(4096)

    def alloc(n: int) -> memoryview:
        asked.append(n)
        return memoryview(arena)[:n]

    got = store.get_into("c/0", alloc)
    assert bytes(got) == data
    if isinstance(store, LocalStore):  # read straight into the caller's buffer, sized by it
        assert asked == [len(data)] and bytes(arena[: len(data)]) == data
    with pytest.raises(StoreNotFoundError):
        store.get_into("c/missing", alloc)


def _aligned(n: int) -> memoryview:
    raw = np.empty(n + Store.DIRECT_ALIGN, np.uint8)
    skip = -raw.ctypes.data % Store.DIRECT_ALIGN
    return memoryview(raw[skip : skip + n])


def test_read_direct(store: Store) -> None:
    data = bytes(range(251)) * 50  # 12550 bytes: not a whole number of blocks
    store.put("d/0", data)
    got = store.read_direct("d/0", 0, None, _aligned)
    if got is None:  # the caller reads as usual; a local store only where O_DIRECT fails
        assert not (isinstance(store, LocalStore) and takes_o_direct(store.root))
        assert not store.reads_direct  # (a refusal is remembered)
        return
    assert store.reads_direct
    assert bytes(got) == data
    if isinstance(store, LocalStore):  # past the page cache: it holds none of the file now
        drop_page_cache([store.root / "d" / "0"])
        store.read_direct("d/0", 0, None, _aligned)
        assert resident_bytes([store.root / "d" / "0"]) in (0, None)
    for start, stop in ((0, 4096), (100, 9000), (4096, 12550), (12549, 12550), (5000, 5000)):
        part = store.read_direct("d/0", start, stop, _aligned)
        assert part is not None and bytes(part) == data[start:stop]
    with pytest.raises(TruncatedChunkError):
        store.read_direct("d/0", 0, len(data) + 1, _aligned)
    with pytest.raises(StoreNotFoundError):
        store.read_direct("d/missing", 0, None, _aligned)


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


def test_reads_after_overwrite_see_the_new_bytes(store: Store) -> None:
    store.put("k", b"old bytes")
    assert bytes(store.get("k")) == b"old bytes"
    assert [bytes(b) for b in store.get_ranges("k", [ByteRange(0, 3)])] == [b"old"]
    store.put("k", b"NEW BYTES")
    assert bytes(store.get("k")) == b"NEW BYTES"
    assert [bytes(b) for b in store.get_ranges("k", [ByteRange(0, 3)])] == [b"NEW"]
    store.delete("k")
    with pytest.raises(StoreNotFoundError):
        store.get("k")


def test_version_changes_when_an_object_is_replaced(store: Store) -> None:
    store.put("v", b"1")
    first = store.version("v")
    time.sleep(0.01)  # mtime-based versions need the clock to move
    store.put("v", b"22")
    if first is not None:
        assert store.version("v") != first
    with pytest.raises(StoreNotFoundError):
        store.version("absent")


def test_put_if_absent_creates_once(store: Store) -> None:
    assert store.put_if_absent("once", b"first")
    assert not store.put_if_absent("once", b"second")
    assert bytes(store.get("once")) == b"first"


def test_replace_if_and_delete_if_compare_the_token(store: Store) -> None:
    store.put("cas", b"one")
    first = store.token("cas")
    second = store.replace_if("cas", b"two", first)
    assert second is not None and second != first and bytes(store.get("cas")) == b"two"
    assert store.replace_if("cas", b"three", first) is None  # stale token: nothing written
    assert bytes(store.get("cas")) == b"two"
    assert not store.delete_if("cas", first)
    assert store.exists("cas")
    assert store.delete_if("cas", second)
    assert not store.exists("cas")
    assert store.replace_if("cas", b"x", second) is None and not store.exists("cas")
    assert not store.delete_if("cas", second)


def test_write_lock_excludes_and_releases(store: Store) -> None:
    held, release, errors = threading.Event(), threading.Event(), []

    def holder() -> None:
        with store.write_lock(5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert held.wait(10)
    try:
        with pytest.raises(ConcurrentWriteError, match="gave up"), store.write_lock(0.2):
            errors.append("acquired a held lock")
    finally:
        release.set()
        t.join()
    assert not errors
    with store.write_lock(5):  # free again
        pass


def test_publish_replaces_everything(store: Store) -> None:
    store.put("zarr.json", b'{"old": true}')
    store.put("old/a", b"x")
    stage = make_staging(store)
    stage.put("new/b", b"y")
    stage.put("zarr.json", b'{"new": true}')
    publish(stage, store)
    assert sorted(store.list()) == ["new/b", "zarr.json"]
    assert bytes(store.get("zarr.json")) == b'{"new": true}'
    assert not list(stage.list())
