"""Reading tensors: ``open`` -> TensorStore -> lazy TensorHandle; ``load`` for everything."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .. import posix
from ..config import ReadConfig
from ..errors import BigstoreError, MissingTensorError
from ..format import ArrayLayout, Stamp, read_stamped
from ..io import (
    ChunkReader,
    MappedArray,
    RowRequest,
    byte_view,
    get_executor,
    host_buffer,
    mappable,
)
from ..progress import progress_bar
from ..store import Store, open_store
from ._arrays import from_storage_array

__all__ = ["TensorHandle", "TensorStore", "load", "load_numpy", "open"]


class TensorStore(Mapping[str, "TensorHandle"]):
    """A committed tensor store, opened for reading. A mapping of name -> TensorHandle."""

    def __init__(
        self, store: Store, layouts: dict[str, ArrayLayout], config: ReadConfig,
        stamp: Stamp | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self._layouts = layouts
        # reads return bytes of the commit opened, or raise StoreChangedError (see ChunkReader)
        self.reader = ChunkReader(store, config, stamp=stamp)

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | Store,
        *,
        storage_options: Mapping[str, Any] | None = None,
        config: ReadConfig | None = None,
    ) -> TensorStore:
        store = open_store(url, storage_options)
        root, stamp = read_stamped(store, expect_kind="tensors")
        layouts = {
            name: ArrayLayout.from_json(name, doc, f"{store.url}/{name}/zarr.json")
            for name, doc in root.arrays.items()
        }
        return cls(store, layouts, config or ReadConfig(), stamp)

    # -- mapping ------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> TensorHandle:
        return TensorHandle(self, self.meta(name))

    def __iter__(self) -> Iterator[str]:
        return iter(self._layouts)

    def __len__(self) -> int:
        return len(self._layouts)

    def __repr__(self) -> str:
        return f"TensorStore({self.store.url!r}, {len(self)} tensors, {self.nbytes} bytes)"

    def meta(self, name: str) -> ArrayLayout:
        """The layout of tensor ``name`` (shape, dtype, chunking, codec)."""
        try:
            return self._layouts[name]
        except KeyError:
            raise MissingTensorError(f"no tensor {name!r} in {self.store.url}") from None

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for m in self._layouts.values())

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TensorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- bulk reads ---------------------------------------------------------------------------
    def read_into(
        self,
        requests: Iterable[tuple[str, int, int, Any]],
        *,
        progress: Any = None,
    ) -> None:
        """Fill caller-owned buffers: each request is (name, row_start, row_stop, out).

        ``out`` must be a C-contiguous buffer of exactly the requested rows' bytes (any dtype:
        only its memory is used). Chunks are fetched, verified and decoded on worker threads.
        """
        self.reader.read_rows(
            (RowRequest(self.meta(n), a, b, byte_view(o, (b - a) * self.meta(n).row_bytes,
                                                      f"tensor {n!r}"))
             for n, a, b, o in requests),
            progress=progress,
        )

    def load(
        self,
        names: Sequence[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        mmap: bool | None = None,
        progress: Any = None,
    ) -> dict[str, torch.Tensor]:
        """Read tensors whole. ``mmap`` (default: on for uncompressed local stores loaded to the
        CPU) maps chunk files into the tensors with zero copies; with ``verify`` on, every chunk
        is still checked against its crc32c before this returns."""
        names = list(self._layouts) if names is None else list(names)
        metas = [self.meta(n) for n in names]
        self.reader.check_backed(metas)  # before mapping or allocating anything for them
        dev = torch.device(device)
        use_map = dev.type == "cpu" if mmap is None else mmap
        out: dict[str, torch.Tensor] = {}
        if use_map:
            mapped = [m for m in metas if mappable(self.store, m)]
            # mapped by path: confirmed once mapped (the mappings then hold that commit's files)
            with self.reader.guard():
                out.update(self._load_mapped(mapped, progress))
            metas = [m for m in metas if m.name not in out]
        out.update(self._load_copied(metas, dev, progress))
        return {n: out[n] for n in names}

    def _load_mapped(self, metas: list[ArrayLayout], progress: Any) -> dict[str, torch.Tensor]:
        arrays = {m.name: MappedArray(self.store, m) for m in metas}
        if self.config.verify:
            for a in arrays.values():
                a.advise(advice=posix.MADV_WILLNEED)  # start reading everything before checking
            jobs = [(a, k) for a in arrays.values() for k in range(a.layout.n_chunks)]

            def check(job: tuple[MappedArray, int]) -> int:
                a, k = job
                return a.verify([k])

            for n in get_executor(self.config.threads).map(check, jobs):
                if progress is not None:
                    progress.update(n)
        out = {}
        for m in metas:
            arr = arrays.pop(m.name).data().view(m.dtype.storage)
            out[m.name] = from_storage_array(arr.reshape(m.shape), m.dtype)
        return out

    def _load_copied(
        self, metas: list[ArrayLayout], dev: torch.device, progress: Any
    ) -> dict[str, torch.Tensor]:
        pin = dev.type == "cuda" and torch.cuda.is_available()
        host = {
            m.name: (torch.empty(m.nbytes, dtype=torch.uint8, pin_memory=True) if pin
                     else host_buffer(m.nbytes))
            for m in metas
        }
        self.reader.read_rows(
            (RowRequest(m, 0, m.rows, memoryview(host[m.name].numpy())) for m in metas
             if m.nbytes),
            progress=progress,
        )
        out: dict[str, torch.Tensor] = {}
        for m in metas:
            arr = host.pop(m.name).numpy().view(m.dtype.storage).reshape(m.shape)
            t = from_storage_array(arr, m.dtype)
            out[m.name] = t.to(dev, non_blocking=pin) if dev.type != "cpu" else t
        return out


class TensorHandle:
    """A lazy view of one stored tensor. Nothing is read until ``numpy()``/``torch()``/slicing."""

    def __init__(self, owner: TensorStore, meta: ArrayLayout) -> None:
        self._owner = owner
        self.meta = meta

    name = property(lambda self: self.meta.name)
    shape = property(lambda self: self.meta.shape)
    nbytes = property(lambda self: self.meta.nbytes)

    @property
    def dtype(self) -> torch.dtype:
        t = self.meta.dtype.torch
        if t is None:
            raise BigstoreError(f"this torch build has no dtype {self.meta.dtype.name}")
        return t

    @property
    def dtype_name(self) -> str:
        return self.meta.dtype.name

    def __len__(self) -> int:
        if not self.meta.shape:
            raise TypeError("len() of a 0-d tensor")
        return self.meta.shape[0]

    def __repr__(self) -> str:
        return f"TensorHandle({self.name!r}, shape={self.shape}, dtype={self.meta.dtype.name})"

    def _rows(self, start: int, stop: int) -> np.ndarray[Any, Any]:
        m = self.meta
        # before allocating what its document claims for these rows
        self._owner.reader.check_backed([m], rows=(start, stop))
        out_shape = (stop - start, *m.shape[1:]) if m.shape else ()
        out = np.empty(out_shape, dtype=m.dtype.storage)
        if out.size:
            self._owner.read_into([(m.name, start, stop, out)])
        return out

    def numpy(self) -> np.ndarray[Any, Any]:
        """The whole tensor as numpy (bfloat16/float8 come back as their raw uint bits)."""
        return self._rows(0, self.meta.rows)

    def torch(self, device: str | torch.device = "cpu") -> torch.Tensor:
        t = from_storage_array(self.numpy(), self.meta.dtype)
        return t if torch.device(device).type == "cpu" else t.to(device)

    def __getitem__(self, index: int | slice) -> TensorSlice:
        m = self.meta
        if not m.shape:
            raise IndexError(f"tensor {m.name!r} is 0-d: it cannot be sliced")
        if isinstance(index, slice):
            start, stop, step = index.indices(m.shape[0])
            if step != 1:
                raise IndexError(f"tensor {m.name!r}: only step-1 slices along axis 0")
            return TensorSlice(self, start, max(start, stop), squeeze=False)
        if isinstance(index, int | np.integer):
            i = int(index)
            if i < -m.shape[0] or i >= m.shape[0]:
                raise IndexError(f"row {i} out of range for tensor {m.name!r} of {m.shape[0]} rows")
            i %= m.shape[0]
            return TensorSlice(self, i, i + 1, squeeze=True)
        raise IndexError(f"tensor {m.name!r}: index with an int or a slice along axis 0")


class TensorSlice:
    """Rows [start, stop) of a stored tensor; reads only the chunks that hold them."""

    def __init__(self, handle: TensorHandle, start: int, stop: int, *, squeeze: bool) -> None:
        self.handle, self.start, self.stop, self._squeeze = handle, start, stop, squeeze

    @property
    def shape(self) -> tuple[int, ...]:
        rest = self.handle.shape[1:]
        return rest if self._squeeze else (self.stop - self.start, *rest)

    def numpy(self) -> np.ndarray[Any, Any]:
        out = self.handle._rows(self.start, self.stop)
        return out[0] if self._squeeze else out

    def torch(self, device: str | torch.device = "cpu") -> torch.Tensor:
        t = from_storage_array(self.numpy(), self.handle.meta.dtype)
        return t if torch.device(device).type == "cpu" else t.to(device)


def open(
    url: str | os.PathLike[str],
    mode: str = "r",
    storage_options: Mapping[str, Any] | None = None,
    *,
    config: ReadConfig | None = None,
) -> TensorStore:
    """Open the committed store at ``url`` for reading (``mode="r"``).

    To write, use :func:`bigstore.save` or :class:`bigstore.TensorWriter`.
    """
    if mode != "r":
        raise BigstoreError(
            f"open(mode={mode!r}): stores open read-only; write with bigstore.save or TensorWriter"
        )
    return TensorStore.open(url, storage_options=storage_options, config=config)


def load(
    url: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    config: ReadConfig | None = None,
    mmap: bool | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Every tensor (or ``names``) of the store at ``url`` as torch tensors on ``device``.

    Uncompressed local stores loaded to the CPU are memory-mapped (zero copies; writes to the
    tensors stay private to the process); pass ``mmap=False`` for private copies."""
    with TensorStore.open(url, storage_options=storage_options, config=config) as ts:
        total = sum(ts.meta(n).nbytes for n in (names or list(ts)))
        bar = progress_bar(progress, f"load {ts.store.url}", total)
        try:
            return ts.load(names, device=device, mmap=mmap, progress=bar)
        finally:
            if bar is not None:
                bar.close()


def load_numpy(
    url: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    config: ReadConfig | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Like :func:`load`, as numpy arrays (bfloat16 and float8 as their raw uint bits)."""
    with TensorStore.open(url, storage_options=storage_options, config=config) as ts:
        return {n: ts[n].numpy() for n in (names if names is not None else list(ts))}
