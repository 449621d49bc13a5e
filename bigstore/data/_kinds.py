"""Column kinds: what users pass in -> numbers bigstore stores (encode), and back (decode).

Encode turns one batch of one column (a numpy array, a torch tensor, an Arrow array, a pandas
Series, a list of samples) into an :class:`Encoded`: the numbers as stored plus what they mean.

- numbers and bools (numpy, torch, Arrow): stored as themselves, read back as numpy arrays.
- bfloat16 / float8 torch tensors: their raw bits (uint16 / uint8); read back as torch tensors
  of that dtype (numpy has none).
- str / bytes (lists, numpy ``<U``/``<S``, Arrow, pandas): UTF-8 / raw bytes plus lengths;
  read back as ``str`` / ``bytes``.
- lists of numbers (ragged, empty samples allowed): elements plus lengths; a numpy array per
  sample.
- datetime64, Arrow timestamp (unit, timezone), date32, date64: int64 counts of the unit since
  the epoch (UTC instants for zoned timestamps), the unit and zone in the column description;
  read back as ``datetime64[unit]``. timedelta64 / Arrow duration likewise, as
  ``timedelta64[unit]``.
- Arrow dictionary / pandas categorical with str or integer values: int32 codes plus the
  categories in the column description; read back as the values.

Other dictionaries (float, binary values) are stored decoded, as their plain values. Nulls are
refused: bigstore stores values, not missing ones. Where values come back as torch tensors
(a loader's ``device=``, the torch adapter), datetimes and durations are their int64 counts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CorruptChunkError, DTypeError, NotAStoreError, ShapeError
from ..format.dtypes import DTypeSpec, dtype_spec
from ._exact import convert_exact

if TYPE_CHECKING:
    from ._schema import ColumnSpec

__all__ = [
    "Encoded", "LogicalType", "decode_batch", "encode", "encode_arrow", "encode_strings",
    "from_pandas", "needs_decoding",
]

Arr = np.ndarray[Any, Any]
_LOGICAL = ("datetime64", "timedelta64", "category")
_U8 = dtype_spec("uint8")
_I64 = dtype_spec("int64")


@dataclass(frozen=True)
class LogicalType:
    """What a column's stored integers mean when they are not the values themselves.

    "datetime64" / "timedelta64": int64 counts of ``unit`` (numpy's unit codes: "ns", "us",
    "ms", "s", "D", ...) since the Unix epoch / in a duration; timezone-aware timestamps are
    stored as UTC instants with their zone in ``tz``. "category": int32 codes into
    ``categories`` (the dictionary: str or integer values, ``value_dtype`` "str" or an integer
    dtype name), which only ever grows, so codes already written stay valid.
    """

    type: str
    unit: str = ""
    tz: str | None = None
    categories: tuple[Any, ...] = ()
    value_dtype: str = ""

    def __post_init__(self) -> None:
        if self.type not in _LOGICAL:
            raise NotAStoreError(f"unknown logical column type {self.type!r}")

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype values come back as (datetime64/timedelta64 of the unit)."""
        code = "M8" if self.type == "datetime64" else "m8"
        return np.dtype(f"{code}[{self.unit}]")

    @cached_property
    def category_values(self) -> Arr:
        """The categories as an array to take from (an object array for strings)."""
        dt = object if self.value_dtype == "str" else np.dtype(self.value_dtype)
        return np.array(self.categories, dtype=dt)

    def describe(self) -> str:
        if self.type == "category":
            return f"category[{self.value_dtype}]"
        return f"{self.type}[{self.unit}{', ' + self.tz if self.tz else ''}]"

    def same_meaning(self, other: LogicalType | None) -> bool:
        """Same type, unit and zone (categories may differ: they are merged)."""
        if other is None or other.type != self.type:
            return False
        if self.type == "category":
            return other.value_dtype == self.value_dtype
        return (other.unit, other.tz) == (self.unit, self.tz)

    def to_json(self) -> dict[str, Any]:
        if self.type == "category":
            return {
                "type": self.type,
                "value_dtype": self.value_dtype,
                "categories": list(self.categories),
            }
        return {"type": self.type, "unit": self.unit, "tz": self.tz}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> LogicalType:
        t = str(d["type"])
        if t == "category":
            vdt = str(d["value_dtype"])
            want: type = str if vdt == "str" else int
            if vdt != "str" and np.dtype(vdt).kind not in "iu":
                raise NotAStoreError(f"category values of dtype {vdt!r}")
            cats = tuple(d["categories"])
            if not all(type(c) is want for c in cats):
                raise NotAStoreError(f"categories that are not all {vdt}")
            return cls(t, categories=cats, value_dtype=vdt)
        tz = d.get("tz")
        lt = cls(t, unit=str(d["unit"]), tz=None if tz is None else str(tz))
        lt.numpy_dtype  # noqa: B018 - raises TypeError for a unit numpy does not know
        return lt


