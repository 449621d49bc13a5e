"""``load(url, group=...)``: N torch.distributed ranks load one store, each byte read once.

Every rank of ``group`` calls ``bigstore.load(url, group=group)`` with the same arguments (a
collective call). Rank 0 reads the root document and broadcasts it; each rank then reads a
disjoint ~1/N of the chunks, balanced by bytes (:mod:`bigstore.plan.ranks`), through the
:class:`~bigstore.io.ChunkReader` (checked against their crc32c) straight into one flat buffer,
and the ranks broadcast their regions to each other over the group. So shared storage (NFS,
Lustre, object storage) serves each byte once per job instead of once per rank, and every rank
ends with identical tensors. Reads overlap the exchange: rank r's region goes out while later
ranks are still reading.

- gloo (CPU) groups exchange host memory; tensors come back on the CPU (moved to ``device``
  when asked). NCCL groups exchange on the current CUDA device; tensors come back there.
- The tensors are views of one buffer per rank (it lives as long as any of them): never a
  memory map, so ``mmap`` does not apply.
- A rank whose reads fail tells the others before its turn to broadcast: every rank raises
  (that rank its own error, the others a :class:`DistributedError` naming it); nobody hangs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from ..config import EXCHANGE_BYTES, ReadConfig
from ..errors import DistributedError
from ..format import ROOT_KEY
from ..io import RowRequest
from ..plan.ranks import GroupPlan, TensorRows, plan_group_load
from ..progress import progress_bar
from ..store import Buffer, Store, WrappedStore, open_store
from ._arrays import from_storage_array
from .reader import TensorStore

__all__ = ["load_group"]


class _Primed(WrappedStore):
    """``store`` with its root document already in hand (broadcast by rank 0); read-only."""

    def __init__(self, store: Store, root: bytes, version: str | None) -> None:
        super().__init__(store)
        self.root, self.root_version = root, version

    def get(self, key: str) -> Buffer:
        return self.root if key == ROOT_KEY else self.inner.get(key)

    def version(self, key: str) -> str | None:
        return self.root_version if key == ROOT_KEY else self.inner.version(key)

    def exists(self, key: str) -> bool:
        return key == ROOT_KEY or self.inner.exists(key)

    def size(self, key: str) -> int:
        return len(self.root) if key == ROOT_KEY else self.inner.size(key)

    # the inner store's fast paths (concurrent gets, preadv) for everything but the root
    def get_many(self, keys: Sequence[str]) -> list[Buffer]:
        return [self.root if k == ROOT_KEY else b for k, b in
                zip(keys, self.inner.get_many(keys), strict=True)]

    def read_into(self, key: str, offset: int, outs: Sequence[memoryview]) -> None:
        self.inner.read_into(key, offset, outs)

    def put(self, key: str, data: Buffer | Sequence[Buffer], *, writeback: bool = False) -> None:
        raise DistributedError(f"{self.url}: a store opened for a multi-rank load is read-only")

    def delete(self, key: str) -> None:
        self.put(key, b"")

    def delete_prefix(self, prefix: str) -> None:
        self.put(prefix, b"")

    def put_if_absent(self, key: str, data: Buffer) -> bool:
        self.put(key, data)
        return False

    def replace_if(self, key: str, data: Buffer, token: str) -> str | None:
        self.put(key, data)
        return None

    def delete_if(self, key: str, token: str) -> bool:
        self.put(key, b"")
        return False


def _src(group: Any, r: int) -> int:
    """The global rank of ``group``'s rank ``r`` (what ``broadcast(src=)`` wants)."""
    import torch.distributed as dist

    if group is None or group is dist.group.WORLD:
        return r
    return int(dist.get_global_rank(group, r))


def _open(url: str | os.PathLike[str] | Store, storage_options: Mapping[str, Any] | None,
          config: ReadConfig | None, group: Any, rank: int) -> TensorStore:
    """Every rank's TensorStore, from one read of the root (by rank 0)."""
    import torch.distributed as dist

    store = open_store(url, storage_options)
    msg: list[Any] = [None, None, None]
    if rank == 0:
        try:
            msg[0] = bytes(memoryview(store.get(ROOT_KEY)).cast("B"))
            try:
                msg[1] = store.version(ROOT_KEY)
            except FileNotFoundError:
                msg[1] = None
        except Exception as e:  # every rank raises it: nobody waits for rank 0 forever
            msg[2] = e
    dist.broadcast_object_list(msg, src=_src(group, 0), group=group)
    if msg[2] is not None:
        raise msg[2]
    return TensorStore.open(_Primed(store, msg[0], msg[1]), config=config)


