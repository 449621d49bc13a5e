"""``ds.torch_dataset(...)``: an ``IterableDataset`` of whole batches for torch's DataLoader.

Use ``DataLoader(tds, batch_size=None, num_workers=K)``. Worker w of rank r delivers its own
contiguous span of the rank's batches; the DataLoader interleaves workers round-robin, so the
rank's batches come out in the order :mod:`bigstore.plan.order` defines. Nothing is started
before a worker iterates: the dataset travels to spawn/forkserver workers as its URL (handles
are reopened there) and forked workers make their own threads and clients.

Resume: the training loop knows how many batches it consumed; ``state_dict(batches_seen)``
turns that into the same few integers ``Loader.state_dict()`` returns, and
``load_state_dict`` (before the next ``iter(DataLoader)``) continues from there. The epoch is
fixed when workers start: call ``set_epoch`` before each epoch (not with persistent_workers).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ..config import LoaderConfig
from ..plan.order import Order, OrderSpec, Split
from ._kinds import decode_batch
from .loader import (
    EpochState,
    make_prefetcher,
    order_spec,
    resolve_config,
    to_device,
    worker_batches,
)

__all__ = ["TorchDataset"]


class TorchDataset(IterableDataset[dict[str, Any]]):
    def __init__(self, ds: Any, config: LoaderConfig) -> None:
        self.ds = ds
        self.config = resolve_config(config)
        self.spec = order_spec(ds, self.config)
        self._saved: dict[str, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        self._saved = None
        from dataclasses import replace

        self.spec = replace(self.spec, epoch=int(epoch))

    def _state(self, workers: int) -> EpochState:
        assert self.config.world_size is not None
        st = EpochState(
            self.spec,
            Split(self.config.world_size, workers, self.config.batch_size, self.config.drop_last),
        )
        if self._saved is not None:
            st.load(self._saved)
        return st

    def state_dict(self, batches_seen: int, num_workers: int) -> dict[str, Any]:
        """The resume state after this rank consumed ``batches_seen`` batches of this epoch
        from a DataLoader with ``num_workers`` workers."""
        st = self._state(max(1, num_workers))
        st.batches += int(batches_seen)
        return st.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._saved = dict(state)
        self.spec = OrderSpec(
            len(self.ds),
            self.ds.layout.chunk_rows,
            int(state["seed"]),
            int(state["epoch"]),
            bool(state["shuffle"]),
            int(state["window"]),
        )

    def __iter__(self) -> Iterator[dict[str, Any]]:
        cols = self.ds.select(self.config.columns)
        self.ds.check_backed(cols)  # before the order and the slots are sized from documents
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        st = self._state(workers)
        # After n batches the rank's next batch belongs to logical worker n % K; the DataLoader
        # asks worker 0 first, so worker ids are rotated to keep the original order.
        logical = (worker + st.batches) % workers
        assert self.config.rank is not None
        runs, first, count = worker_batches(
            st.spec, st.history, st.split, st.batches, self.config.rank, logical
        )
        pf = make_prefetcher(
            self.ds, self.config, cols, Order(st.spec), runs, st.split.batch, first, count
        )
        try:
            for batch in pf:
                batch = decode_batch(cols, batch, self.config.device or "cpu")
                out = {
                    k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                    for k, v in batch.items()
                }
                out = to_device(out, self.config) if self.config.device else out
                yield self.config.transform(out) if self.config.transform else out
        finally:
            pf.close()
