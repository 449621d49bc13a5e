"""A dataset's columns (from ``schema=`` and the first batch) and every batch checked against
them: a value is stored exactly or the write fails naming the column, batch and value.

The first batch fixes each column's kind, shape and dtype unless ``schema`` declares the dtype
(then the first batch is checked like any other). Later batches, and appends, convert to the
stored dtype only when every value survives (:mod:`bigstore.data._exact`); timestamps convert
between units only when exact; category dictionaries grow (codes already written stay valid).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config import DATASET_MAX_CATEGORIES
from ..errors import DTypeError, ShapeError
from ..format.dtypes import DTypeSpec, dtype_spec
from ._exact import convert_exact
from ._kinds import Encoded, LogicalType, encode, encode_strings
from ._schema import ColumnSpec

__all__ = ["Conformer", "Target", "VarBatch", "parse_schema"]

Arr = np.ndarray[Any, Any]
_U8 = dtype_spec("uint8")
_I32 = dtype_spec("int32")
_I64 = dtype_spec("int64")


@dataclass(frozen=True)
class VarBatch:
    """Variable-length samples as stored: ``values`` (1-D) back to back; ``lengths[i]`` each."""

    kind: str  # "list" | "bytes" | "str"
    values: Arr
    lengths: Arr

    def __len__(self) -> int:
        return int(self.lengths.shape[0])


Stored = Arr | VarBatch


# -- schema= ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What ``schema=`` declares for one column: the element dtype and meaning, and the kind
    ("str", "bytes", "list", "fixed") where the declaration says (Arrow types do)."""

    dtype: DTypeSpec
    kind: str | None = None
    logical: LogicalType | None = None
    shape: tuple[int, ...] | None = None

    def describe(self) -> str:
        if self.logical is not None:
            return self.logical.describe()
        return self.kind if self.kind in ("str", "bytes") else self.dtype.name


def parse_schema(schema: Any) -> dict[str, Target]:
    """``schema=`` of ``write_dataset``: a mapping column -> dtype (numpy dtype or name,
    torch dtype, "bfloat16", "str", "bytes", "datetime64[ns]", a pyarrow type) or a
    ``pyarrow.Schema`` (struct fields become "a.b" columns, as in the data)."""
    if schema is None:
        return {}
    if type(schema).__module__.startswith("pyarrow"):
        import pyarrow as pa

        if isinstance(schema, pa.Schema):
            out: dict[str, Target] = {}
            for f in schema:
                _arrow_fields(f.name, f.type, out)
            return out
    if not isinstance(schema, Mapping):
        raise DTypeError(
            f"schema must be a mapping of column -> dtype or a pyarrow.Schema, got "
            f"{type(schema).__name__}"
        )
    return {str(k): target_of(str(k), v) for k, v in schema.items()}


def _arrow_fields(name: str, t: Any, out: dict[str, Target]) -> None:
    import pyarrow as pa

    if pa.types.is_struct(t):
        for f in t:
            _arrow_fields(f"{name}.{f.name}", f.type, out)
    else:
        out[name] = _arrow_target(name, t)


def target_of(name: str, value: Any) -> Target:
    """One schema entry."""
    if type(value).__module__.startswith("pyarrow"):
        return _arrow_target(name, value)
    if value is str or (isinstance(value, str) and value.lower() in ("str", "string", "utf8")):
        return Target(_U8, kind="str")
    if value is bytes or (isinstance(value, str) and value.lower() in ("bytes", "binary")):
        return Target(_U8, kind="bytes")
    if isinstance(value, str) and value.lower() == "category":
        return Target(_I32, kind="fixed", logical=LogicalType("category", value_dtype="str"))
    try:
        return Target(dtype_spec(value))
    except DTypeError as e:
        error = e
    try:
        npd = np.dtype(value)
    except TypeError:
        raise DTypeError(f"schema for column {name!r}: {error}") from None
    if npd.kind in "Mm":
        return Target(_I64, logical=encode(name, np.empty(1, npd)).logical)
    if npd.kind in "US":
        return Target(_U8, kind="str" if npd.kind == "U" else "bytes")
    raise DTypeError(f"schema for column {name!r}: {error}")