@dataclass(frozen=True)
class Encoded:
    """One batch of one column as it will be stored: ``kind`` "fixed" (``values`` is
    (n, *shape)) or "list"/"bytes"/"str" (``values`` 1-D, all samples' elements back to back,
    ``lengths[i]`` elements each). ``dtype`` is the elements' dtype (raw bits for bfloat16),
    None where nothing says (only a batch of empty Python lists); ``logical`` what the stored
    integers mean (this batch's own categories, for a category column)."""

    kind: str
    values: Arr
    lengths: Arr | None
    dtype: DTypeSpec | None
    logical: LogicalType | None = None

    def __len__(self) -> int:
        return int(self.lengths.shape[0] if self.lengths is not None else self.values.shape[0])

    @property
    def variable(self) -> bool:
        return self.kind != "fixed"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.values.shape[1:]) if not self.variable else ()

    def describe(self) -> str:
        if self.logical is not None:
            return self.logical.describe()
        if self.kind in ("str", "bytes"):
            return self.kind
        return self.dtype.name if self.dtype is not None else "unknown (no values)"

    def sample_of(self, flat: int) -> int:
        """The sample holding element number ``flat`` of ``values``."""
        if self.lengths is None:
            per = max(1, int(np.prod(self.values.shape[1:])))
            return flat // per
        return int(np.searchsorted(np.cumsum(self.lengths), flat, side="right"))


# -- encode: anything a user has -> Encoded -----------------------------------------------------
def encode(name: str, value: Any, variable: bool = False) -> Encoded:
    """One column of one batch, from whatever the source holds."""
    if isinstance(value, Encoded):
        return value
    if isinstance(value, np.ndarray) and value.dtype != object and not variable:
        return _from_numpy(name, value)
    if _is_torch(value) and not variable:
        return _from_torch(name, value)
    arrow = _as_arrow(value)
    if arrow is not None:
        return encode_arrow(name, arrow)
    if type(value).__module__.startswith("pandas"):
        return encode(name, from_pandas(name, value), variable)
    if isinstance(value, np.ndarray | list | tuple) or _is_torch(value):
        return _from_items(name, list(value), variable)
    raise DTypeError(f"column {name!r}: cannot read values of type {type(value).__name__}")


def _is_torch(value: Any) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "dtype")


def _as_arrow(value: Any) -> Any:
    if not type(value).__module__.startswith("pyarrow"):
        return None
    import pyarrow as pa

    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    return value if isinstance(value, pa.Array) else None


