"""A read-only store over the checkpoints people already have: safetensors files.

A ``.safetensors`` file, or a Hugging Face model directory (one ``model.safetensors``, or shards
listed in ``model.safetensors.index.json``), seen as a bigstore tensor store without converting
anything: each tensor is one Zarr v3 array of a single chunk, that chunk being the tensor's byte
range in its file (safetensors stores raw little-endian bytes), so the tensor can be read with
one request or memory-mapped in place. The root and array documents are made up in memory.

Such a source has **no per-chunk checksums** (safetensors has none): bytes are used as they are.
Other files of a model directory (``config.json``, tokenizer files) are served under their names.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import NotAStoreError, StoreNotFoundError, TruncatedChunkError
from ..store import Buffer, ByteRange, Store, check_key, is_local_url, local_path, open_store
from .array import ArrayLayout
from .codecs import ChunkCodec
from .dtypes import SAFETENSORS_DTYPES, dtype_spec
from .root import encode_root

__all__ = ["SafetensorsStore", "is_safetensors_source", "open_weights"]

# safetensors dtype -> bigstore logical dtype
_DTYPES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


def open_weights(url: str | os.PathLike[str] | Store,
                 storage_options: Any = None) -> Store:
    """The store of tensors at ``url``: a bigstore store, or a local safetensors file or model
    directory seen as one (read-only)."""
    if isinstance(url, Store):
        return url
    s = os.fspath(url)
    if is_local_url(s) and is_safetensors_source(local_path(s)):
        return SafetensorsStore(local_path(s))
    return open_store(s, storage_options)


def is_safetensors_source(path: str | os.PathLike[str]) -> bool:
    """A ``.safetensors`` file, or a directory of them without a bigstore root document."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() == ".safetensors"
    return p.is_dir() and not (p / "zarr.json").exists() and (
        (p / "model.safetensors.index.json").exists() or any(p.glob("*.safetensors"))
    )


@dataclass(frozen=True)
class _Tensor:
    file: str
    offset: int  # absolute, in the file
    nbytes: int
    dtype: str
    shape: tuple[int, ...]