def _arrow_target(name: str, t: Any) -> Target:
    import pyarrow as pa

    if not isinstance(t, pa.DataType):
        raise DTypeError(f"schema for column {name!r}: {t!r} is not a pyarrow type")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return Target(_U8, kind="str")
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return Target(_U8, kind="bytes")
    if pa.types.is_dictionary(t):
        vt = t.value_type
        if pa.types.is_string(vt) or pa.types.is_large_string(vt):
            return Target(_I32, "fixed", LogicalType("category", value_dtype="str"), ())
        if pa.types.is_integer(vt):
            vdt = np.dtype(vt.to_pandas_dtype()).name
            return Target(_I32, "fixed", LogicalType("category", value_dtype=vdt), ())
        return _arrow_target(name, vt)  # stored decoded, like the data
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        inner = _arrow_target(name, t.value_type)
        if inner.kind not in (None, "fixed") or _category(inner.logical):
            raise DTypeError(f"schema for column {name!r}: lists of {t.value_type}")
        if pa.types.is_fixed_size_list(t):
            shape = (t.list_size, *(inner.shape or ()))
            return Target(inner.dtype, "fixed", inner.logical, shape)
        return Target(inner.dtype, "list", inner.logical)
    if pa.types.is_timestamp(t) or pa.types.is_duration(t) or pa.types.is_date(t):
        e = encode(name, pa.array([0], t))
        return Target(_I64, logical=e.logical)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return Target(dtype_spec(np.dtype(t.to_pandas_dtype())))
    raise DTypeError(f"schema for column {name!r}: Arrow type {t} is not stored by bigstore")


def _category(lt: LogicalType | None) -> bool:
    return lt is not None and lt.type == "category"


# -- the columns, and each batch against them ------------------------------------------------
class Conformer:
    """The dataset's columns as they stand, and the check of each batch against them.

    Columns change only by growing a category dictionary; :attr:`columns` is what to commit.
    """

    def __init__(self, columns: Iterable[ColumnSpec]) -> None:
        self.specs = {c.name: c for c in columns}

    @property
    def columns(self) -> tuple[ColumnSpec, ...]:
        return tuple(self.specs.values())

    @classmethod
    def infer(cls, first: Mapping[str, Encoded], schema: Mapping[str, Target]) -> Conformer:
        """The columns a first batch implies, with the dtypes ``schema`` declares."""
        unknown = sorted(set(schema) - set(first))
        if unknown:
            raise ShapeError(
                f"schema names column(s) {unknown} that the source does not have "
                f"(it has {sorted(first)})"
            )
        return cls(_infer(name, enc, schema.get(name)) for name, enc in first.items())

    @classmethod
    def resume(cls, columns: Iterable[ColumnSpec], schema: Mapping[str, Target]) -> Conformer:
        """For an append: the stored columns win; a schema must agree with them."""
        self = cls(columns)
        for name, t in schema.items():
            spec = self.specs.get(name)
            if spec is None:
                raise ShapeError(
                    f"schema names column {name!r}, which the dataset does not have "
                    f"(it has {sorted(self.specs)})"
                )
            stored = spec.describe()[1]
            if t.dtype.name != spec.dtype.name or not _same_logical(t.logical, spec.logical) or (
                t.kind is not None and t.kind != spec.kind
            ):
                raise DTypeError(
                    f"schema says column {name!r} is {t.describe()}, but the dataset stores "
                    f"{stored}: an append keeps the stored dtype (values must fit it exactly)"
                )
        return self

    def stored_batches(
        self, batches: Iterable[Mapping[str, Encoded]]
    ) -> Iterator[dict[str, Stored]]:
        for b, batch in enumerate(batches):
            yield self.conform(batch, b)

    def conform(self, batch: Mapping[str, Encoded], b: int) -> dict[str, Stored]:
        """Every column of batch ``b`` as stored, or the error naming what does not fit."""
        if sorted(batch) != sorted(self.specs):
            raise ShapeError(
                f"batch {b} has columns {sorted(batch)}; the dataset has {sorted(self.specs)}"
            )
        out: dict[str, Stored] = {}
        for name, spec in self.specs.items():
            stored, new_spec = _conform(spec, batch[name], b)
            out[name] = stored
            if new_spec is not spec:
                self.specs[name] = new_spec
        return out


def _same_logical(a: LogicalType | None, b: LogicalType | None) -> bool:
    return (a is None and b is None) or (a is not None and a.same_meaning(b))