def load_group(
    url: str | os.PathLike[str] | Store,
    *,
    group: Any,
    device: str | torch.device = "cpu",
    names: Sequence[str] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    config: ReadConfig | None = None,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``bigstore.load(url, group=group)``: see the module docstring."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise DistributedError(
            "load(..., group=...) needs torch.distributed initialised on every rank "
            "(torch.distributed.init_process_group)"
        )
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    on_device = dist.get_backend(group) == "nccl"
    with _open(url, storage_options, config, group, rank) as ts:
        names = list(ts) if names is None else list(names)
        metas = [ts.meta(n) for n in names]
        plan = plan_group_load(
            [TensorRows(m.name, m.rows, m.chunk_rows, m.row_bytes) for m in metas], world)
        bar = progress_bar(progress, f"load {ts.store.url} (rank {rank}/{world})", plan.nbytes)
        try:
            arena = _exchange(ts, plan, group, rank, world, on_device, bar)
        finally:
            if bar is not None:
                bar.close()
    out: dict[str, torch.Tensor] = {}
    dev = torch.device(device)
    for m in metas:
        off = plan.offsets[m.name]
        raw = arena[off : off + m.nbytes]
        if on_device:
            t = _device_view(raw, m.dtype, m.shape)
        else:
            t = from_storage_array(raw.numpy().view(m.dtype.storage).reshape(m.shape), m.dtype)
            if dev.type != "cpu":
                t = t.to(dev)
        out[m.name] = t
    return out


def _device_view(raw: torch.Tensor, dtype: Any, shape: tuple[int, ...]) -> torch.Tensor:
    if dtype.torch is None:
        raise DistributedError(f"this torch build has no dtype {dtype.name}")
    return raw.view(dtype.torch).reshape(shape)


def _exchange(ts: TensorStore, plan: GroupPlan, group: Any, rank: int, world: int,
              on_device: bool, bar: Any) -> torch.Tensor:
    """Read this rank's region (in the background), broadcast every region in rank order."""
    import torch.distributed as dist

    mine = plan.ranks[rank]
    # Plain memory, not io.buffers.host_buffer: that one asks for huge pages, and with THP
    # defrag=madvise every first touch (here: gloo receiving) compacts memory synchronously,
    # which made a 4-rank exchange 4x slower on the test VM.
    if on_device:
        arena = torch.empty(plan.nbytes, dtype=torch.uint8,
                            device=torch.device("cuda", torch.cuda.current_device()))
        host = torch.empty(mine.stop - mine.start, dtype=torch.uint8, pin_memory=True)
        base = mine.start
    else:
        arena = host = torch.empty(plan.nbytes, dtype=torch.uint8)
        base = 0
    view = host.numpy()
    requests = [RowRequest(ts.meta(p.name), p.start, p.stop,
                           memoryview(view[p.offset - base : p.offset - base + p.nbytes]))
                for p in mine.pieces]
    with ThreadPoolExecutor(1, thread_name_prefix="bigstore-group-read") as pool:
        reading: Future[None] = pool.submit(ts.reader.read_rows, requests, progress=bar)
        failed = []
        status_dev = arena.device
        for r in range(world):
            a, b = plan.ranks[r].start, plan.ranks[r].stop
            status = torch.zeros(1, dtype=torch.int32, device=status_dev)
            if r == rank:
                ok = reading.exception() is None
                if ok and on_device:
                    arena[a:b].copy_(host)
                status[0] = 1 if ok else 2
            dist.broadcast(status, src=_src(group, r), group=group)
            if int(status.item()) != 1:
                failed.append(r)
                continue
            for lo in range(a, b, EXCHANGE_BYTES):
                hi = min(b, lo + EXCHANGE_BYTES)
                dist.broadcast(arena[lo:hi], src=_src(group, r), group=group)
                if bar is not None and r != rank:
                    bar.update(hi - lo)
        reading.result()  # this rank's own read error, if it had one
    if failed:
        raise DistributedError(
            f"rank(s) {failed} of the group could not read their part of {ts.store.url} "
            "(see their errors); nothing was loaded"
        )
    return arena
