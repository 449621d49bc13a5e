"""Streaming, crash-safe tensor writes: tensor by tensor into a staging store, then publish.

With ``WriteConfig.quantize`` the tensors its policy selects are stored group-wise quantized
(a Zarr group of parts per tensor, see ``bigstore/format/quantized.py``); the rest as they are.
Those a :class:`~bigstore.weights.calibrate.Calibration` covers are quantized with GPTQ.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

import numpy as np

from ..config import QuantizeConfig, WriteConfig, parse_bytes
from ..errors import BigstoreError, InvalidKeyError, QuantizeError
from ..format import (
    QUANTIZED_VERSION,
    ArrayLayout,
    QuantizedLayout,
    check_name,
    choose_chunk_rows,
    parse_codec,
    write_root,
)
from ..io import get_executor
from ..progress import progress_bar
from ..store import Store, open_store
from ..store.publish import check_replaceable, discard, make_staging, publish
from ._arrays import to_storage_array
from .calibrate import Calibration
from .gptq import gptq_tensor
from .quantize import QuantizedTensor, quantize_tensor, should_quantize

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
        calibration: Calibration | None = None,
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
        self._files: list[str] = []
        if calibration is not None and self.config.quantize is None:
            raise BigstoreError("a calibration is for quantized writes: set quantize too")
        self._calibration = calibration
        self._calibrated = False  # some tensor used the calibration (else it names no tensor)

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
            cal = self._calibration
            if cal is not None and len(cal) and not self._calibrated:
                raise QuantizeError(
                    "no quantized tensor has a Hessian in the calibration (names such as "
                    f"{sorted(cal.hessians)[:2]}): was it made on this model?"
                )
            # quantized tensors are groups: a reader that predates them must refuse the store
            quantized = any(isinstance(m, QuantizedLayout) for m in self._metas.values())
            version = QUANTIZED_VERSION if quantized else 1
            write_root(stage, "tensors", {"tensors": len(self._metas)}, self._docs,
                       version=version)
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

    def put_file(self, name: str, data: bytes) -> None:
        """Keep a companion file (a model's ``config.json``, its tokenizer files) at the
        store's root: not an array, ignored by Zarr readers, committed with the tensors."""
        if self._stage is None:
            raise BigstoreError("TensorWriter.put_file() outside an open write (use `with`)")
        check_name(name, "file")
        if name in self._metas:
            raise InvalidKeyError(f"{name!r} is a tensor of this store")
        self._stage.put(name, data, writeback=self.config.durable)
        self._files.append(name)

    @property
    def written(self) -> dict[str, ArrayLayout]:
        """The layouts of the tensors written so far."""
        return dict(self._metas)

    # -- writing ------------------------------------------------------------------------------
    def write(self, name: str, tensor: Any) -> ArrayLayout:
        """Store one tensor (numpy array or torch tensor, any supported dtype) under ``name``;
        quantized when ``config.quantize`` is set and its policy selects the tensor."""
        stage = self._open_for(name)
        arr, spec = to_storage_array(name, tensor)
        shape = tuple(int(d) for d in arr.shape)
        q = self.config.quantize
        if q is not None and should_quantize(name, shape, spec.name, q):
            cal = self._calibration
            if cal is not None and name in cal:
                self._calibrated = True
                return self.write_quantized(name, gptq_tensor(
                    name, arr, cal.hessians[name], input_axis=cal.input_axis[name],
                    scheme=q.scheme, group_size=q.group_size, scale_dtype=q.scale_dtype,
                    damp=cal.damp, dtype=spec.name))
            return self.write_quantized(name, quantize_tensor(
                name, arr, scheme=q.scheme, group_size=q.group_size, scale_dtype=q.scale_dtype,
                dtype=spec.name))
        rows = choose_chunk_rows(shape, spec.itemsize, self.config.chunk_bytes)
        meta = ArrayLayout(name, shape, spec, rows, self._codec.bind(spec.itemsize))
        self._write_chunks(stage, meta, arr)
        doc = meta.to_json()
        stage.put(meta.meta_key, _json_bytes(doc), writeback=self.config.durable)
        self._metas[name] = meta
        self._docs[name] = doc
        return meta

    def write_quantized(self, name: str, q: QuantizedTensor) -> QuantizedLayout:
        """Store an already quantized tensor's parts under ``name`` (a group of arrays)."""
        stage = self._open_for(name)
        q.check(name)
        meta = QuantizedLayout.build(name, q.spec, self.config.chunk_bytes, self._codec)
        arrays = {"packed": q.packed, "scales": q.scales, "zeros": q.zeros}
        for part, lay in meta.parts:
            arr = arrays[part]
            assert arr is not None  # q.check() above
            self._write_chunks(stage, lay, arr.view(lay.dtype.storage))
        docs = meta.docs()
        for path, doc in docs.items():
            stage.put(f"{path}/zarr.json", _json_bytes(doc), writeback=self.config.durable)
        self._metas[name] = meta
        self._docs.update(docs)
        return meta

    def _open_for(self, name: str) -> Store:
        if self._stage is None:
            raise BigstoreError("TensorWriter.write() outside an open write (use `with`)")
        check_name(name)
        if name in self._metas or name in self._files:
            raise InvalidKeyError(f"tensor {name!r} written twice")
        return self._stage

    def _write_chunks(self, stage: Store, meta: ArrayLayout, arr: np.ndarray[Any, Any]) -> None:
        flat = arr.reshape(-1).view(np.uint8) if arr.size else np.empty(0, np.uint8)

        def one(i: int) -> int:
            valid = meta.chunk_rows_of(i) * meta.row_bytes
            body = memoryview(flat[i * meta.chunk_nbytes : i * meta.chunk_nbytes + valid])
            if valid < meta.chunk_nbytes:  # Zarr stores edge chunks padded to the full shape
                padded = np.zeros(meta.chunk_nbytes, np.uint8)
                padded[:valid] = flat[i * meta.chunk_nbytes :]
                body = memoryview(padded)
            stage.put(meta.chunk_key(i), meta.codec.encode(body, where=meta.where(i)),
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
    files: Mapping[str, bytes] | None = None,
    quantize: QuantizeConfig | str | None = WriteConfig.quantize,
    calibration: Calibration | None = None,
) -> dict[str, ArrayLayout]:
    """Write ``tensors`` (a mapping or an iterable of ``(name, tensor)`` pairs) to ``url``.

    Tensors are written one at a time, so an iterable that produces them lazily is never held
    in memory all at once. The store appears at ``url`` atomically when all are written; on any
    error the previous store at ``url`` (if any) is left as it was. Replacing a bigstore dataset
    with tensors needs ``overwrite=True``. ``durable``: fsync before the commit (see
    :class:`~bigstore.config.WriteConfig`). ``codec="lossless"`` compresses bit-exactly;
    ``quantize`` ("int8", "int4" or a :class:`~bigstore.config.QuantizeConfig`) stores the
    tensors its policy selects group-wise quantized, with GPTQ for those ``calibration``
    (:func:`~bigstore.weights.calibrate.calibrate`) covers. ``files``: companion files kept at
    the store's root (see :meth:`TensorWriter.put_file`).
    """
    if isinstance(quantize, str):
        quantize = QuantizeConfig(scheme=quantize)
    parse_codec(codec)  # a bad codec fails before anything is written
    config = WriteConfig(chunk_bytes=parse_bytes(chunk_bytes), codec=codec, durable=durable,
                         quantize=quantize)
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    bar = progress_bar(progress, f"save {os.fspath(url)}")
    try:
        with TensorWriter(url, config=config, storage_options=storage_options, progress=bar,
                          overwrite=overwrite, calibration=calibration) as w:
            for name, value in items:
                w.write(name, value)
            for fname, data in (files or {}).items():
                w.put_file(fname, data)
        return w.written
    finally:
        if bar is not None:
            bar.close()