def _infer(name: str, enc: Encoded, target: Target | None) -> ColumnSpec:
    if target is None:
        if enc.dtype is None:
            raise DTypeError(
                f"column {name!r}: every sample of the first batch is empty, so nothing says "
                f"what its elements are; declare it: write_dataset(..., "
                f"schema={{{name!r}: 'int64'}})"
            )
        if _category(enc.logical):
            assert enc.logical is not None
            empty = replace(enc.logical, categories=())  # filled by conforming the batch
            return ColumnSpec(name, "fixed", _I32, (), empty)
        return ColumnSpec(name, enc.kind, enc.dtype, enc.shape, enc.logical)  # type: ignore[arg-type]
    shape: tuple[int, ...] = ()
    if _category(target.logical):
        kind = "fixed"
    elif target.kind in ("str", "bytes"):
        kind = target.kind
    else:
        src = enc.kind
        if _category(enc.logical):
            assert enc.logical is not None
            src = "str" if enc.logical.value_dtype == "str" else "fixed"
        if src in ("str", "bytes"):
            raise DTypeError(
                f"column {name!r}: the schema declares {target.describe()}, but the column "
                f"holds {src} values"
            )
        kind = target.kind or src
        shape = (target.shape if target.shape is not None else enc.shape) if kind == "fixed" else ()
    return ColumnSpec(name, kind, target.dtype, shape, target.logical)  # type: ignore[arg-type]


def _conform(spec: ColumnSpec, enc: Encoded, b: int) -> tuple[Stored, ColumnSpec]:
    where = f"column {spec.name!r}, batch {b}"
    if len(enc) == 0:  # no samples: nothing to check, whatever the batch says it holds
        storage = spec.dtype.storage
        if spec.variable:
            return VarBatch(spec.kind, np.empty(0, storage), np.empty(0, np.int64)), spec
        return np.empty((0, *spec.shape), storage), spec
    if _category(spec.logical):
        return _to_categories(spec, enc, where)
    if _category(enc.logical):
        enc = _decoded_categories(enc)
    if spec.variable:
        if not enc.variable and spec.kind == "list" and enc.values.ndim == 2:
            n, k = enc.values.shape
            enc = Encoded("list", enc.values.reshape(-1), np.full(n, k, np.int64), enc.dtype,
                          enc.logical)
        if enc.kind != spec.kind:
            got = enc.kind if enc.variable else f"fixed shape {enc.shape}"
            raise ShapeError(f"{where}: the dataset stores {spec.kind} values here, got {got}")
    elif enc.kind in ("str", "bytes"):
        stored = spec.describe()[1]
        raise DTypeError(f"{where}: values of {enc.kind}, but the column stores {stored}")
    elif enc.variable:
        raise ShapeError(
            f"{where}: the column is fixed-shape {spec.shape}, but this batch is ragged "
            f"({enc.kind} values of varying length; write such a column with variable=[...])"
        )
    elif enc.shape != spec.shape:
        raise ShapeError(f"{where}: samples of shape {enc.shape}, expected {spec.shape}")
    values = _values_as(spec, enc, where)
    if spec.variable:
        assert enc.lengths is not None
        return VarBatch(spec.kind, values, enc.lengths.astype(np.int64, copy=False)), spec
    return values, spec


def _values_as(spec: ColumnSpec, enc: Encoded, where: str) -> Arr:
    """``enc``'s elements in the column's stored dtype, each exactly, or a DTypeError."""
    if spec.kind in ("str", "bytes"):
        return enc.values.astype(np.uint8, copy=False)
    want, got = spec.logical, enc.logical
    if not _same_logical(want, got) and (
        want is None or got is None or want.type != got.type or want.tz != got.tz
    ):
        raise DTypeError(
            f"{where}: values of {enc.describe()}, but the column stores {spec.describe()[1]}"
        )
    if enc.dtype is None:  # empty Python lists only: nothing to convert
        return enc.values.astype(spec.dtype.storage)
    if want is not None and got is not None and want.unit != got.unit:
        return _convert_unit(enc, got, want, spec, where)
    out, bad = convert_exact(enc.values, enc.dtype, spec.dtype)
    if bad is not None:
        raise _misfit(where, enc, bad, spec.describe()[1])
    return out.astype(spec.dtype.storage, copy=False)


def _convert_unit(
    enc: Encoded, got: LogicalType, want: LogicalType, spec: ColumnSpec, where: str
) -> Arr:
    src = enc.values.view(got.numpy_dtype)
    with np.errstate(all="ignore"):
        dst = src.astype(want.numpy_dtype)
        back = dst.astype(got.numpy_dtype)
    bad = back.view(np.int64) != enc.values
    if bad.any():
        raise _misfit(where, enc, int(np.flatnonzero(bad.reshape(-1))[0]), spec.describe()[1])
    return dst.view(np.int64).astype(spec.dtype.storage, copy=False)


