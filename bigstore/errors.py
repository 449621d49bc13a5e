"""One exception root for everything bigstore raises on purpose.

Each leaf also inherits the builtin a caller would naturally catch (``KeyError`` for a missing
tensor, ``FileNotFoundError`` for a missing store, ...), so ``except KeyError`` keeps working
while ``except BigstoreError`` catches them all. Messages name the tensor, chunk or path.
"""

from __future__ import annotations

__all__ = [
    "BenchTargetError",
    "BigstoreError",
    "BudgetError",
    "ChecksumError",
    "ConcurrentWriteError",
    "CorruptChunkError",
    "DTypeError",
    "DistributedError",
    "FormatVersionError",
    "IndexOutOfRangeError",
    "IncompleteStoreError",
    "InvalidIndexError",
    "InvalidKeyError",
    "InvalidURLError",
    "MissingDependencyError",
    "MetadataError",
    "MissingTensorError",
    "NotAStoreError",
    "QuantizeError",
    "ShapeError",
    "StoreChangedError",
    "StoreNotFoundError",
    "TruncatedChunkError",
    "UnsupportedCodecError",
    "UnsupportedSourceError",
]


class BigstoreError(Exception):
    """Root of every error bigstore raises on purpose."""


class InvalidKeyError(BigstoreError, ValueError):
    """A key or tensor name that is malformed or would escape the store's root."""


class InvalidURLError(BigstoreError, ValueError):
    """A URL whose scheme no installed backend serves, or that is malformed."""


class StoreNotFoundError(BigstoreError, FileNotFoundError):
    """No store at the URL (or a missing key inside one)."""


class NotAStoreError(BigstoreError, ValueError):
    """Something exists at the URL, but it is not a bigstore store."""


class MetadataError(NotAStoreError):
    """An array document that is not sane (a size past int64, an absurd chunking): refused
    when it is read. (A sane document claiming more than its objects hold is refused before
    anything is allocated, with the CorruptChunkError of the chunk that gives it away.)"""


class IncompleteStoreError(BigstoreError, RuntimeError):
    """A store whose write never committed (the writer was interrupted)."""


class FormatVersionError(BigstoreError, ValueError):
    """A store written by a newer (or unknown) format version."""


class MissingTensorError(BigstoreError, KeyError):
    """A tensor name the store does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable
        return str(self.args[0]) if self.args else ""


class DTypeError(BigstoreError, TypeError):
    """A dtype bigstore cannot store, or one that does not match what was expected."""


class ShapeError(BigstoreError, ValueError):
    """A shape that does not match what was expected."""


class UnsupportedCodecError(BigstoreError, ValueError):
    """A codec chain bigstore's read path does not understand."""


class CorruptChunkError(BigstoreError, OSError):
    """A chunk whose bytes cannot be what was written."""


class ChecksumError(CorruptChunkError):
    """A chunk whose crc32c does not match its bytes."""


class TruncatedChunkError(CorruptChunkError):
    """A chunk file shorter (or longer) than its metadata says."""


class StoreChangedError(BigstoreError, RuntimeError):
    """The store was replaced after this handle opened it: open it again."""


class ConcurrentWriteError(BigstoreError, RuntimeError):
    """Another writer holds the store; this write did not happen (nothing of it is visible)."""


class BudgetError(BigstoreError, MemoryError):
    """A byte budget too small for the work asked of it."""


class UnsupportedSourceError(BigstoreError, ValueError):
    """A conversion source or destination bigstore does not know how to read or write."""


class IndexOutOfRangeError(BigstoreError, IndexError):
    """A sample or row index outside the dataset or tensor."""


class InvalidIndexError(BigstoreError, IndexError, TypeError):
    """An index bigstore does not accept: a float, a string, None, a bool, a tuple of axes,
    a mask of the wrong length. Also an ``IndexError`` and a ``TypeError``, as numpy raises
    one or the other for these."""


# -- quantized weights (issue 10) -------------------------------------------------------------
class QuantizeError(BigstoreError, ValueError):
    """A tensor that cannot be quantized as asked (non-finite values, a scale out of range)."""


class MissingDependencyError(BigstoreError, ImportError):
    """An optional package a feature needs is not installed (the message names the extra)."""


class BenchTargetError(BigstoreError, ValueError):
    """A benchmark target bigstore cannot measure (neither a store nor a known checkpoint)."""


# -- scale-out (issue 12) ---------------------------------------------------------------------
class DistributedError(BigstoreError, RuntimeError):
    """A multi-process write or read that cannot go ahead as asked: no Dask client, a job token
    reused for other data, a source that changed between passes, a rank whose reads failed."""
