"""Streaming, crash-safe tensor writes: tensor by tensor into a staging store, then publish."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import numpy as np

from ..config import WriteConfig, parse_bytes
from ..errors import BigstoreError, InvalidKeyError
from ..format import ArrayLayout, check_name, choose_chunk_rows, parse_codec, write_root
from ..io import get_executor
from ..progress import progress_bar
from ..store import Store, open_store
from ..store.publish import check_replaceable, discard, make_staging, publish
from ._arrays import to_storage_array

__all__ = ["TensorWriter", "save"]


class TensorWriter:
    """Write tensors one at a time; ``commit()`` (or leaving the ``with`` block) publishes them.

    Nothing is visible at ``url`` until the commit, and an exception inside the block (or a
    killed process) leaves whatever was at ``url`` before untouched.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        config: WriteConfig | None = None,
        storage_options: Mapping[str, Any] | None = None,
        progress: Any = None,
        overwrite: bool = False,
    ) -> None:
        self.url = os.fspath(url)
        self.overwrite = overwrite
        self.config = config or WriteConfig()
        self.storage_options = storage_options
        self._codec = parse_codec(self.config.codec)
        self._progress = progress  # a tqdm-like object with .update(nbytes), or None
        self._target: Store | None = None
        self._stage: Store | None = None
        self._metas: dict[str, ArrayLayout] = {}
        self._docs: dict[str, dict[str, Any]] = {}

    # -- lifecycle ----------------------------------------------------------------------------
    def begin(self) -> TensorWriter:
        if self._stage is not None:
            return self
        target = open_store(self.url, self.storage_options)
        # under the lock: another writer's publication (not atomic on object stores) is
        # never seen half done; checked again before the commit
        with target.write_lock(self.config.lock_timeout,
                               stale_after=self.config.lock_stale_after):
            check_replaceable(target, "tensors", overwrite=self.overwrite)
        self._target, self._stage = target, make_staging(target)
        return self

    def __enter__(self) -> TensorWriter:
        return self.begin()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if et is None:
            self.commit()
        else:
            self.abort()

    def abort(self) -> None:
        if self._stage is not None:
            discard(self._stage)
        self._stage = None

    def commit(self) -> dict[str, ArrayLayout]:
        if self._stage is None or self._target is None:
            raise BigstoreError("TensorWriter.commit() outside an open write (call begin())")
        stage, self._stage = self._stage, None
        target = self._target
        try:
            write_root(stage, "tensors", {"tensors": len(self._metas)}, self._docs)
            with target.write_lock(self.config.lock_timeout,
                                   stale_after=self.config.lock_stale_after) as held:
                # checked again under the lock: another writer may have committed meanwhile
                check_replaceable(target, "tensors", overwrite=self.overwrite)
                held.check()
                publish(stage, target, durable=self.config.durable)
        except BaseException:
            discard(stage)
            raise
        return dict(self._metas)

    @property
    def written(self) -> dict[str, ArrayLayout]:
        """The layouts of the tensors written so far."""
        return dict(self._metas)

    # -- writing ------------------------------------------------------------------------------
    def write(self, name: str, tensor: Any) -> ArrayLayout:
        """Store one tensor (numpy array or torch tensor, any supported dtype) under ``name``."""
        if self._stage is None:
            raise BigstoreError("TensorWriter.write() outside an open write (use `with`)")
        check_name(name)
        if name in self._metas:
            raise InvalidKeyError(f"tensor {name!r} written twice")
        arr, spec = to_storage_array(name, tensor)
        shape = tuple(int(d) for d in arr.shape)
        rows = choose_chunk_rows(shape, spec.itemsize, self.config.chunk_bytes)
        meta = ArrayLayout(name, shape, spec, rows, self._codec)
        self._write_chunks(self._stage, meta, arr)
        doc = meta.to_json()
        self._stage.put(meta.meta_key, _json_bytes(doc), writeback=self.config.durable)
        self._metas[name] = meta
        self._docs[name] = doc
        return meta

    def _write_chunks(self, stage: Store, meta: ArrayLayout, arr: np.ndarray[Any, Any]) -> None:
        flat = arr.reshape(-1).view(np.uint8) if arr.size else np.empty(0, np.uint8)

        def one(i: int) -> int:
            valid = meta.chunk_rows_of(i) * meta.row_bytes
            body = memoryview(flat[i * meta.chunk_nbytes : i * meta.chunk_nbytes + valid])
            if valid < meta.chunk_nbytes:  # Zarr stores edge chunks padded to the full shape
                padded = np.zeros(meta.chunk_nbytes, np.uint8)
                padded[:valid] = flat[i * meta.chunk_nbytes :]
                body = memoryview(padded)
            stage.put(meta.chunk_key(i), self._codec.encode(body),
                      writeback=self.config.durable)
            return valid

        ex = get_executor()
        for nbytes in ex.map(one, range(meta.n_chunks), in_flight=ex.threads):
            if self._progress is not None:
                self._progress.update(nbytes)


def _json_bytes(doc: dict[str, Any]) -> bytes:
    import json

    return json.dumps(doc, indent=1).encode()


def save(
    tensors: Mapping[str, Any] | Iterable[tuple[str, Any]],
    url: str | os.PathLike[str],
    *,
    codec: str | None = WriteConfig.codec,
    chunk_bytes: int | str = WriteConfig.chunk_bytes,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    durable: bool = WriteConfig.durable,
) -> dict[str, ArrayLayout]:
    """Write ``tensors`` (a mapping or an iterable of ``(name, tensor)`` pairs) to ``url``.

    Tensors are written one at a time, so an iterable that produces them lazily is never held
    in memory all at once. The store appears at ``url`` atomically when all are written; on any
    error the previous store at ``url`` (if any) is left as it was. Replacing a bigstore dataset
    with tensors needs ``overwrite=True``. ``durable``: fsync before the commit (see
    :class:`~bigstore.config.WriteConfig`).
    """
    config = WriteConfig(chunk_bytes=parse_bytes(chunk_bytes), codec=codec, durable=durable)
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    bar = progress_bar(progress, f"save {os.fspath(url)}")
    try:
        with TensorWriter(url, config=config, storage_options=storage_options, progress=bar,
                          overwrite=overwrite) as w:
            for name, value in items:
                w.write(name, value)
        return w.written
    finally:
        if bar is not None:
            bar.close()
