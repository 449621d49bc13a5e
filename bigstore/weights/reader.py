"""Reading tensors: ``open`` -> TensorStore -> lazy TensorHandle; ``load`` for everything.

Quantized tensors read as their logical dtype (dequantized by the chunk reader on the CPU, by
torch on the destination device for ``device="cuda"``: the packed bytes cross the bus), or as
their parts (:class:`~bigstore.weights.quantize.PackedTensor`) with ``dequantize=False``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import torch

from ..config import ReadConfig
from ..errors import BigstoreError, InvalidIndexError, MissingTensorError, NotAStoreError
from ..format import ArrayLayout, QuantizedLayout, QuantSpec, Stamp, is_quantized_doc, read_stamped
from ..format.safetensors import open_weights
from ..io import (
    ChunkReader,
    MappedArray,
    RowRequest,
    byte_view,
    host_buffer,
    mappable,
    verify_many,
)
from ..io.dequant import dequantize_into
from ..plan.index import Rows, select_rows
from ..progress import progress_bar
from ..store import Store
from ._arrays import from_storage_array
from .quantize import PackedTensor

__all__ = ["TensorHandle", "TensorStore", "load", "load_numpy", "open", "parse_layouts"]

_TAKE_BYTES = 256 << 20  # rows gathered by index are read through spans of at most this much


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
        store = open_weights(url, storage_options)
        root, stamp = read_stamped(store, expect_kind="tensors")
        return cls(store, parse_layouts(store.url, root.arrays), config or ReadConfig(), stamp)

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
        """The layout of tensor ``name``: its logical shape, dtype, ``nbytes`` and chunking.

        A quantized tensor's layout is a :class:`~bigstore.format.QuantizedLayout` (a subclass):
        ``quant`` (the scheme), ``parts`` / ``part_spans(start, stop)`` (the stored arrays and
        the rows of each that hold given logical rows) and ``stored_nbytes``. Reading it through
        ``reader.read_rows`` fills the caller's buffer with the dequantized values; a device
        filler can move the parts instead and call ``bigstore.io.dequant.dequantize_into``.
        """
        try:
            return self._layouts[name]
        except KeyError:
            raise MissingTensorError(f"no tensor {name!r} in {self.store.url}") from None

    def quantization(self, name: str) -> QuantSpec | None:
        """How tensor ``name`` is quantized, or None when it is stored as it is."""
        m = self.meta(name)
        return m.quant if isinstance(m, QuantizedLayout) else None

    @property
    def nbytes(self) -> int:
        """Bytes of every tensor in its logical dtype (what ``load`` returns)."""
        return sum(m.nbytes for m in self._layouts.values())

    @property
    def stored_nbytes(self) -> int:
        """Bytes of every tensor as stored, before chunk compression (quantized: the parts)."""
        return sum(m.stored_nbytes if isinstance(m, QuantizedLayout) else m.nbytes
                   for m in self._layouts.values())

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
        dequantize: bool = True,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Read tensors whole. ``mmap`` (default: on for uncompressed local stores loaded to the
        CPU) maps chunk files into the tensors with zero copies; with ``verify`` on, every chunk
        is still checked against its crc32c before this returns.

        Quantized tensors come back dequantized into their logical dtype (on the CPU by the
        reader's numba kernels; on another device by torch there, after copying only the
        packed parts), or as :class:`PackedTensor` parts with ``dequantize=False``."""
        names = list(self._layouts) if names is None else list(names)
        metas = [self.meta(n) for n in names]
        self.reader.check_backed(metas)  # before mapping or allocating anything for them
        dev = torch.device(device)
        quantized = [m for m in metas if isinstance(m, QuantizedLayout)]
        metas = [m for m in metas if not isinstance(m, QuantizedLayout)]
        out: dict[str, Any] = {}
        if quantized and (not dequantize or dev.type != "cpu"):
            parts = [lay for q in quantized for _, lay in q.parts]
            got = self._load_plain(parts, dev, mmap, progress)
            for q in quantized:
                packed = PackedTensor(got[f"{q.path}/packed"], got[f"{q.path}/scales"],
                                      got.get(f"{q.path}/zeros"), q.quant)
                out[q.path] = packed if not dequantize else self._dequantize_on(q, packed, dev)
        else:
            metas += quantized  # the reader dequantizes them on the CPU
        out.update(self._load_plain(metas, dev, mmap, progress))
        return {n: out[n] for n in names}

    def _load_plain(self, metas: list[ArrayLayout], dev: torch.device, mmap: bool | None,
                    progress: Any) -> dict[str, torch.Tensor]:
        use_map = dev.type == "cpu" if mmap is None else mmap
        out: dict[str, torch.Tensor] = {}
        if use_map:
            mapped = [m for m in metas if mappable(self.store, m)]
            # mapped by path: confirmed once mapped (the mappings then hold that commit's files)
            with self.reader.guard():
                out.update(self._load_mapped(mapped, progress))
            metas = [m for m in metas if m.name not in out]
        out.update(self._load_copied(metas, dev, progress))
        return out

    @staticmethod
    def _dequantize_on(q: QuantizedLayout, packed: PackedTensor, dev: torch.device
                       ) -> torch.Tensor:
        """The parts are on ``dev`` already: dequantize there, into the logical dtype."""
        out = torch.empty(q.shape, dtype=q.dtype.torch, device=dev)
        parts = {"packed": packed.packed, "scales": packed.scales}
        if packed.zeros is not None:
            parts["zeros"] = packed.zeros
        return dequantize_into(q, parts, out)

    def _load_mapped(self, metas: list[ArrayLayout], progress: Any) -> dict[str, torch.Tensor]:
        arrays = {m.name: MappedArray(self.store, m, populate=True) for m in metas}
        if self.config.verify:
            for a in arrays.values():
                a.prefetch()  # start reading everything before checking any of it
            for n in verify_many(arrays.values(), threads=self.config.threads):
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

    @property
    def quantization(self) -> QuantSpec | None:
        """How the tensor is quantized (None: stored as it is). Reads return it dequantized."""
        return self.meta.quant if isinstance(self.meta, QuantizedLayout) else None

    def packed(self, device: str | torch.device = "cpu") -> PackedTensor:
        """A quantized tensor's stored parts, for quantized kernels."""
        if not isinstance(self.meta, QuantizedLayout):
            raise BigstoreError(f"tensor {self.name!r} is not quantized")
        got = self._owner.load([self.name], device=device, dequantize=False)[self.name]
        assert isinstance(got, PackedTensor)
        return got

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

    def __getitem__(self, index: Any) -> TensorSlice:
        """Rows along axis 0, by numpy's rules: ``h[i]`` (negative counts from the end; the axis
        is dropped, so a 1-D tensor gives a 0-d one), ``h[a:b:step]`` (any step), ``h[mask]``
        (a boolean array as long as axis 0), ``h[int_array]`` (any shape, like numpy), and
        ``h[...]``. Nothing is read until ``.numpy()``/``.torch()``, and then only the chunks
        holding those rows. Other axes, ``None``, bools, floats and strings are refused."""
        m = self.meta
        if not m.shape:
            raise InvalidIndexError(
                f"tensor {m.name!r} is 0-d: it has no rows to index (use .numpy() or .torch())"
            )
        if isinstance(index, tuple):
            raise InvalidIndexError(
                f"tensor {m.name!r}: {index!r} indexes several axes; bigstore indexes rows "
                "(axis 0) only: select rows, then index the result, e.g. h[0:10].numpy()[:, 3]"
            )
        return TensorSlice(self, select_rows(index, m.shape[0], "row", nd=True))

    def _take(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """Rows ``rows`` (any order, repeats allowed) reading only the chunks that hold them:
        per chunk, the span from its first to its last wanted row, a bounded group at a time."""
        m = self.meta
        out = np.empty((rows.shape[0], *m.shape[1:]), dtype=m.dtype.storage)
        if not out.size:
            return out
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        chunk = srt // m.chunk_rows
        cuts = np.flatnonzero(np.diff(chunk)) + 1
        groups = np.split(np.arange(srt.shape[0]), cuts)
        budget = max(m.chunk_nbytes, _TAKE_BYTES)
        i = 0
        while i < len(groups):
            batch: list[tuple[np.ndarray[Any, Any], int, int, np.ndarray[Any, Any]]] = []
            nbytes = 0
            while i < len(groups) and (not batch or nbytes < budget):
                g = groups[i]
                lo, hi = int(srt[g[0]]), int(srt[g[-1]]) + 1
                buf = np.empty((hi - lo, *m.shape[1:]), dtype=m.dtype.storage)
                batch.append((g, lo, hi, buf))
                nbytes += buf.nbytes
                i += 1
            self._owner.read_into([(m.name, lo, hi, buf) for _, lo, hi, buf in batch])
            for g, lo, _, buf in batch:
                out[order[g]] = buf[srt[g] - lo]
        return out


class TensorSlice:
    """Rows of a stored tensor selected by ``handle[index]``; reads only the chunks holding
    them, when ``numpy()`` or ``torch()`` is called."""

    def __init__(self, handle: TensorHandle, rows: Rows) -> None:
        self.handle, self.rows = handle, rows

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.rows.shape, *self.handle.shape[1:])

    def numpy(self) -> np.ndarray[Any, Any]:
        """The rows as numpy (bfloat16/float8 as their raw uint bits); an integer index gives
        the row itself (0-d for a 1-D tensor)."""
        r, h = self.rows, self.handle
        if r.contiguous:
            out = h._rows(r.start, r.start + r.count)
        elif r.array is None and r.step == -1:  # a reversed range: one read, then flip
            out = h._rows(r.stop + 1, r.start + 1)[::-1].copy()
        else:
            out = h._take(r.rows())
        return out.reshape(self.shape)

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


