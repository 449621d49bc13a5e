"""``open_dataset`` and ``Dataset``: sizes, columns, and random access by index."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import bigstore_native.data as kernels
import numpy as np

from ..config import DATASET_CACHE_BYTES, ReadConfig
from ..errors import InvalidIndexError, NotAStoreError
from ..forksafe import PerProcess
from ..format import ArrayLayout, RootDoc, Stamp, read_root, read_stamped
from ..io import ChunkReader, MappedArray, mappable
from ..plan.index import select_rows
from ..store import CachedStore, Store, default_cache_dir, open_store
from ._chunks import ChunkPools, gather_fixed, gather_var, load_chunks
from ._kinds import decode_batch
from ._schema import ColumnSpec, DatasetLayout, is_count

if TYPE_CHECKING:  # imported lazily at run time: the loader imports this module
    from typing_extensions import Unpack

    from .loader import Loader, LoaderOptions
    from .torch import TorchDataset

__all__ = ["Dataset", "open_dataset", "read_layout"]


def read_layout(store: Store, root: RootDoc | None = None) -> DatasetLayout:
    """The dataset's layout from its root document (read from ``store`` unless given)."""
    root = root if root is not None else read_root(store, expect_kind="dataset")
    attrs = root.attrs
    try:
        columns = tuple(ColumnSpec.from_json(c) for c in attrs["columns"])
        num_rows, chunk_rows = attrs["num_rows"], attrs["chunk_rows"]
        if not (is_count(num_rows) and is_count(chunk_rows) and chunk_rows >= 1):
            raise ValueError(f"num_rows {num_rows!r}, chunk_rows {chunk_rows!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise NotAStoreError(f"{store.url}: malformed dataset attributes ({e})") from None
    arrays: dict[str, ArrayLayout] = {}
    for c in columns:
        paths = [f"{c.name}/values", f"{c.name}/offsets"] if c.variable else [c.name]
        for p in paths:
            doc = root.arrays.get(p)
            if doc is None:
                raise NotAStoreError(f"{store.url}: column {c.name!r} has no array {p!r}")
            arrays[p] = ArrayLayout.from_json(p, doc, f"{store.url}/{p}")
            if not arrays[p].sharded:
                raise NotAStoreError(f"{store.url}/{p}: dataset arrays must be sharded")
    layout = DatasetLayout(num_rows, chunk_rows, columns, arrays)
    for c in columns:
        main = layout.main_array(c)
        if main.rows != num_rows or main.chunk_rows != chunk_rows:
            raise NotAStoreError(f"{store.url}: array of column {c.name!r} disagrees with the root")
        if c.variable and (main.inner != (2,) or main.dtype.name != "int64"):
            raise NotAStoreError(f"{store.url}: offsets of column {c.name!r} are not int64 "
                                 "(rows, 2)")
        if not c.variable and main.inner != c.shape:
            raise NotAStoreError(f"{store.url}: column {c.name!r} has samples of shape "
                                 f"{main.inner}, its description says {c.shape}")
        data = layout.values_array(c) if c.variable else main
        text = c.kind in ("str", "bytes")  # written as their UTF-8 / raw bytes
        if (data.dtype.name != c.dtype.name or (c.variable and data.inner != ())
                or (text and c.dtype.name != "uint8")):
            raise NotAStoreError(f"{store.url}: column {c.name!r} is stored as "
                                 f"{data.dtype.name} {data.shape}, its description says "
                                 f"{c.dtype.name}")
    return layout


class Dataset:
    """A committed dataset: ``len(ds)``, ``ds.columns``, ``ds[i]``, ``ds[indices]``, loaders."""

    def __init__(
        self,
        url: str,
        store: Store,
        layout: DatasetLayout,
        *,
        storage_options: Mapping[str, Any] | None = None,
        verify: bool = True,
        cache_dir: str | None = None,
        cache_bytes: int | str = DATASET_CACHE_BYTES,
        stamp: Stamp | None = None,
    ) -> None:
        self.url = url
        self.store = store
        self.layout = layout
        self.storage_options = dict(storage_options or {})
        self.verify = verify
        self._cache = (cache_dir, cache_bytes)
        # reads return bytes of the commit opened, or raise StoreChangedError (see ChunkReader)
        self.reader = ChunkReader(store, ReadConfig(verify=verify), stamp=stamp)
        # this process's zero-copy view of each column (a forked worker maps again)
        self._maps: PerProcess[dict[str, MappedArray]] = PerProcess(dict)

    # -- pickling: DataLoader workers (spawn/forkserver) reopen by URL, never inherit handles --
    def __getstate__(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "storage_options": self.storage_options,
            "verify": self.verify,
            "cache": self._cache,
            "layout": self.layout,
            "stamp": self.reader.stamp,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        # the worker reads the commit the parent opened: the same layout (an append since only
        # added rows it does not see), or StoreChangedError when the dataset was replaced
        cache_dir, cache_bytes = state["cache"]
        ds = open_dataset(
            state["url"],
            state["storage_options"],
            verify=state["verify"],
            cache_dir=cache_dir,
            cache_bytes=cache_bytes,
        )
        ds.layout = state["layout"]
        ds.reader.stamp = state["stamp"]
        ds.reader.confirm()
        self.__dict__.update(ds.__dict__)

    def close(self) -> None:
        """Release this process's memory mappings of the dataset's shards (loaders that are
        running keep theirs until they finish); the next loader maps again."""
        self._maps.reset()

    def check_backed(self, columns: Sequence[ColumnSpec]) -> None:
        """Raise (CorruptChunkError, naming the array and chunk) unless the stored shards can
        hold what the documents of ``columns`` claim: before anything is allocated or mapped
        for them."""
        arrays = [self.layout.main_array(c) for c in columns]
        arrays += [self.layout.values_array(c) for c in columns if c.variable]
        self.reader.check_backed(arrays)

    def mapped(self, columns: Sequence[ColumnSpec]) -> dict[str, MappedArray] | None:
        """Zero-copy views of ``columns`` (made once per process), or None when not every
        column can be mapped: not on a local file system, compressed, variable length, or
        ``BIGSTORE_NO_MMAP=1``."""
        if not columns or any(
            c.variable or not mappable(self.store, self.layout.main_array(c)) for c in columns
        ):
            return None
        self.check_backed(columns)
        maps = self._maps.get()
        out = {}
        new = {}
        with self.reader.guard():  # mapped by path: kept only once confirmed to be the commit
            for c in columns:      # opened (the mappings then hold that commit's files)
                if c.name not in maps:
                    new[c.name] = MappedArray(self.store, self.layout.main_array(c),
                                              populate=True)
        maps.update(new)
        for c in columns:
            out[c.name] = maps[c.name]
        return out

    # -- description --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.layout.num_rows

    @property
    def columns(self) -> list[tuple[str, str, tuple[int, ...] | None]]:
        """(name, dtype, per-sample shape) of each column; shape None for variable length."""
        return [c.describe() for c in self.layout.columns]

    def __repr__(self) -> str:
        cols = ", ".join(
            f"{n}: {d}{list(s) if s is not None else '[*]'}" for n, d, s in self.columns
        )
        return f"Dataset({self.url!r}, {len(self)} samples, {cols})"

    def select(self, columns: Iterable[str] | None) -> list[ColumnSpec]:
        if columns is None:
            return list(self.layout.columns)
        if isinstance(columns, str):
            columns = [columns]
        return [self.layout.column(c) for c in columns]

    # -- random access ------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> dict[str, Any]:
        """Samples by numpy's rules along the sample axis: ``ds[i]`` (negative counts from the
        end) is one sample, a dict of values; ``ds[a:b:step]``, ``ds[mask]`` (a boolean array
        of ``len(ds)``), ``ds[[i, j]]`` and ``ds[...]`` are batches, dicts of arrays (lists for
        variable-length columns). Refused with an ``IndexError`` that is a ``BigstoreError``:
        out-of-range indices, floats, ``None``, bools, tuples, 2-D index arrays, and column
        names (read one column with ``ds.read(idx, columns=[name])``)."""
        if isinstance(index, str):
            hint = (
                f"to read column {index!r}, use ds.read(indices, columns=[{index!r}]) or "
                f"ds.loader(batch_size, columns=[{index!r}])"
                if index in {c.name for c in self.layout.columns}
                else f"this dataset has columns {[c.name for c in self.layout.columns]}"
            )
            raise InvalidIndexError(f"ds[{index!r}]: datasets are indexed by sample; {hint}")
        rows = select_rows(index, len(self), "sample")
        batch = self.read(rows.rows())
        if rows.scalar:
            return {k: v[0] for k, v in batch.items()}
        return batch

    def _check(self, index: Any) -> np.ndarray[Any, Any]:
        """The sample numbers (int64, in range, in order) ``index`` selects: anything
        ``ds[...]`` accepts."""
        if isinstance(index, str):
            raise InvalidIndexError(f"{index!r} is not a sample index")
        return select_rows(index, len(self), "sample").rows()

    def read(self, index: Any, columns: Iterable[str] | None = None) -> dict[str, Any]:
        """The samples ``index`` selects (an index array in any order, repeats allowed, a
        mask, a slice: whatever ``ds[...]`` accepts) as batched arrays, always a batch; reads
        only the inner chunks that hold them."""
        idx = self._check(index)
        cols = self.select(columns)
        self.check_backed(cols)
        uniq, which, rows = kernels.split_by_chunk(
            idx, self.layout.chunk_rows, max(1, self.layout.n_chunks)
        )
        pools = ChunkPools(self.layout, cols, max(1, len(uniq)))
        chunks = uniq.tolist()
        slots = list(range(len(chunks)))
        for c in cols:  # the reader runs each column's requests several at a time
            load_chunks(self.reader, self.layout, c, chunks, pools, slots, confirm=False)
        self.reader.confirm()  # once for all columns
        out: dict[str, Any] = {}
        for c in cols:
            out[c.name] = (
                gather_var(pools, c, which, rows)
                if c.variable
                else gather_fixed(pools, c, which, rows)
            )
        return decode_batch(cols, out)  # timestamps, categories, bf16: the values users gave

    # -- iteration ----------------------------------------------------------------------------
    def loader(self, batch_size: int, **options: Unpack[LoaderOptions]) -> Loader:
        """A shuffled, sharded, resumable batch iterator; the options are those of
        :func:`bigstore.data.loader.make_config` (see :class:`bigstore.config.LoaderConfig`)."""
        from .loader import Loader, make_config

        return Loader(self, make_config(batch_size, **options))

    def torch_dataset(self, batch_size: int, **options: Unpack[LoaderOptions]) -> TorchDataset:
        """A ``torch.utils.data.IterableDataset`` yielding whole batches (use
        ``DataLoader(ds, batch_size=None, num_workers=...)``); options as for :meth:`loader`."""
        from .loader import make_config
        from .torch import TorchDataset

        return TorchDataset(self, make_config(batch_size, **options))


def open_dataset(
    url: str | os.PathLike[str],
    storage_options: Mapping[str, Any] | None = None,
    *,
    verify: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_bytes: int | str = DATASET_CACHE_BYTES,
) -> Dataset:
    """Open the dataset at ``url``. Remote (fsspec) datasets read through a bounded local cache
    in ``cache_dir`` (default ``$BIGSTORE_CACHE_DIR`` or ``~/.cache/bigstore``), LRU by bytes."""
    s = os.fspath(url)
    store = open_store(s, storage_options)
    root, stamp = read_stamped(store, expect_kind="dataset")
    layout = read_layout(store, root)
    cdir = os.fspath(cache_dir) if cache_dir is not None else None
    if store.is_remote:
        store = CachedStore(store, cdir or default_cache_dir(), cache_bytes)
    return Dataset(
        s,
        store,
        layout,
        storage_options=storage_options,
        verify=verify,
        cache_dir=cdir,
        cache_bytes=cache_bytes,
        stamp=stamp,
    )