def _misfit(where: str, enc: Encoded, flat: int, stored: str) -> DTypeError:
    return DTypeError(
        f"{where}, sample {enc.sample_of(flat)}: value {_show(enc, flat)} does not fit "
        f"{stored} exactly, the column's stored type; nothing of this write was committed. "
        "Declare the type you need up front: write_dataset(..., schema={column: dtype})"
    )


def _show(enc: Encoded, flat: int) -> str:
    v = enc.values.reshape(-1)[flat : flat + 1]
    if enc.logical is not None and enc.logical.type != "category":
        return str(v.view(enc.logical.numpy_dtype)[0])
    if enc.dtype is not None and enc.dtype.raw_bits:
        from ..weights._arrays import from_storage_array

        return f"{from_storage_array(v.copy(), enc.dtype).item()!r} ({enc.dtype.name})"
    return f"{v[0].item()!r} ({v.dtype.name})"


# -- categories -------------------------------------------------------------------------------
def _plain_values(enc: Encoded) -> list[Any]:
    """A batch's values as Python objects (to look up in a dictionary)."""
    if _category(enc.logical):
        assert enc.logical is not None
        return enc.logical.category_values[enc.values].tolist()
    if enc.kind in ("str", "bytes"):
        assert enc.lengths is not None
        ends = np.cumsum(enc.lengths).tolist()
        raw = enc.values.tobytes()
        starts = [0, *ends[:-1]]
        items = [raw[a:b] for a, b in zip(starts, ends)]
        return [x.decode() for x in items] if enc.kind == "str" else items
    return enc.values.tolist()


def _decoded_categories(enc: Encoded) -> Encoded:
    """A category batch as the plain values it stands for (into a non-category column)."""
    assert enc.logical is not None
    values = enc.logical.category_values[enc.values]
    if enc.logical.value_dtype == "str":
        return encode_strings("", values.tolist())
    return Encoded("fixed", values, None, dtype_spec(values.dtype))


def _to_categories(spec: ColumnSpec, enc: Encoded, where: str) -> tuple[Stored, ColumnSpec]:
    lt = spec.logical
    assert lt is not None
    is_str = lt.value_dtype == "str"
    kind_ok = enc.kind == "str" if is_str else (enc.kind == "fixed" and enc.shape == ())
    if _category(enc.logical):
        assert enc.logical is not None
        kind_ok = enc.logical.value_dtype == "str" if is_str else enc.logical.value_dtype != "str"
    if not kind_ok or (not is_str and not _category(enc.logical) and enc.dtype is not None
                       and enc.dtype.storage.kind not in "iub"):
        raise DTypeError(
            f"{where}: values of {enc.describe()}, but the column stores {spec.describe()[1]}"
        )
    if _category(enc.logical):  # map this batch's own dictionary, not every sample
        assert enc.logical is not None
        batch_cats, codes = list(enc.logical.categories), enc.values.astype(np.int64)
    else:
        batch_cats, codes = _plain_values(enc), None
    if not is_str:
        info = np.iinfo(np.dtype(lt.value_dtype))
        for i, v in enumerate(batch_cats):
            if not info.min <= v <= info.max:
                sample = i if codes is None else int(np.flatnonzero(codes == i)[0])
                raise DTypeError(
                    f"{where}, sample {sample}: value {v!r} does not fit the categories' "
                    f"{lt.value_dtype} exactly"
                )
    index = {v: i for i, v in enumerate(lt.categories)}
    added: list[Any] = []
    mapping = np.empty(len(batch_cats), np.int64)
    for j, v in enumerate(batch_cats):
        k = index.get(v)
        if k is None:
            k = index[v] = len(index)
            added.append(v)
        mapping[j] = k
    if len(index) > DATASET_MAX_CATEGORIES:
        raise DTypeError(
            f"{where}: more than {DATASET_MAX_CATEGORIES} distinct categories; store the "
            "column as plain values (e.g. pandas .astype(str), or pyarrow "
            "dictionary_decode) instead"
        )
    stored = (mapping if codes is None else mapping[codes]).astype(np.int32)
    if added:
        spec = replace(spec, logical=replace(lt, categories=(*lt.categories, *added)))
    return stored, spec
