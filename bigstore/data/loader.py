"""``ds.loader(...)``: a shuffled, sharded, resumable iterator of batches.

The order is :mod:`bigstore.data.order`'s pure function of (seed, epoch, layout, split); the
reading is :mod:`bigstore.data._prefetch`'s. ``state_dict()`` counts batches *delivered* to the
caller (never batches merely prefetched), so a resumed loader continues with exactly the
batches that were not seen.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..config import MiB, default_io_threads, parse_bytes
from ..errors import BigstoreError, ShapeError
from ._chunks import ChunkLoader, ChunkPools
from ._kinds import decode_batch
from ._mapped import MappedPrefetcher, mapped_arrays
from ._prefetch import PrefetchConfig, Prefetcher
from .order import (
    Level,
    Order,
    OrderSpec,
    Split,
    consumed_per_worker,
    consumer_spans,
    consumer_stream,
    sub_stream,
)

__all__ = ["Loader", "LoaderConfig", "default_rank_world"]

STATE_VERSION = 1


@dataclass(frozen=True)
class LoaderConfig:
    """Everything a loader needs besides the dataset; the defaults live here.

    window: chunks whose samples are shuffled together (shuffle quality vs memory).
    memory: bytes of chunk slots (None: room for four windows, at least 256 MiB).
    read_ahead: bytes of upcoming batches whose chunks are read in one group.
    prefetch: finished batches kept ready for the consumer.
    """

    batch_size: int
    shuffle: bool = False
    seed: int = 0
    columns: tuple[str, ...] | None = None
    drop_last: bool = False
    rank: int = 0
    world_size: int = 1
    num_threads: int = 0  # 0: default_io_threads()
    prefetch: int = 4
    window: int = 64
    memory: int | None = None
    read_ahead: int = 128 * MiB
    device: str | None = None
    pin_memory: bool = False
    transform: Callable[[dict[str, Any]], Any] | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BigstoreError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise BigstoreError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.prefetch < 1:
            raise BigstoreError(f"prefetch must be >= 1, got {self.prefetch}")

    @property
    def threads(self) -> int:
        return self.num_threads or default_io_threads()


def default_rank_world() -> tuple[int, int]:
    """(rank, world size) from torch.distributed when initialised, else RANK / WORLD_SIZE."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return int(dist.get_rank()), int(dist.get_world_size())
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def order_spec(ds: Any, config: LoaderConfig, epoch: int = 0) -> OrderSpec:
    """The order of ``ds`` under ``config``: shared by the loader and the torch adapter."""
    return OrderSpec(
        len(ds), ds.layout.chunk_rows, config.seed, epoch, config.shuffle, config.window
    )


