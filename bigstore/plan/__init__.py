"""Pure planners: no I/O. Their results are the plans the executors in ``bigstore.io`` run."""

from .reads import ChunkRead, ReadOp, plan_reads
from .rows import ChunkPiece, plan_rows

__all__ = ["ChunkPiece", "ChunkRead", "ReadOp", "plan_reads", "plan_rows"]
