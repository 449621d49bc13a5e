"""Pure planners: no I/O. Their results are the I/O plan an executor carries out."""

from .coalesce import CoalescedRead, coalesce
from .rows import ChunkPiece, plan_rows

__all__ = ["ChunkPiece", "CoalescedRead", "coalesce", "plan_rows"]
