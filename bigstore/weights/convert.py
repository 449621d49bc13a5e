"""Checkpoint conversion, streaming tensor by tensor.

In: ``.safetensors``, a sharded Hugging Face directory (``model.safetensors.index.json``) or any
directory of ``.safetensors`` files, a torch ``.pt``/``.bin``/``.pth`` state dict (loaded with
``weights_only=True``: arbitrary pickled objects are refused, never executed), ``.npz``, or
another bigstore store. Out: a bigstore store, or a ``.safetensors``, ``.pt``/``.pth``/``.bin``
or ``.npz`` file (by the destination's suffix; other checkpoint suffixes are refused).
"""

from __future__ import annotations

import json
import math
import os
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from ..config import QuantizeConfig, WriteConfig, parse_bytes
from ..errors import BigstoreError, DTypeError, StoreNotFoundError, UnsupportedSourceError
from ..format import ArrayLayout, QuantizedLayout
from ..format.dtypes import SAFETENSORS_DTYPES, dtype_spec
from ..progress import progress_bar
from ..store import is_local_url, local_path
from ._arrays import from_storage_array, to_storage_array
from .calibrate import Calibration
from .reader import TensorStore
from .writer import save

__all__ = ["convert", "export_safetensors", "iter_source", "quantize", "write_file"]

_ST_DTYPES = SAFETENSORS_DTYPES