def _native(arr: Arr) -> Arr:
    """``arr`` in native byte order (torch and the exactness checks want it)."""
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _from_numpy(name: str, arr: Arr) -> Encoded:
    if arr.ndim == 0:
        raise ShapeError(f"column {name!r} is a scalar; the first axis must be samples")
    kind = arr.dtype.kind
    if kind in "US":
        if arr.ndim != 1:
            raise ShapeError(
                f"column {name!r}: a {arr.dtype} array of shape {arr.shape}; string columns "
                "hold one string per sample (a 1-D array)"
            )
        return encode_strings(name, arr.tolist())
    if kind in "Mm":
        return _datetimes(arr)
    try:
        spec = dtype_spec(arr.dtype)
    except DTypeError as e:
        raise DTypeError(f"column {name!r}: {e}") from None
    return Encoded("fixed", _native(arr), None, spec)


def _datetimes(arr: Arr) -> Encoded:
    unit, count = np.datetime_data(arr.dtype)
    lt = LogicalType(
        "datetime64" if arr.dtype.kind == "M" else "timedelta64",
        unit=f"{count}{unit}" if count != 1 else unit,
    )
    return Encoded("fixed", _native(arr).view(np.int64), None, _I64, lt)


def _from_torch(name: str, t: Any) -> Encoded:
    from ..weights._arrays import to_storage_array

    if t.dim() == 0:
        raise ShapeError(f"column {name!r} is a scalar; the first axis must be samples")
    try:
        arr, spec = to_storage_array(name, t)
    except DTypeError as e:
        raise DTypeError(f"column {name!r}: {e}") from None
    return Encoded("fixed", arr, None, spec)


def encode_strings(name: str, items: list[Any]) -> Encoded:
    """str or bytes samples (all of one type) as bytes back to back."""
    if all(isinstance(x, str) for x in items):
        kind, raw = "str", [x.encode() for x in items]
    else:
        kind, raw = "bytes", [bytes(x) for x in items]
    lengths = np.array([len(b) for b in raw], np.int64)
    values = np.frombuffer(b"".join(raw), np.uint8).copy()
    return Encoded(kind, values, lengths, _U8)


def _from_items(name: str, items: list[Any], variable: bool) -> Encoded:
    """A list of samples: strings, bytes, or numbers / arrays / tensors of any one shape
    (fixed) or 1-D of varying lengths (list)."""
    if not items:
        return Encoded("fixed", np.empty(0), None, None)
    if all(isinstance(x, str) for x in items) or all(
        isinstance(x, bytes | bytearray | memoryview) for x in items
    ):
        return encode_strings(name, items)
    if any(x is None for x in items):
        i = next(i for i, x in enumerate(items) if x is None)
        raise DTypeError(f"column {name!r}, sample {i} is None: bigstore stores no nulls")
    for i, x in enumerate(items):
        if isinstance(x, str | bytes | bytearray | memoryview):
            raise DTypeError(
                f"column {name!r}, sample {i} is {type(x).__name__} but others are not: a "
                "column holds all str, all bytes, or all numbers"
            )
    if all(type(x) in (int, float, bool) for x in items) and len({type(x) for x in items}) == 1:
        return _from_numpy(name, _python_scalars(name, items))  # fast: one conversion
    if all(type(x) is np.ndarray for x in items) and len({x.dtype for x in items}) == 1:
        fast = _same_dtype_arrays(name, items, variable)  # the common case, without per-sample work
        if fast is not None:
            return fast
    samples = [_sample(name, i, x) for i, x in enumerate(items)]
    known = [s for s in samples if s[1] is not None]
    spec, logical = _common(name, known)
    arrays = [
        _to_common(name, i, a, s, spec) if s is not None else a
        for i, (a, s, _) in enumerate(samples)
    ]
    if spec is not None:
        arrays = [a if a.dtype == spec.storage else a.astype(spec.storage) for a in arrays]
    shapes = {a.shape for a in arrays}
    if not known and all(a.ndim == 1 for a in arrays):
        variable = True  # empty Python lists only: a list column whose dtype is unknown yet
    if len(shapes) == 1 and not variable:
        return Encoded("fixed", np.stack(arrays), None, spec, logical)
    if all(a.ndim == 1 for a in arrays):
        values = np.concatenate(arrays) if spec is not None else np.empty(0)
        lengths = np.array([a.shape[0] for a in arrays], np.int64)
        return Encoded("list", values, lengths, spec, logical)
    raise ShapeError(
        f"column {name!r} is ragged: samples have shapes {sorted(shapes)[:4]}...; fixed-shape "
        "columns need one shape, variable-length columns must be 1-D lists, bytes or strings"
    )


