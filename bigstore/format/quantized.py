"""Group-wise quantized tensors on disk: one Zarr group of ordinary arrays per tensor.

A tensor ``<name>`` quantized group-wise is stored as a Zarr v3 *group* ``<name>`` whose
attributes name the scheme (``attributes.bigstore.quantized``: a :class:`QuantSpec`), holding
ordinary arrays that any Zarr reader returns as they are::

    <name>/zarr.json           group; attributes.bigstore = {"dtype": <logical dtype>,
                               "quantized": {"scheme", "group_size", "scale_dtype", "dtype",
                               "shape"}}
    <name>/packed/zarr.json    int8 (rows, cols) | uint8 (rows, ceil(cols / 2)): two values a byte
    <name>/scales/zarr.json    float16 | bfloat16 (stored as uint16 bits) (rows, groups)
    <name>/zeros/zarr.json     uint8 (rows, groups), int4 only

``rows`` is the product of every dimension but the last: groups run along the last axis and
never straddle rows. All parts are chunked along axis 0 with the same rows per chunk, a whole
number of the tensor's axis-0 rows, so chunk ``k`` of every part holds the same logical rows
and any rows along axis 0 decode from just their parts' rows.

:class:`QuantizedLayout` is the *logical* tensor (its shape, dtype, nbytes are what a reader
returns) and knows its parts' layouts: the chunk reader reads the parts' rows and dequantizes
into the caller's buffer; the offload pager sizes and pages it like any tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import NotAStoreError, QuantizeError
from .array import ArrayLayout, choose_chunk_rows
from .codecs import ChunkCodec
from .dtypes import dtype_spec

__all__ = ["PARTS", "PartSpan", "QuantSpec", "QuantizedLayout", "is_quantized_doc"]

SCHEMES = ("int8", "int4")
SCALE_DTYPES = ("float16", "bfloat16")
PARTS = ("packed", "scales", "zeros")  # zeros: int4 only


@dataclass(frozen=True)
class QuantSpec:
    """The JSON-able description stored beside the parts (the group's attributes)."""

    scheme: str
    group_size: int
    scale_dtype: str
    dtype: str  # the original logical dtype
    shape: tuple[int, ...]  # the original shape

    @property
    def cols(self) -> int:
        return self.shape[-1]

    @property
    def rows(self) -> int:
        return math.prod(self.shape[:-1])

    @property
    def n_groups(self) -> int:
        return -(-self.cols // self.group_size)

    @property
    def packed_shape(self) -> tuple[int, int]:
        return (self.rows, self.cols if self.scheme == "int8" else (self.cols + 1) // 2)

    @property
    def scales_shape(self) -> tuple[int, int]:
        return (self.rows, self.n_groups)

    @property
    def parts(self) -> tuple[str, ...]:
        return PARTS if self.scheme == "int4" else PARTS[:2]

    @property
    def nbytes(self) -> int:
        """Stored bytes: packed values, scales and zero points."""
        per_group = 2 + (1 if self.scheme == "int4" else 0)
        return math.prod(self.packed_shape) + self.rows * self.n_groups * per_group

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes / max(1, self.rows * self.cols)

    def with_shape(self, shape: tuple[int, ...]) -> QuantSpec:
        return QuantSpec(self.scheme, self.group_size, self.scale_dtype, self.dtype, shape)

    def to_json(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "group_size": self.group_size,
                "scale_dtype": self.scale_dtype, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, doc: dict[str, Any], name: str) -> QuantSpec:
        try:
            spec = cls(scheme=str(doc["scheme"]), group_size=int(doc["group_size"]),
                       scale_dtype=str(doc["scale_dtype"]), dtype=str(doc["dtype"]),
                       shape=tuple(int(n) for n in doc["shape"]))
        except (KeyError, TypeError, ValueError) as e:
            raise QuantizeError(f"{name}: malformed quantization description {doc!r}") from e
        spec.check(name)
        return spec

    def check(self, name: str) -> None:
        if self.scheme not in SCHEMES:
            raise QuantizeError(f"{name}: unknown quantization scheme {self.scheme!r}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise QuantizeError(f"{name}: unknown scale dtype {self.scale_dtype!r}")
        if self.group_size < 1 or not self.shape or min(self.shape) < 1:
            raise QuantizeError(
                f"{name}: bad group size {self.group_size} or shape {self.shape}"
            )

    def part_dtype(self, part: str) -> str:
        """The logical dtype of part ``part`` as stored."""
        if part == "packed":
            return "int8" if self.scheme == "int8" else "uint8"
        if part == "scales":
            return self.scale_dtype
        return "uint8"

    def part_shape(self, part: str) -> tuple[int, int]:
        return self.packed_shape if part == "packed" else self.scales_shape


@dataclass(frozen=True)
class PartSpan:
    """Rows [start, stop) of part ``part`` (its layout ``layout``): ``nbytes`` bytes."""

    part: str
    layout: ArrayLayout
    start: int
    stop: int

    @property
    def nbytes(self) -> int:
        return (self.stop - self.start) * self.layout.row_bytes


def is_quantized_doc(doc: Any) -> bool:
    """True for the group document of a quantized tensor."""
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return False
    own = (doc.get("attributes") or {}).get("bigstore")
    return isinstance(own, dict) and "quantized" in own


@dataclass(frozen=True, kw_only=True)
class QuantizedLayout(ArrayLayout):
    """A quantized tensor: the logical array (``shape``, ``dtype``, ``rows``, ``nbytes`` and
    ``chunk_rows`` count logical axis-0 rows) and the layouts of its stored parts.

    ``codec`` is the packed part's codec. Chunk ``k`` is chunk ``k`` of every part.
    """

    quant: QuantSpec
    parts: tuple[tuple[str, ArrayLayout], ...]

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def build(cls, name: str, spec: QuantSpec, chunk_bytes: int,
              codec: ChunkCodec) -> QuantizedLayout:
        """The layout a writer uses: parts chunked by ``chunk_bytes`` of packed bytes, each
        chunk a whole number of the tensor's axis-0 rows."""
        spec.check(name)
        per = _part_rows_per_row(spec)
        if len(spec.shape) == 1:
            logical_rows = spec.shape[0]  # one part row holds the whole vector: one chunk
        else:
            packed_row = per * spec.packed_shape[1]
            logical_rows = choose_chunk_rows((spec.shape[0], packed_row), 1, chunk_bytes)
        part_rows = max(1, logical_rows * per) if len(spec.shape) > 1 else 1
        parts = tuple(
            (p, ArrayLayout(f"{name}/{p}", spec.part_shape(p), dtype_spec(spec.part_dtype(p)),
                            min(part_rows, spec.rows),
                            codec.bind(dtype_spec(spec.part_dtype(p)).itemsize)))
            for p in spec.parts
        )
        return cls(name, spec.shape, dtype_spec(spec.dtype), logical_rows, parts[0][1].codec,
                    quant=spec, parts=parts)

    @classmethod
    def from_docs(cls, name: str, group: dict[str, Any], arrays: Mapping[str, Any],
                  where: str) -> QuantizedLayout:
        """Parse a quantized tensor from its group document and its parts' array documents
        (``arrays``: path -> document, e.g. the root's consolidated metadata)."""
        own = (group.get("attributes") or {}).get("bigstore") or {}
        desc = own.get("quantized") if isinstance(own, dict) else None
        if not isinstance(desc, dict):
            raise NotAStoreError(f"{where}: group {name!r} has no quantization description")
        try:
            spec = QuantSpec.from_json(desc, f"{where}: tensor {name!r}")
        except QuantizeError as e:
            raise NotAStoreError(str(e)) from None
        parts = []
        for p in spec.parts:
            doc = arrays.get(f"{name}/{p}")
            if not isinstance(doc, dict):
                raise NotAStoreError(f"{where}: quantized tensor {name!r} has no part {p!r}")
            lay = ArrayLayout.from_json(f"{name}/{p}", doc, f"{where}/{p}")
            if lay.shape != spec.part_shape(p) or lay.dtype.name != spec.part_dtype(p):
                raise NotAStoreError(
                    f"{where}: part {p!r} of {name!r} is {lay.dtype.name}{lay.shape}, the "
                    f"description needs {spec.part_dtype(p)}{spec.part_shape(p)}"
                )
            if lay.sharded:
                raise NotAStoreError(f"{where}: part {p!r} of {name!r} is sharded")
            parts.append((p, lay))
        rows = {lay.chunk_rows for _, lay in parts}
        per = _part_rows_per_row(spec)
        chunk = parts[0][1].chunk_rows
        if len(rows) != 1 or chunk % per:
            raise NotAStoreError(
                f"{where}: the parts of {name!r} are not chunked alike in whole rows"
            )
        logical_rows = spec.shape[0] if len(spec.shape) == 1 else max(1, chunk // per)
        return cls(name, spec.shape, dtype_spec(spec.dtype), logical_rows, parts[0][1].codec,
                   quant=spec, parts=tuple(parts))

    # -- parts --------------------------------------------------------------------------------
    def part(self, name: str) -> ArrayLayout:
        return dict(self.parts)[name]

    @property
    def part_rows_per_row(self) -> int:
        """Rows of each part per logical axis-0 row (vectors: the one part row holds all)."""
        return _part_rows_per_row(self.quant)

    def part_spans(self, start: int, stop: int) -> list[PartSpan]:
        """The parts' rows that hold logical rows [start, stop) (a vector: its whole part
        row; the caller then takes the values [start, stop) of the dequantized row)."""
        if len(self.shape) == 1:
            return [PartSpan(p, lay, 0, 1) for p, lay in self.parts]
        per = self.part_rows_per_row
        return [PartSpan(p, lay, start * per, stop * per) for p, lay in self.parts]

    def rows_spec(self, start: int, stop: int) -> QuantSpec:
        """The description of logical rows [start, stop) alone (vectors: the whole vector)."""
        if len(self.shape) == 1:
            return self.quant
        return self.quant.with_shape((stop - start, *self.shape[1:]))

    @property
    def decoded(self) -> bool:  # dequantized on every read
        return True

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the parts (what a reader moves), against ``nbytes`` once dequantized."""
        return sum(lay.nbytes for _, lay in self.parts)

    # -- where it lives -----------------------------------------------------------------------
    def chunk_key(self, k: int) -> str:
        return self.parts[0][1].chunk_key(k)

    def object_keys(self) -> list[str]:
        return [key for _, lay in self.parts for key in lay.object_keys()]

    def where(self, k: int, url: str = "") -> str:
        return (f"quantized tensor {self.path!r} chunk {k} "
                f"({url + '/' if url else ''}{self.path}/*/c/{k}/0)")

    # -- documents ----------------------------------------------------------------------------
    def to_zarr(self) -> Any:
        raise NotImplementedError("a quantized tensor is a group: see group_doc / docs")

    def to_json(self) -> dict[str, Any]:
        return self.group_doc()

    def group_doc(self) -> dict[str, Any]:
        return {"zarr_format": 3, "node_type": "group",
                "attributes": {"bigstore": {"dtype": self.dtype.name,
                                            "quantized": self.quant.to_json()}}}

    def docs(self) -> dict[str, dict[str, Any]]:
        """Every document of the tensor, by path: the group, then its parts."""
        out = {self.path: self.group_doc()}
        out.update({lay.path: lay.to_json() for _, lay in self.parts})
        return out


def _part_rows_per_row(spec: QuantSpec) -> int:
    return spec.rows // spec.shape[0] if len(spec.shape) > 1 else 1
