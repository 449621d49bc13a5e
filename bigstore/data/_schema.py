"""A dataset's columns and how each is laid out as sharded Zarr v3 arrays.

Every column is chunked along the sample axis with the same ``chunk_rows``, so "chunk k" names
the same samples in every column: the loader's unit of reading. A fixed-shape column is one
array ``<name>`` of shape (rows, *shape). A variable-length column is a group ``<name>`` holding
``<name>/values`` (all samples' elements back to back, 1-D) and ``<name>/offsets`` of shape
(rows, 2): each sample's [start, stop) in ``values``. Storing both ends keeps each offsets chunk
self-contained (no peek into the previous chunk).

A column's description (in the root document's ``columns``) holds its name, kind, stored
element dtype, per-sample shape and, for timestamps, durations and categories, a ``logical``
entry (:class:`LogicalType`): unit and timezone, or the category dictionary. Descriptions
without one (every column written before logical types existed) read as plain numbers.

Arrays are sharded (zarr's ``sharding_indexed`` codec): one object holds ``chunks_per_shard``
inner chunks back to back, then an index of (offset, nbytes) uint64 pairs and its crc32c. Each
array is an :class:`~bigstore.format.ArrayLayout`, the same type as a tensor's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import NotAStoreError
from ..format import ArrayLayout, DTypeSpec, check_name, dtype_spec
from ._kinds import LogicalType

__all__ = ["ColumnSpec", "DatasetLayout", "Kind", "group_doc"]

Kind = Literal["fixed", "list", "bytes", "str"]
_KINDS = ("fixed", "list", "bytes", "str")


@dataclass(frozen=True)
class ColumnSpec:
    """One column: ``kind`` "fixed" (shape per sample) or variable-length "list"/"bytes"/"str".

    ``dtype`` is the element dtype as stored (bfloat16 and float8 as their raw bits, see
    ``format.dtypes``); ``logical`` says what stored integers mean (timestamps, durations,
    category codes), None when the numbers are the values.
    """

    name: str
    kind: Kind
    dtype: DTypeSpec
    shape: tuple[int, ...] = ()  # per-sample shape; () for variable-length columns
    logical: LogicalType | None = None

    def __post_init__(self) -> None:
        check_name(self.name, "column")
        if self.kind not in _KINDS:
            raise NotAStoreError(f"column {self.name!r}: unknown kind {self.kind!r}")
        lt = self.logical
        if lt is not None and self.dtype.name != ("int32" if lt.type == "category" else "int64"):
            raise NotAStoreError(
                f"column {self.name!r}: {lt.type} values stored as {self.dtype.name}"
            )
        if lt is not None and lt.type == "category" and (self.kind, self.shape) != ("fixed", ()):
            raise NotAStoreError(f"column {self.name!r}: categories hold one value per sample")

    @property
    def variable(self) -> bool:
        return self.kind != "fixed"

    @property
    def row_bytes(self) -> int:
        return self.dtype.itemsize * math.prod(self.shape) if not self.variable else 16

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "dtype": self.dtype.name,
            "shape": list(self.shape),
        }
        if self.logical is not None:  # absent in descriptions written before logical types
            d["logical"] = self.logical.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ColumnSpec:
        try:
            logical = d.get("logical")
            shape = d.get("shape", ())
            if not isinstance(d["name"], str) or not all(is_count(x) for x in shape):
                raise TypeError("a name must be a string, a shape non-negative integers")
            return cls(
                d["name"],
                d["kind"],
                dtype_spec(str(d["dtype"])),
                tuple(shape),
                LogicalType.from_json(logical) if logical is not None else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise NotAStoreError(f"malformed column description {d!r} ({e})") from None

    def describe(self) -> tuple[str, str, tuple[int, ...] | None]:
        """(name, dtype, shape) as ``Dataset.columns`` shows it; shape None: variable length.
        The dtype is the logical one: "datetime64[ns, UTC]", "category[str]", "bfloat16"..."""
        if self.logical is not None:
            dt = self.logical.describe()
        else:
            dt = {"bytes": "bytes", "str": "str"}.get(self.kind, self.dtype.name)
        return self.name, dt, (None if self.variable else self.shape)


def is_count(x: Any) -> bool:
    """A JSON integer >= 0 (not a bool, not a float such as 1e300 or inf)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def group_doc() -> dict[str, Any]:
    return {"zarr_format": 3, "node_type": "group", "attributes": {}}


@dataclass(frozen=True)
class DatasetLayout:
    """Everything a reader needs: rows, the shared chunking, columns and their arrays."""

    num_rows: int
    chunk_rows: int
    columns: tuple[ColumnSpec, ...]
    arrays: dict[str, ArrayLayout] = field(default_factory=dict)  # path -> array

    @property
    def n_chunks(self) -> int:
        return -(-self.num_rows // self.chunk_rows) if self.num_rows else 0  # exact for any int

    def column(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        from ..errors import MissingTensorError

        known = ", ".join(c.name for c in self.columns)
        raise MissingTensorError(f"unknown column {name!r}; this dataset has: {known}")

    def main_array(self, col: ColumnSpec) -> ArrayLayout:
        """The array chunked like the samples: the column itself, or its offsets."""
        return self.arrays[col.name if not col.variable else f"{col.name}/offsets"]

    def values_array(self, col: ColumnSpec) -> ArrayLayout:
        return self.arrays[f"{col.name}/values"]

    def chunk_len(self, k: int) -> int:
        return min(self.chunk_rows, self.num_rows - k * self.chunk_rows)
