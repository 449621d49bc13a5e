"""``ds.loader(...)``: a shuffled, sharded, resumable iterator of batches.

The order is :mod:`bigstore.plan.order`'s pure function of (seed, epoch, layout, split); the
reading is the prefetchers'. ``state_dict()`` counts batches *delivered* to the caller (never
batches merely prefetched), so a resumed loader continues with exactly the batches that were
not seen.

Iteration, as users know it from ``torch.utils.data.DataLoader``:

- each ``iter(loader)`` (each ``for`` loop) is a fresh pass from the loader's current state:
  the start of the epoch, a loaded state, or - after breaking out of a loop - the batch after
  the last one delivered (nothing is lost, nothing repeated). A pass that runs to the end moves
  the loader to the next epoch.
- only the newest iterator is live: an older one raises :class:`LoaderStateError` on its next
  ``next()`` instead of blocking; so do iterators running when ``load_state_dict`` or
  ``set_epoch`` is called (the state they would continue from has changed).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, TypedDict

import numpy as np

from ..config import LoaderConfig, MiB, PrefetchConfig, parse_bytes
from ..errors import BigstoreError, ShapeError
from ..io import StoppedError
from ..plan.order import (
    Level,
    Order,
    OrderSpec,
    Split,
    consumed_per_worker,
    consumer_spans,
    consumer_stream,
    remaining_stream,
    stream_len,
    sub_stream,
)
from ._chunks import ChunkPools
from ._kinds import decode_batch
from ._mapped import MappedPrefetcher
from ._prefetch import Prefetcher

__all__ = [
    "Loader", "LoaderConfig", "LoaderOptions", "LoaderStateError", "default_rank_world",
    "make_config",
]

STATE_VERSION = 1


class LoaderStateError(BigstoreError, RuntimeError):
    """An iterator of a loader whose state moved on (a newer ``iter()``, ``load_state_dict``,
    ``set_epoch``): call ``iter(loader)`` again."""


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


def resolve_config(config: LoaderConfig) -> LoaderConfig:
    """``config`` with rank and world size filled in from the environment when not given."""
    if config.rank is not None and config.world_size is not None:
        return config
    r, w = default_rank_world()
    return replace(
        config,
        rank=r if config.rank is None else config.rank,
        world_size=w if config.world_size is None else config.world_size,
    )


class LoaderOptions(TypedDict, total=False):
    """The keywords of ``ds.loader`` / ``ds.torch_dataset`` (see :func:`make_config`)."""

    shuffle: bool
    seed: int
    columns: str | list[str] | tuple[str, ...] | None
    drop_last: bool
    rank: int | None
    world_size: int | None
    num_threads: int
    prefetch: int
    window: int
    memory: int | str | None
    read_ahead: int | str
    device: str | None
    pin_memory: bool
    transform: Callable[[dict[str, Any]], Any] | None


def make_config(
    batch_size: int,
    *,
    shuffle: bool = LoaderConfig.shuffle,
    seed: int = LoaderConfig.seed,
    columns: str | list[str] | tuple[str, ...] | None = None,
    drop_last: bool = LoaderConfig.drop_last,
    rank: int | None = None,
    world_size: int | None = None,
    num_threads: int = LoaderConfig.num_threads,
    prefetch: int = LoaderConfig.prefetch,
    window: int = LoaderConfig.window,
    memory: int | str | None = None,
    read_ahead: int | str = LoaderConfig.read_ahead,
    device: str | None = None,
    pin_memory: bool = LoaderConfig.pin_memory,
    transform: Callable[[dict[str, Any]], Any] | None = None,
) -> LoaderConfig:
    """A LoaderConfig from ``ds.loader``'s keywords (byte sizes may be strings: "64MiB")."""
    cols = (columns,) if isinstance(columns, str) else columns
    return resolve_config(LoaderConfig(
        batch_size=batch_size, shuffle=shuffle, seed=seed,
        columns=tuple(cols) if cols is not None else None, drop_last=drop_last, rank=rank,
        world_size=world_size, num_threads=num_threads, prefetch=prefetch, window=window,
        memory=parse_bytes(memory) if memory is not None else None,
        read_ahead=parse_bytes(read_ahead), device=device, pin_memory=pin_memory,
        transform=transform,
    ))


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
    ds.check_backed(columns)  # (done by the callers already: cached) before slots are sized
    maps = ds.mapped(columns)
    if maps is not None:
        return MappedPrefetcher(
            ds.layout, columns, maps, order, runs, batch, first, count, cfg.prefetch,
            cfg.read_ahead, alloc, verify=ds.reader.verify,
        )
    samples = batch_samples(order, runs, batch, first, count)
    return Prefetcher(
        ds.layout,
        ds.reader,
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
    """Iterate ``ds`` in batches: see ``Dataset.loader``, :class:`LoaderConfig` and the module
    docstring for what ``iter()``, ``state_dict`` and ``set_epoch`` do.

    Batches are dicts of fresh numpy arrays (torch tensors when ``device`` is set; lists for
    variable-length columns), owned by the caller.
    """

    def __init__(self, ds: Any, config: LoaderConfig) -> None:
        self.ds = ds
        self.config = resolve_config(config)
        assert self.config.world_size is not None and self.config.rank is not None
        self.columns = ds.select(self.config.columns)
        spec = order_spec(ds, self.config)
        split = Split(self.config.world_size, 1, self.config.batch_size, self.config.drop_last)
        self._state = EpochState(spec, split)
        self._active: Any = None
        self._generation = 0  # bumped whenever live iterators must stop

    # -- epochs and state ---------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self._state.spec.epoch

    def set_epoch(self, epoch: int) -> None:
        self._invalidate()
        self._state.new_epoch(int(epoch))

    def state_dict(self) -> dict[str, Any]:
        """A few integers: continue with ``load_state_dict`` (any world size)."""
        return self._state.to_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._invalidate()
        self._state.load(state)

    def __len__(self) -> int:
        """Batches this rank delivers in the rest of the current epoch."""
        _, first, count = self._plan()
        return count - first

    def _plan(self) -> tuple[np.ndarray[Any, Any], int, int]:
        st = self._state
        rank = self.config.rank
        assert rank is not None
        return worker_batches(st.spec, st.history, st.split, st.batches, rank, 0)

    # -- iteration ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Any]:
        self._invalidate()
        self.ds.check_backed(self.columns)  # before the order is sized from the document
        runs, first, count = self._plan()
        st = self._state
        pf = make_prefetcher(
            self.ds, self.config, self.columns, Order(st.spec), runs, st.split.batch, first,
            count, pinned_alloc(self.config),
        )
        self._active = pf
        return self._deliver(pf, count - first, self._generation)

    def _deliver(self, pf: Any, n: int, generation: int) -> Iterator[Any]:
        try:
            for _ in range(n):
                self._check(generation)
                try:
                    raw = next(pf)
                except StoppedError:  # stopped by another thread's iter()/load_state_dict()
                    self._check(generation)
                    raise
                batch = decode_batch(self.columns, raw, self.config.device)
                self._check(generation)
                out = to_device(batch, self.config)
                out = self.config.transform(out) if self.config.transform else out
                # counted when handed over (a transform that raised handed nothing over):
                # never lost, never repeated
                self._state.batches += 1
                yield out
            self._check(generation)
            self._state.new_epoch(self._state.spec.epoch + 1)
        finally:
            pf.close()
            if self._active is pf:
                self._active = None

    def _check(self, generation: int) -> None:
        if generation != self._generation:
            raise LoaderStateError(
                "this iterator is no longer live: iter() was called again on its loader, or "
                "load_state_dict()/set_epoch() changed the state it continued from; call "
                "iter(loader) for a pass from the current state"
            )

    def _invalidate(self) -> None:
        self._generation += 1
        if self._active is not None:
            self._active.close()
            self._active = None