def _source_kind(src: str) -> str:
    if not is_local_url(src):
        return "store"
    p = Path(local_path(src))
    if p.is_dir():
        if (p / "zarr.json").exists():
            return "store"
        if (p / "model.safetensors.index.json").exists() or any(p.glob("*.safetensors")):
            return "hf-dir"
        raise UnsupportedSourceError(
            f"{src}: a directory with neither zarr.json, model.safetensors.index.json "
            "nor .safetensors files"
        )
    if not p.exists():
        raise StoreNotFoundError(f"{src} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return "safetensors"
    if suffix in (".pt", ".pth", ".bin"):
        return "torch"
    if suffix == ".npz":
        return "npz"
    raise UnsupportedSourceError(
        f"{src}: unknown checkpoint type {suffix!r} (.safetensors, .pt/.pth/.bin, .npz, a "
        "Hugging Face directory, or a bigstore store)"
    )


def iter_source(
    src: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Iterator[tuple[str, Any]]:
    """(name, tensor) pairs of a checkpoint, one tensor in memory at a time."""
    s = os.fspath(src)
    kind = _source_kind(s)
    if kind == "safetensors":
        yield from _iter_safetensors(Path(local_path(s)))
    elif kind == "hf-dir":
        d = Path(local_path(s))
        index = d / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(f.name for f in d.glob("*.safetensors"))
        for f in files:
            fp = (d / f).resolve()
            if d.resolve() not in fp.parents:
                raise UnsupportedSourceError(f"{index}: shard {f!r} lies outside {d}")
            yield from _iter_safetensors(fp)
    elif kind == "torch":
        yield from _iter_torch(Path(local_path(s)))
    elif kind == "npz":
        with np.load(local_path(s), allow_pickle=False) as z:
            for name in z.files:
                yield name, z[name]
    else:
        with TensorStore.open(s, storage_options=storage_options) as ts:
            for name in ts:
                yield name, ts[name].torch()


def _iter_safetensors(path: Path) -> Iterator[tuple[str, Any]]:
    from safetensors import safe_open

    try:
        f = safe_open(str(path), framework="pt")
    except Exception as e:  # safetensors raises its own SafetensorError for bad headers
        raise UnsupportedSourceError(f"{path}: not a readable safetensors file ({e})") from e
    with f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            yield name, f.get_tensor(name)


def _iter_torch(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            # legacy (pre-zip) torch files cannot be mapped; still weights_only
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsupportedSourceError(
            f"{path}: holds pickled objects other than tensors; bigstore loads torch files "
            f"with weights_only=True and never unpickles arbitrary objects ({e})"
        ) from None
    except RuntimeError as e:
        raise UnsupportedSourceError(f"{path}: not a readable torch file ({e})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise UnsupportedSourceError(f"{path}: expected a state dict, found {type(obj).__name__}")
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise UnsupportedSourceError(
                f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor"
            )
        yield str(name), value


def export_safetensors(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    storage_options: Mapping[str, Any] | None = None,
    progress: Any = None,
) -> None:
    """Write the store at ``src`` as one ``.safetensors`` file, streaming tensor by tensor.

    safetensors' own writer needs every tensor in memory at once; this writes its documented
    layout (8-byte header length, JSON header, data) one tensor at a time instead. The file
    appears under its final name only when complete.
    """
    dst_path = Path(local_path(os.fspath(dst)))
    with TensorStore.open(src, storage_options=storage_options) as ts:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        metas: list[ArrayLayout] = []
        for name in ts:
            m = ts.meta(name)
            st = _ST_DTYPES.get(m.dtype.name)
            if st is None:
                raise UnsupportedSourceError(
                    f"tensor {name!r}: safetensors has no dtype for {m.dtype.name}"
                )
            header[name] = {"dtype": st, "shape": list(m.shape),
                            "data_offsets": [offset, offset + m.nbytes]}
            offset += m.nbytes
            metas.append(m)
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # safetensors aligns the data section to 8 bytes
        tmp = dst_path.with_name(f".{dst_path.name}.tmp-{os.getpid()}")
        dst_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(len(blob).to_bytes(8, "little"))
                f.write(blob)
                for m in metas:
                    _copy_tensor(ts, m, f, progress)
            os.replace(tmp, dst_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _copy_tensor(ts: TensorStore, m: ArrayLayout, f: Any, progress: Any) -> None:
    if m.nbytes == 0:
        return
    # bounded memory: copy at most ~256 MiB of rows at a time
    step = max(1, (256 << 20) // max(1, m.row_bytes)) if m.shape else 1
    for start in range(0, m.rows, step):
        stop = min(m.rows, start + step)
        buf = np.empty((stop - start) * m.row_bytes, np.uint8)
        ts.read_into([(m.name, start, stop, buf)])
        f.write(memoryview(buf))
        if progress is not None:
            progress.update(buf.nbytes)


# destination suffix -> file format written instead of a store
_FILE_FORMATS = {
    ".safetensors": "safetensors", ".pt": "torch", ".pth": "torch", ".bin": "torch",
    ".npz": "npz",
}
# checkpoint files bigstore does not write: refused rather than made a store directory
_UNWRITABLE = (".ckpt", ".onnx", ".gguf", ".h5", ".hdf5", ".keras", ".pkl", ".pickle",
               ".msgpack", ".tflite", ".npy", ".json", ".zip", ".tar", ".gz")


def _destination_kind(dst: str) -> str:
    """"store", or the file format ``dst``'s suffix names (refused where not writable)."""
    suffix = PurePosixPath(dst.rstrip("/")).suffix.lower()
    fmt = _FILE_FORMATS.get(suffix)
    if fmt is not None:
        if not is_local_url(dst):
            raise UnsupportedSourceError(
                f"{dst}: {suffix} files are written to local paths only (write a store to "
                "object storage instead)"
            )
        return fmt
    if suffix in _UNWRITABLE:
        raise UnsupportedSourceError(
            f"{dst}: bigstore does not write {suffix} files; destinations are a store (a "
            "directory or URL, e.g. out.bigstore) or a .safetensors, .pt/.pth/.bin or .npz file"
        )
    return "store"


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    codec: str | None = WriteConfig.codec,
    chunk_bytes: int | str = WriteConfig.chunk_bytes,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    quantize: QuantizeConfig | str | None = WriteConfig.quantize,
    overwrite: bool = False,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Convert any checkpoint bigstore reads to the format ``dst``'s suffix names: a bigstore
    store (any other path or URL), ``.safetensors``, ``.pt``/``.pth``/``.bin`` (a ``torch.save``
    of the state dict) or ``.npz``. Tensors keep their dtype and bits exactly. Returns a
    summary: tensors, bytes, destination, format.

    Streaming: a store and ``.npz`` are written tensor by tensor, and a store exports to
    ``.safetensors`` tensor by tensor. ``torch.save`` and safetensors' writer need the whole
    state dict at once, so those destinations hold every tensor in memory, except from a
    local uncompressed store, whose tensors are memory-mapped. ``.npz`` cannot hold bfloat16
    or float8 (numpy has no such dtypes): such tensors are refused, never stored as raw bits
    under another dtype. File destinations appear complete or not at all.

    To a store: ``codec="lossless"`` compresses bit-exactly; ``quantize`` ("int8", "int4" or a
    :class:`~bigstore.config.QuantizeConfig`) stores the tensors its policy selects group-wise
    quantized (the summary then counts them and their stored bytes), with GPTQ for those a
    ``calibration`` covers. A Hugging Face directory's config and tokenizer files are kept with
    the store.
    """
    s, d = os.fspath(src), os.fspath(dst)
    kind = _destination_kind(d)
    if quantize is not None and kind != "store":
        raise UnsupportedSourceError(f"{d}: quantized weights are written to bigstore stores")
    if is_local_url(s) and is_local_url(d) and (
        os.path.abspath(local_path(s)) == os.path.abspath(local_path(d))
    ):
        raise BigstoreError(f"convert: source and destination are the same path ({s})")
    if kind == "safetensors" and _source_kind(s) == "store":
        with TensorStore.open(s, storage_options=storage_options) as ts:
            total = ts.nbytes
            count = len(ts)
        bar = progress_bar(progress, f"export {d}", total)
        try:
            export_safetensors(s, d, storage_options=storage_options, progress=bar)
        finally:
            if bar is not None:
                bar.close()
        return {"src": s, "dst": d, "tensors": count, "nbytes": total, "format": "safetensors"}
    if kind != "store":
        count, total = write_file(s, d, kind, storage_options=storage_options)
        return {"src": s, "dst": d, "tensors": count, "nbytes": total, "format": kind}
    metas = save(
        iter_source(s, storage_options), d, codec=codec, chunk_bytes=parse_bytes(chunk_bytes),
        storage_options=storage_options, progress=progress, files=_companions(s),
        quantize=quantize, overwrite=overwrite, calibration=calibration,
    )
    return _summary(s, d, metas, calibration)


def _summary(s: str, d: str, metas: Mapping[str, ArrayLayout],
             calibration: Calibration | None = None) -> dict[str, Any]:
    nbytes = sum(m.nbytes for m in metas.values())
    quantized = [m for m in metas.values() if isinstance(m, QuantizedLayout)]
    stored = sum(m.stored_nbytes if isinstance(m, QuantizedLayout) else m.nbytes
                 for m in metas.values())
    return {"src": s, "dst": d, "tensors": len(metas), "nbytes": nbytes, "format": "bigstore",
            "chunks": sum(m.n_chunks for m in metas.values()),
            "largest": max((m.nbytes for m in metas.values()), default=0),
            "mean_chunk": math.ceil(nbytes / max(1, sum(m.n_chunks for m in metas.values()))),
            "quantized": len(quantized), "stored_nbytes": stored,
            "calibrated": sum(1 for m in quantized if calibration and m.name in calibration)}


def quantize(
    src: str | os.PathLike[str] | Mapping[str, Any],
    dst: str | os.PathLike[str],
    scheme: str = QuantizeConfig.scheme,
    group_size: int = QuantizeConfig.group_size,
    *,
    scale_dtype: str = QuantizeConfig.scale_dtype,
    min_dim: int = QuantizeConfig.min_dim,
    include: Sequence[str] = QuantizeConfig.include,
    exclude: Sequence[str] = QuantizeConfig.exclude,
    codec: str | None = WriteConfig.codec,
    chunk_bytes: int | str = WriteConfig.chunk_bytes,
    storage_options: Mapping[str, Any] | None = None,
    progress: bool = False,
    overwrite: bool = False,
    calibration: Calibration | None = None,
) -> dict[str, Any]:
    """Write ``src`` (a store, any checkpoint :func:`convert` reads, or a state dict) to the
    store ``dst`` with group-wise ``scheme`` ("int8" or "int4") weights, ``group_size`` values
    per group.

    Which tensors: :class:`~bigstore.config.QuantizeConfig`'s policy (linear and attention
    weight matrices; embeddings, norms, biases and heads kept as they are), overridden by
    ``include``/``exclude`` name patterns (globs, or regexes after ``"re:"``; exclude wins).
    ``calibration`` (:func:`~bigstore.weights.calibrate.calibrate` on the same model, a few
    batches of real inputs) quantizes the weights it covers with GPTQ, which minimises each
    layer's output error on those inputs instead of each weight's: better int4 quality, the
    same format. Reading the store gives the dequantized tensors in their original dtype.
    Returns :func:`convert`'s summary ("calibrated": how many tensors used GPTQ)."""
    config = QuantizeConfig(scheme=scheme, group_size=group_size, scale_dtype=scale_dtype,
                            min_dim=min_dim, include=tuple(include), exclude=tuple(exclude))
    if isinstance(src, Mapping):
        metas = save(src, dst, codec=codec, chunk_bytes=chunk_bytes,
                     storage_options=storage_options, progress=progress, quantize=config,
                     overwrite=overwrite, calibration=calibration)
        return _summary("<state dict>", os.fspath(dst), metas, calibration)
    return convert(src, dst, codec=codec, chunk_bytes=chunk_bytes,
                   storage_options=storage_options, progress=progress, quantize=config,
                   overwrite=overwrite, calibration=calibration)


def _companions(src: str) -> dict[str, bytes]:
    """The config and tokenizer files of a Hugging Face model directory, kept with the store
    so that ``bigstore.from_pretrained`` opens the converted store as it opens the directory."""
    if not is_local_url(src) or _source_kind(src) != "hf-dir":
        return {}
    from .pretrained import HF_FILES

    d = Path(local_path(src))
    return {n: (d / n).read_bytes() for n in HF_FILES if (d / n).is_file()}


def write_file(
    src: str, dst: str, fmt: str, *, storage_options: Mapping[str, Any] | None = None
) -> tuple[int, int]:
    """Write every tensor of ``src`` to the file ``dst`` as ``fmt`` ("torch", "npz",
    "safetensors"): into a temporary sibling, renamed into place when complete. Returns
    (tensors, bytes)."""
    path = Path(local_path(dst))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if fmt == "npz":
            count, total = _write_npz(_tensors(src, storage_options), tmp)
        else:
            tensors = _state_dict(src, storage_options)
            count, total = len(tensors), sum(t.nbytes for t in tensors.values())
            if fmt == "torch":
                torch.save(tensors, tmp)
            else:
                _save_safetensors(tensors, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return count, total


def _tensors(
    src: str, storage_options: Mapping[str, Any] | None
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, torch tensor in its own dtype) pairs; a local uncompressed store is mapped."""
    seen: set[str] = set()
    if _source_kind(src) == "store":
        with TensorStore.open(src, storage_options=storage_options) as ts:
            yield from ts.load().items()  # memory-mapped where it can be: no copy in RAM
        return
    for name, value in iter_source(src, storage_options):
        if name in seen:
            raise UnsupportedSourceError(f"{src}: tensor {name!r} appears twice")
        seen.add(name)
        arr, spec = to_storage_array(name, value)
        yield name, from_storage_array(arr, spec)


def _state_dict(src: str, storage_options: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    return dict(_tensors(src, storage_options))


def _write_npz(tensors: Iterator[tuple[str, torch.Tensor]], path: Path) -> tuple[int, int]:
    """np.savez's layout (a zip of ``<name>.npy``), one tensor at a time."""
    import zipfile

    count = total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, t in tensors:
            spec = dtype_spec(t.dtype)
            if spec.raw_bits:
                raise DTypeError(
                    f"tensor {name!r} is {spec.name}, which .npz cannot hold (numpy has no "
                    f"{spec.name}); convert to .safetensors, .pt or a store instead"
                )
            arr = t.numpy()
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)
            count, total = count + 1, total + arr.nbytes
    return count, total


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, t in tensors.items():
        if dtype_spec(t.dtype).name not in _ST_DTYPES:
            raise UnsupportedSourceError(
                f"tensor {name!r}: safetensors has no dtype for {dtype_spec(t.dtype).name}"
            )
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages and t.numel():  # safetensors refuses tensors sharing memory
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    save_file(out, str(path), metadata={"format": "pt"})