@overload
def load(
    url: str | os.PathLike[str] | Store, *, device: str | torch.device = ...,
    names: Sequence[str] | None = ..., storage_options: Mapping[str, Any] | None = ...,
    config: ReadConfig | None = ..., mmap: bool | None = ..., dequantize: Literal[True] = ...,
    progress: bool = ..., group: Any = ...,
) -> dict[str, torch.Tensor]: ...


@overload
def load(
    url: str | os.PathLike[str] | Store, *, device: str | torch.device = ...,
    names: Sequence[str] | None = ..., storage_options: Mapping[str, Any] | None = ...,
    config: ReadConfig | None = ..., mmap: bool | None = ..., dequantize: bool,
    progress: bool = ..., group: Any = ...,
) -> dict[str, torch.Tensor | PackedTensor]: ...


def load(
    url: str | os.PathLike[str] | Store,
    *,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    config: ReadConfig | None = None,
    mmap: bool | None = None,
    dequantize: bool = True,
    progress: bool = False,
    group: Any = None,
) -> dict[str, Any]:
    """Every tensor (or ``names``) of the store at ``url`` as torch tensors on ``device``.

    Uncompressed local stores loaded to the CPU are memory-mapped (zero copies; writes to the
    tensors stay private to the process); pass ``mmap=False`` for private copies. Quantized
    tensors come back dequantized into their original dtype; with ``dequantize=False`` as
    :class:`~bigstore.weights.quantize.PackedTensor` parts (packed values, scales, zeros).

    group: a torch.distributed process group (``torch.distributed.group.WORLD`` for all ranks).
    Every rank of it calls ``load`` with the same arguments; each reads a disjoint ~1/N of the
    chunks and the ranks exchange them over the group, so storage serves each byte once per
    job and every rank gets identical tensors (see :mod:`bigstore.weights.distributed`)."""
    if group is not None:
        from .distributed import load_group  # imports this module

        return load_group(url, group=group, device=device, names=names,
                          storage_options=storage_options, config=config, progress=progress)
    with TensorStore.open(url, storage_options=storage_options, config=config) as ts:
        total = sum(ts.meta(n).nbytes for n in (names or list(ts)))
        bar = progress_bar(progress, f"load {ts.store.url}", total)
        try:
            return ts.load(names, device=device, mmap=mmap, dequantize=dequantize, progress=bar)
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


def parse_layouts(url: str, docs: Mapping[str, Any]) -> dict[str, ArrayLayout]:
    """Tensor name -> layout, from the root's consolidated metadata (path -> document).

    Arrays are plain tensors; a group with ``attributes.bigstore.quantized`` is a quantized
    tensor, and the arrays under it (``<name>/packed`` ...) are its parts, not tensors."""
    out: dict[str, ArrayLayout] = {}
    for path, doc in docs.items():
        where = f"{url}/{path}/zarr.json"
        if is_quantized_doc(doc):
            out[path] = QuantizedLayout.from_docs(path, doc, docs, f"{url}/{path}")
        elif "/" in path:
            parent = path.rsplit("/", 1)[0]
            if not is_quantized_doc(docs.get(parent)):
                raise NotAStoreError(f"{where}: {path!r} is not a tensor of this store")
        else:
            out[path] = ArrayLayout.from_json(path, doc, where)
    return out