def make_config(batch_size: int, **options: Any) -> LoaderConfig:
    """A LoaderConfig from ``ds.loader``'s keywords (rank/world default from the environment)."""
    rank, world = options.pop("rank", None), options.pop("world_size", None)
    if rank is None or world is None:
        r, w = default_rank_world()
        rank = r if rank is None else rank
        world = w if world is None else world
    cols = options.pop("columns", None)
    if isinstance(cols, str):
        cols = (cols,)
    memory = options.pop("memory", None)
    read_ahead = options.pop("read_ahead", LoaderConfig.read_ahead)
    unknown = set(options) - set(LoaderConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown loader option(s): {sorted(unknown)}")
    return LoaderConfig(
        batch_size=batch_size,
        rank=int(rank),
        world_size=int(world),
        columns=tuple(cols) if cols is not None else None,
        memory=parse_bytes(memory) if memory is not None else None,
        read_ahead=parse_bytes(read_ahead),
        **options,
    )


class EpochState:
    """Where an epoch stands: the order's inputs, earlier splits, batches of the current one."""

    def __init__(self, spec: OrderSpec, split: Split) -> None:
        self.spec = spec
        self.split = split
        self.history: list[Level] = []
        self.batches = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "num_samples": self.spec.num_rows,
            "seed": self.spec.seed,
            "epoch": self.spec.epoch,
            "shuffle": self.spec.shuffle,
            "window": self.spec.window,
            "history": [[*lv.split.to_list(), lv.batches] for lv in self.history],
            "split": self.split.to_list(),
            "batches": self.batches,
        }

    def load(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise BigstoreError(f"unknown loader state version {state.get('version')!r}")
        if int(state["num_samples"]) != self.spec.num_rows:
            raise ShapeError(
                f"the state is for a dataset of {state['num_samples']} samples; this one has "
                f"{self.spec.num_rows} (was it appended to?)"
            )
        self.spec = replace(
            self.spec,
            seed=int(state["seed"]),
            epoch=int(state["epoch"]),
            shuffle=bool(state["shuffle"]),
            window=int(state["window"]),
        )
        history = [Level(Split.from_list(v[:4]), int(v[4])) for v in state["history"]]
        saved = Split.from_list(state["split"])
        if saved == self.split:  # same split: carry on exactly where it stopped
            self.history, self.batches = history, int(state["batches"])
        else:  # elastic: what was not delivered is split again
            self.history, self.batches = [*history, Level(saved, int(state["batches"]))], 0

    def new_epoch(self, epoch: int) -> None:
        self.spec = replace(self.spec, epoch=epoch)
        self.history, self.batches = [], 0


def batch_samples(
    order: Order, runs: np.ndarray[Any, Any], batch: int, first: int, count: int
) -> Iterator[np.ndarray[Any, Any]]:
    """Sample ids of batches ``first .. count-1`` of a consumer whose stream is ``runs``."""
    total = int(runs[:, 1].sum()) if len(runs) else 0
    for j in range(first, count):
        yield order.samples(sub_stream(runs, j * batch, min((j + 1) * batch, total)))


def worker_batches(
    spec: OrderSpec, history: list[Level], split: Split, batches: int, rank: int, worker: int
) -> tuple[np.ndarray[Any, Any], int, int]:
    """(stream runs, first batch to deliver, batch count) for one consumer."""
    runs, count = consumer_stream(spec.num_rows, history, split, rank, worker)
    if split.workers == 1:
        return runs, min(batches, count), count
    from .order import remaining_stream, stream_len

    base = np.array([[0, spec.num_rows]], np.int64)
    for lv in history:
        base = remaining_stream(base, lv)
    _, counts, _ = consumer_spans(stream_len(base), split)
    K = split.workers
    taken = consumed_per_worker(batches, counts[rank * K : (rank + 1) * K])
    return runs, int(taken[worker]), count


def prefetch_config(ds: Any, cfg: LoaderConfig, columns: list[Any]) -> PrefetchConfig:
    slot = max(1, ChunkPools.slot_bytes(ds.layout, columns))
    memory = cfg.memory if cfg.memory is not None else max(256 * MiB, 4 * cfg.window * slot)
    n_slots = max(2, memory // slot)
    return PrefetchConfig(n_slots, cfg.prefetch, cfg.read_ahead, cfg.threads)


def make_prefetcher(
    ds: Any,
    cfg: LoaderConfig,
    columns: list[Any],
    order: Order,
    runs: np.ndarray[Any, Any],
    batch: int,
    first: int,
    count: int,
    alloc: Callable[[tuple[int, ...], np.dtype[Any]], Any] | None = None,
) -> Any:
    """The batch producer for one consumer: rows gathered straight from mapped shards when the
    dataset allows it (local, uncompressed, fixed-shape columns), else chunk reads + gathers."""
    maps = mapped_arrays(ds, columns)
    if maps is not None:
        return MappedPrefetcher(
            ds.layout, columns, maps, order, runs, batch, first, count, cfg.prefetch,
            cfg.read_ahead, alloc, verify=ds.reader.verify,
        )
    samples = batch_samples(order, runs, batch, first, count)
    return Prefetcher(
        ds.layout,
        ChunkLoader(ds.layout, ds.reader),
        columns,
        samples,
        prefetch_config(ds, cfg, columns),
        alloc,
    )


def pinned_alloc(cfg: LoaderConfig) -> Callable[[tuple[int, ...], np.dtype[Any]], Any] | None:
    if not cfg.pin_memory:
        return None
    import torch

    if not torch.cuda.is_available():
        warnings.warn(
            "pin_memory=True but no CUDA device: batches stay in pageable memory", stacklevel=3
        )
        return None

    def alloc(shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
        t = torch.empty(shape, dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        return t.numpy()

    return alloc


def to_device(batch: dict[str, Any], cfg: LoaderConfig) -> dict[str, Any]:
    if cfg.device is None:
        return batch
    import torch

    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, np.ndarray):
            out[k] = torch.from_numpy(v).to(cfg.device, non_blocking=cfg.pin_memory)
        else:
            out[k] = v
    return out


class Loader:
    """Iterate ``ds`` in batches: see ``Dataset.loader`` and :class:`LoaderConfig`.

    ``for batch in loader`` runs the current epoch from where it stands (its start, or a loaded
    state); a completed pass moves the loader to the next epoch. Batches are dicts of fresh
    numpy arrays (torch tensors when ``device`` is set; lists for variable-length columns),
    owned by the caller.
    """

    def __init__(self, ds: Any, batch_size: int, **options: Any) -> None:
        self.ds = ds
        self.config = make_config(batch_size, **options)
        self.columns = ds.select(self.config.columns)
        spec = order_spec(ds, self.config)
        split = Split(self.config.world_size, 1, batch_size, self.config.drop_last)
        self._state = EpochState(spec, split)
        self._active: Any = None

    # -- epochs and state ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._state.spec.epoch

    def set_epoch(self, epoch: int) -> None:
        self._close()
        self._state.new_epoch(int(epoch))

    def state_dict(self) -> dict[str, Any]:
        """A few integers: continue with ``load_state_dict`` (any world size)."""
        return self._state.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._close()
        self._state.load(state)

    def __len__(self) -> int:
        """Batches this rank delivers in the rest of the current epoch."""
        _, first, count = self._plan()
        return count - first

    def _plan(self) -> tuple[np.ndarray[Any, Any], int, int]:
        st = self._state
        return worker_batches(st.spec, st.history, st.split, st.batches, self.config.rank, 0)

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        self._close()
        runs, first, count = self._plan()
        st = self._state
        order = Order(st.spec)
        pf = make_prefetcher(
            self.ds, self.config, self.columns, order, runs, st.split.batch, first, count,
            pinned_alloc(self.config),
        )
        self._active = pf
        return self._deliver(pf, count - first)

    def _deliver(self, pf: Any, n: int) -> Iterator[Any]:
        try:
            for _ in range(n):
                batch = decode_batch(self.columns, next(pf), self.config.device)
                self._state.batches += 1  # counted when handed over: never lost, never repeated
                out = to_device(batch, self.config)
                yield self.config.transform(out) if self.config.transform else out
            self._state.new_epoch(self._state.spec.epoch + 1)
        finally:
            pf.close()
            if self._active is pf:
                self._active = None

    def _close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None
