"""An index along axis 0 (samples of a dataset, rows of a tensor) -> the rows it selects.

Pure. numpy's rules for what numpy and bigstore both accept: an integer (negative counts from
the end), a slice with any step, ``...`` (everything), a boolean mask as long as the axis, an
integer array or list (negative entries count from the end). What numpy would read as another
axis or a new one is refused with :class:`InvalidIndexError` instead of guessed at: ``None``, a
bare bool (numpy adds an axis), a tuple, a float, a string, a mask of another length, an
integer array of more than one dimension (where the caller does not allow it). An index past
the end is an :class:`IndexOutOfRangeError`. Both errors are also ``IndexError``s.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import IndexOutOfRangeError, InvalidIndexError

__all__ = ["Rows", "select_rows"]

Arr = np.ndarray[Any, Any]


@dataclass(frozen=True)
class Rows:
    """The rows an index selects, in output order: ``range(start, stop, step)`` when
    ``array`` is None, else ``array`` (int64, each in [0, n)). ``shape`` is the result's leading
    shape: () for an integer (the axis is dropped), (count,) or the index array's shape."""

    start: int
    stop: int
    step: int
    array: Arr | None
    shape: tuple[int, ...]

    @property
    def scalar(self) -> bool:
        return self.shape == ()

    @property
    def count(self) -> int:
        return int(self.array.size) if self.array is not None else len(self.range)

    @property
    def range(self) -> range:
        return range(self.start, self.stop, self.step)

    @property
    def contiguous(self) -> bool:
        """True when the rows are [start, stop) in order (one read, no gather)."""
        return self.array is None and (self.step == 1 or self.count <= 1)

    def rows(self) -> Arr:
        """Every selected row as a flat int64 array."""
        if self.array is not None:
            return self.array.reshape(-1)
        return np.arange(self.start, self.stop, self.step, dtype=np.int64)


def _range(r: range, shape: tuple[int, ...]) -> Rows:
    return Rows(r.start, r.stop, r.step, None, shape)


def select_rows(index: Any, n: int, what: str = "sample", *, nd: bool = False) -> Rows:
    """The rows of an axis of length ``n`` that ``index`` selects. ``what`` names a row in
    messages ("sample", "row"); ``nd`` allows integer arrays of any shape (numpy's result
    shape: the index array's shape, then the rest)."""
    if index is None:
        raise InvalidIndexError(
            f"None (numpy's newaxis) is not a {what} index: index with an int, a slice, a "
            "boolean mask or an integer array"
        )
    if index is Ellipsis:
        return _range(range(n), (n,))
    if isinstance(index, slice):
        try:
            r = range(*index.indices(n))
        except (TypeError, ValueError) as e:
            raise InvalidIndexError(f"bad {what} slice {index!r}: {e}") from None
        return _range(r, (len(r),))
    if isinstance(index, bool | np.bool_):
        raise InvalidIndexError(
            f"{index!r} is not a {what} index (numpy would add an axis): use an int, or a "
            f"boolean mask of length {n}"
        )
    if isinstance(index, str | bytes):
        raise InvalidIndexError(f"{index!r} is not a {what} index: index with ints or slices")
    if isinstance(index, tuple):
        raise InvalidIndexError(
            f"{index!r}: a tuple indexes several axes; bigstore indexes {what}s along the first "
            "axis only (pass a list for several indices)"
        )
    if isinstance(index, int | np.integer):
        return _one(int(index), n, what)
    if not isinstance(index, np.ndarray | list) and not hasattr(index, "__array__"):
        try:
            return _one(operator.index(index), n, what)
        except TypeError:
            raise InvalidIndexError(
                f"{index!r} ({type(index).__name__}) is not a {what} index: use an int, a "
                "slice, a boolean mask or an integer array"
            ) from None
    try:
        arr = np.asarray(index)
    except (TypeError, ValueError) as e:
        raise InvalidIndexError(
            f"cannot read {what} indices from {type(index).__name__}: {e}"
        ) from None
    if arr.dtype == object and arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "b":
        return _mask(arr, n, what)
    if arr.size == 0 and arr.dtype.kind not in "iu":
        arr = arr.astype(np.int64)  # [] is float64 to numpy; an empty selection to anyone
    if arr.dtype.kind not in "iu":
        raise InvalidIndexError(
            f"{what} indices must be integers or booleans, got an array of {arr.dtype}"
        )
    if arr.ndim == 0:
        return _one(int(arr), n, what)
    if arr.ndim > 1 and not nd:
        raise InvalidIndexError(
            f"{what} indices must be 1-D, got shape {arr.shape}: index with "
            "idx.reshape(-1) and reshape the result"
        )
    return Rows(0, 0, 1, _in_range(arr, n, what), arr.shape)


def _one(i: int, n: int, what: str) -> Rows:
    if not -n <= i < n:
        raise IndexOutOfRangeError(f"{what} index {i} is out of range for {n} {what}s")
    i = i + n if i < 0 else i
    return Rows(i, i + 1, 1, None, ())


def _mask(mask: Arr, n: int, what: str) -> Rows:
    if mask.ndim != 1 or mask.shape[0] != n:
        raise InvalidIndexError(
            f"a boolean mask must be 1-D with one entry per {what} ({n}), got shape {mask.shape}"
        )
    rows = np.flatnonzero(mask).astype(np.int64)
    return Rows(0, 0, 1, rows, rows.shape)


def _in_range(arr: Arr, n: int, what: str) -> Arr:
    """``arr`` as int64 rows in [0, n): negative entries count from the end."""
    bad = (arr >= n) | (arr < -n) if arr.dtype.kind == "i" else arr >= n  # before any cast
    if bad.any():
        first = arr.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])]
        raise IndexOutOfRangeError(f"{what} index {int(first)} is out of range for {n} {what}s")
    out = arr.astype(np.int64)
    if arr.dtype.kind == "i":
        out = np.where(out < 0, out + n, out)
    return out