def _same_dtype_arrays(name: str, items: list[Arr], variable: bool) -> Encoded | None:
    dt = items[0].dtype
    if dt.kind not in "biufc" or not dt.isnative:
        return None
    try:
        spec = dtype_spec(dt)
    except DTypeError as e:
        raise DTypeError(f"column {name!r}: {e}") from None
    shapes = {x.shape for x in items}
    if len(shapes) == 1 and not variable:
        return Encoded("fixed", np.stack(items), None, spec)
    if all(len(s) == 1 for s in shapes):
        lengths = np.fromiter((x.shape[0] for x in items), np.int64, len(items))
        return Encoded("list", np.concatenate(items), lengths, spec)
    return None


def _python_scalars(name: str, items: list[Any]) -> Arr:
    """Python ints, floats or bools (one type) as one array. numpy would turn ints that
    need uint64 next to negative ones into float64; here they fit int64, uint64 or fail."""
    if type(items[0]) is not int:
        return np.array(items)
    lo, hi = min(items), max(items)
    for dt in (np.int64, np.uint64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.array(items, dtype=dt)
    bad = lo if lo < np.iinfo(np.int64).min else hi
    raise DTypeError(f"column {name!r}: value {bad} fits no 64-bit integer type")


def _sample(name: str, i: int, x: Any) -> tuple[Arr, DTypeSpec | None, LogicalType | None]:
    """(numbers, dtype, logical) of one sample; dtype None for an empty Python list."""
    if _is_torch(x):
        e = _from_torch(name, x.reshape(1, *x.shape))
        return e.values[0], e.dtype, None
    if isinstance(x, np.ndarray | np.generic) and x.dtype.kind in "Mm":
        e = _datetimes(np.asarray(x).reshape(1, *np.shape(x)))
        return e.values[0], e.dtype, e.logical
    a = np.asarray(x)
    if a.dtype.kind in "fc" and isinstance(x, list | tuple):
        _check_python_floats(name, i, x, a)
    if a.dtype == object or a.dtype.kind not in "biufc":
        raise DTypeError(
            f"column {name!r}, sample {i}: {type(x).__name__} of {a.dtype} is not numbers, "
            "str or bytes"
        )
    if a.size == 0 and isinstance(x, list | tuple):
        return a, None, None  # numpy calls [] float64; the other samples say what it is
    try:
        return _native(a), dtype_spec(a.dtype), None
    except DTypeError as e:
        raise DTypeError(f"column {name!r}, sample {i}: {e}") from None


def _check_python_floats(name: str, i: int, x: Any, a: Arr) -> None:
    """numpy makes floats of Python ints next to floats: refuse ints that do not survive."""
    got, want = a.astype(object).reshape(-1), np.array(x, dtype=object).reshape(-1)
    for u, v in zip(got.tolist(), want.tolist()):
        if u != v and not (u != u and v != v):  # NaN is NaN
            raise DTypeError(
                f"column {name!r}, sample {i}: value {v!r} next to floats becomes {u!r} as "
                f"{a.dtype}; pass a numpy array of the dtype you mean"
            )


def _common(
    name: str, known: Sequence[tuple[Arr, DTypeSpec | None, LogicalType | None]]
) -> tuple[DTypeSpec | None, LogicalType | None]:
    """The element dtype all samples convert to exactly (numpy's promotion, then checked)."""
    if not known:
        return None, None
    specs = {s.name for _, s, _ in known if s is not None}
    logicals = {lt for _, _, lt in known}
    if len(logicals) > 1:
        raise DTypeError(
            f"column {name!r}: samples have different types "
            f"{sorted(str(lt.describe()) if lt else s.name for _, s, lt in known if s)}"
        )
    first = known[0][1]
    assert first is not None
    if len(specs) == 1:
        return first, known[0][2]
    if any(s is not None and s.raw_bits for _, s, _ in known):
        raise DTypeError(f"column {name!r}: samples have different dtypes {sorted(specs)}")
    return dtype_spec(np.result_type(*[a.dtype for a, _, _ in known])), None


def _to_common(name: str, i: int, a: Arr, spec: DTypeSpec, target: DTypeSpec | None) -> Arr:
    assert target is not None
    out, bad = convert_exact(a, spec, target)
    if bad is not None:
        raise DTypeError(
            f"column {name!r}, sample {i}: value {a.reshape(-1)[bad]!r} does not fit "
            f"{target.name}, the dtype the batch's samples share"
        )
    return out


# -- Arrow ------------------------------------------------------------------------------------
def encode_arrow(name: str, arr: Any) -> Encoded:
    """One Arrow array (no nulls) as an :class:`Encoded`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = arr.type
    if arr.null_count:
        raise DTypeError(f"column {name!r} has {arr.null_count} nulls; bigstore stores no nulls")
    if pa.types.is_dictionary(t):
        return _arrow_dictionary(name, arr)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t) or (
        pa.types.is_large_binary(t)
    ):
        kind = "str" if (pa.types.is_string(t) or pa.types.is_large_string(t)) else "bytes"
        big = arr.cast(pa.large_binary())
        offsets = np.frombuffer(big.buffers()[1], np.int64)[big.offset : big.offset + len(big) + 1]
        data = big.buffers()[2]
        raw = np.frombuffer(data, np.uint8) if data is not None else np.empty(0, np.uint8)
        return Encoded(kind, raw[offsets[0] : offsets[-1]], np.diff(offsets), _U8)
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = encode_arrow(name, arr.flatten())
        if inner.variable or inner.values.ndim != 1 or _is_category(inner):
            raise DTypeError(
                f"column {name!r}: lists of {t.value_type} are not stored; lists hold plain "
                "numbers, timestamps or durations"
            )
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        return Encoded("list", inner.values, lengths, inner.dtype, inner.logical)
    if pa.types.is_fixed_size_list(t):
        inner = encode_arrow(name, arr.flatten())
        if inner.variable or _is_category(inner):
            raise DTypeError(f"column {name!r}: fixed-size lists of {t.value_type}")
        values = inner.values.reshape(len(arr), t.list_size, *inner.values.shape[1:])
        return Encoded("fixed", values, None, inner.dtype, inner.logical)
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        lt = LogicalType(
            "datetime64" if pa.types.is_timestamp(t) else "timedelta64",
            unit=t.unit,
            tz=getattr(t, "tz", None) or None,
        )
        return Encoded("fixed", _arrow_ints(arr, pa.int64()), None, _I64, lt)
    if pa.types.is_date32(t):
        days = _arrow_ints(arr, pa.int32()).astype(np.int64)
        return Encoded("fixed", days, None, _I64, LogicalType("datetime64", unit="D"))
    if pa.types.is_date64(t):
        ms = _arrow_ints(arr, pa.int64())
        return Encoded("fixed", ms, None, _I64, LogicalType("datetime64", unit="ms"))
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return _from_numpy(name, np.asarray(arr.to_numpy(zero_copy_only=False)))
    if pa.types.is_struct(t):
        raise DTypeError(
            f"column {name!r} is a struct inside a list or array: bigstore flattens top-level "
            "structs into 'a.b' columns but stores no structs nested in other types"
        )
    raise DTypeError(
        f"column {name!r} has Arrow type {t}, which bigstore does not store (numbers, bools, "
        "strings, binary, lists, fixed-size lists, timestamps, dates, durations, dictionaries "
        "and structs are supported; select other columns with columns=[...])"
    )


def _arrow_ints(arr: Any, as_type: Any) -> Arr:
    return np.asarray(arr.view(as_type).to_numpy(zero_copy_only=False))


def _is_category(e: Encoded) -> bool:
    return e.logical is not None and e.logical.type == "category"


def _arrow_dictionary(name: str, arr: Any) -> Encoded:
    import pyarrow as pa

    vt = arr.type.value_type
    if arr.dictionary.null_count:
        raise DTypeError(f"column {name!r}: its dictionary holds nulls; bigstore stores no nulls")
    if pa.types.is_string(vt) or pa.types.is_large_string(vt):
        vdt = "str"
    elif pa.types.is_integer(vt):
        vdt = np.dtype(vt.to_pandas_dtype()).name
    else:  # other values are stored as themselves: still exact, just not as codes
        return encode_arrow(name, arr.dictionary_decode())
    codes = np.asarray(arr.indices.to_numpy(zero_copy_only=False))
    lt = LogicalType("category", categories=tuple(arr.dictionary.to_pylist()), value_dtype=vdt)
    return Encoded("fixed", codes, None, dtype_spec(codes.dtype), lt)


# -- pandas -------------------------------------------------------------------------------------
def from_pandas(name: str, series: Any) -> Any:
    """A pandas Series as numpy numbers, an Arrow array or a list of samples: numpy-backed
    numbers and datetimes as they are (NaN stays NaN), object columns sample by sample,
    extension types (strings, categoricals, timezones, nullable ints) through Arrow."""
    dt = series.dtype
    if isinstance(dt, np.dtype):
        return series.tolist() if dt.kind == "O" else series.to_numpy()
    import pyarrow as pa

    try:
        return pa.array(series)
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise DTypeError(f"column {name!r}: pandas dtype {dt} cannot be stored ({e})") from None


# -- decode: stored numbers -> what the user gave -----------------------------------------------
def needs_decoding(col: ColumnSpec) -> bool:
    return col.logical is not None or col.dtype.raw_bits


def decode_batch(
    columns: Sequence[ColumnSpec], batch: dict[str, Any], device: Any = None
) -> dict[str, Any]:
    """``batch`` (gathered stored values) with each column decoded for its kind, in place.

    ``device`` None: for numpy consumers (datetimes as datetime64). A device (torch consumers):
    datetimes stay int64 counts (torch has no datetime type) and raw-bit columns become torch
    tensors on that device.
    """
    for col in columns:
        if col.name in batch and needs_decoding(col):
            batch[col.name] = _decode(col, batch[col.name], device)
    return batch


def _decode(col: ColumnSpec, value: Any, device: Any) -> Any:
    lt = col.logical
    if lt is not None and lt.type == "category":
        return _categories(col, value)
    if col.kind == "list":
        return [_decode_elements(col, v, device) for v in value]
    return _decode_elements(col, value, device)


def _decode_elements(col: ColumnSpec, arr: Arr, device: Any) -> Any:
    if col.logical is not None:
        return arr if device is not None else arr.view(col.logical.numpy_dtype)
    import torch

    from ..weights._arrays import from_storage_array

    t = from_storage_array(np.ascontiguousarray(arr), col.dtype)
    if not t.numel():  # numpy gives empty copies stride 0, which torch cannot view
        t = torch.empty(t.shape, dtype=t.dtype)
    return t if device is None else t.to(device)


def _categories(col: ColumnSpec, codes: Arr) -> Any:
    lt = col.logical
    assert lt is not None
    n = len(lt.categories)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= n):
        raise CorruptChunkError(
            f"column {col.name!r}: category code {int(codes.max())} outside its {n} categories"
        )
    values = lt.category_values[codes]
    return values.tolist() if lt.value_dtype == "str" else values