class SafetensorsStore(Store):
    """Read-only; see the module docstring."""

    zero_copy_reads = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        root = Path(path).expanduser().absolute()
        super().__init__(str(root))
        self.root = root
        files = self._files(root)
        self._tensors: dict[str, _Tensor] = {}
        for f in files:
            for name, t in _parse(f).items():
                if name in self._tensors:
                    raise NotAStoreError(f"{root}: tensor {name!r} appears in two shards")
                self._tensors[name] = t
        self._extra = (
            {p.name: p for p in root.iterdir() if p.is_file() and p.suffix != ".safetensors"}
            if root.is_dir() else {}
        )
        self._docs = self._documents()

    @staticmethod
    def _files(root: Path) -> list[Path]:
        if root.is_file():
            return [root]
        index = root / "model.safetensors.index.json"
        if index.exists():
            try:
                names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as e:
                raise NotAStoreError(f"{index}: not a safetensors index ({e})") from None
            files = [(root / n).resolve() for n in names]
            for f in files:
                if root.resolve() not in f.parents:
                    raise NotAStoreError(f"{index}: shard {f.name!r} lies outside {root}")
            return files
        return sorted(root.glob("*.safetensors"))

    def _documents(self) -> dict[str, bytes]:
        arrays: dict[str, dict[str, object]] = {}
        docs: dict[str, bytes] = {}
        for name, t in self._tensors.items():
            rows = t.shape[0] if t.shape else 1
            lay = ArrayLayout(name, t.shape, dtype_spec(t.dtype), max(1, rows),
                              ChunkCodec(None, 0, checksum=False))
            doc = lay.to_json()
            arrays[name] = doc
            docs[lay.meta_key] = json.dumps(doc).encode()
        attrs = {"tensors": len(self._tensors), "source": "safetensors"}
        docs["zarr.json"] = encode_root("tensors", attrs, arrays)
        return docs

    # -- where a key's bytes are ----------------------------------------------------------------
    def _chunk(self, key: str) -> _Tensor | None:
        name, sep, rest = check_key(key).partition("/c")
        t = self._tensors.get(name)
        if t is None or not sep or (rest and rest.strip("/0") != ""):
            return None
        return t

    def _locate(self, key: str) -> tuple[Path | None, int, int, bytes | None]:
        """(file, offset, size, in-memory bytes) of ``key``."""
        doc = self._docs.get(check_key(key))
        if doc is not None:
            return None, 0, len(doc), doc
        t = self._chunk(key)
        if t is not None and t.nbytes:
            return Path(t.file), t.offset, t.nbytes, None
        extra = self._extra.get(key)
        if extra is not None:
            return extra, 0, extra.stat().st_size, None
        raise StoreNotFoundError(f"{self.url}/{key} does not exist")

    # -- reads ----------------------------------------------------------------------------------
    def get(self, key: str) -> Buffer:
        path, off, size, mem = self._locate(key)
        if mem is not None:
            return mem
        assert path is not None
        buf = bytearray(size)
        self._pread(path, off, [memoryview(buf)], key)
        return buf

    def get_ranges(self, key: str, ranges: Sequence[ByteRange]) -> list[Buffer]:
        path, off, size, mem = self._locate(key)
        out: list[Buffer] = []
        for r in ranges:
            end = min(r.end, size)
            if mem is not None:
                out.append(mem[r.start : end])
                continue
            assert path is not None
            buf = bytearray(max(0, end - r.start))
            self._pread(path, off + r.start, [memoryview(buf)], key)
            out.append(buf)
        return out

    def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
        path, off, size, mem = self._locate(key)
        want = sum(o.nbytes for o in outs)
        if offset + want > size:
            raise TruncatedChunkError(
                f"{self.url}/{key}: {size} bytes, wanted {want} at offset {offset}"
            )
        if mem is not None:
            super().read_into(key, offset, outs)
            return
        assert path is not None
        self._pread(path, off + offset, outs, key)

    def _pread(self, path: Path, offset: int, outs: Sequence[memoryview], key: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            views = [memoryview(o).cast("B") for o in outs]
            pos = offset
            for v in views:
                while v.nbytes:
                    n = os.preadv(fd, [v], pos)
                    if n == 0:
                        raise TruncatedChunkError(f"{self.url}/{key}: {path} ends early")
                    pos += n
                    v = v[n:]
        finally:
            os.close(fd)

    def exists(self, key: str) -> bool:
        try:
            self._locate(key)
        except StoreNotFoundError:
            return False
        return True

    def size(self, key: str) -> int:
        return self._locate(key)[2]

    def version(self, key: str) -> str | None:
        path, _, size, _ = self._locate(key)
        if path is None:
            st = self.root.stat()
            return f"{st.st_mtime_ns}"
        st = path.stat()
        return f"{st.st_ino}-{st.st_mtime_ns}-{size}"

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = list(self._docs) + list(self._extra)
        for name, t in self._tensors.items():
            if t.nbytes:
                keys.append(f"{name}/c" if not t.shape else
                            f"{name}/c/" + "/".join(["0"] * len(t.shape)))
        p = prefix.rstrip("/")
        for k in keys:
            if not p or k == p or k.startswith(p + "/"):
                yield k

    def local_file(self, key: str) -> tuple[str, int] | None:
        path, off, _, mem = self._locate(key)
        return None if mem is not None or path is None else (str(path), off)

    # -- read-only --------------------------------------------------------------------------------
    def _refuse(self) -> NotAStoreError:
        return NotAStoreError(
            f"{self.url} is read as safetensors files, read-only: write a store elsewhere "
            "(bigstore.convert makes one)"
        )

    def put(self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False) -> None:
        raise self._refuse()

    def delete(self, key: str) -> None:
        raise self._refuse()

    def delete_prefix(self, prefix: str) -> None:
        raise self._refuse()


def _parse(path: Path) -> dict[str, _Tensor]:
    """The tensors of one safetensors file: checked against the file's real size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise NotAStoreError(f"{path}: too short to be a safetensors file")
            n = int.from_bytes(head, "little")
            if n > min(_MAX_HEADER, size - 8):
                raise NotAStoreError(f"{path}: header of {n} bytes does not fit the file")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise StoreNotFoundError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise NotAStoreError(f"{path}: not a safetensors file ({e})") from None
    if not isinstance(header, dict):
        raise NotAStoreError(f"{path}: not a safetensors header")
    base = 8 + n
    out: dict[str, _Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype = _DTYPES[info["dtype"]]
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
            raise NotAStoreError(f"{path}: tensor {name!r}: bad header entry ({e})") from None
        numel = 1
        for d in shape:
            if d < 0:
                raise NotAStoreError(f"{path}: tensor {name!r} has a negative dimension")
            numel *= d
        if end - begin != numel * dtype_spec(dtype).itemsize or begin < 0 or base + end > size:
            raise NotAStoreError(
                f"{path}: tensor {name!r}: bytes [{begin}, {end}) do not match its shape "
                f"{shape} and dtype, or lie past the end of the file"
            )
        out[name] = _Tensor(str(path), base + begin, end - begin, dtype, shape)
    return out
