"""``bigstore.offload``: run a model whose weights exceed device memory, paging them from a store.

How it works (details in each module):

- :mod:`._units` groups parameters into paging units (each block of the repeated layer list;
  the embedding and head as units of their own; tied weights merged) - pure inspection.
- :mod:`bigstore.plan.schedule` holds the pure planners: buffer layout, the recorded execution
  order, which units stay resident for good, which to evict (farthest next use first).
- :mod:`._pager` executes them: loads ahead of use on a worker thread, evicts lazily, keeps
  the budget (its accounting is asserted on every allocation).
- :mod:`bigstore.io.device` fills buffers through the chunk reader: straight into RAM on CPU;
  pinned ring, copy stream and events on CUDA.

Hooks: a pre-forward hook on each unit's module pins the unit (loading it if needed), the
post-forward hook unpins it. The root module's ``forward`` is wrapped: one pass at a time (a
lock serialises threads calling the model), and a ``finally`` that closes the pass whatever
ends it - an exception or a ``KeyboardInterrupt`` (torch runs ``always_call`` hooks for
``Exception`` only) - so the handle keeps working after Ctrl-C. While the root module runs, the
*guard* watches the ops that receive an offloaded parameter (the parameters are a subclass
whose ``__torch_function__`` reports them; other ops pay nothing): an op reading a parameter
outside its module's forward (a head tied to the embedding applied as ``x @ emb.weight.T``,
say) loads and pins that unit for the rest of the calling module's forward, and the recorded
order lets the next pass prefetch it. So a weight is never read while absent: outputs are those
of the resident model, bit for bit. The model is put in eval mode while offloaded (dropout off).
"""

from __future__ import annotations

import functools
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

from ..config import HOST_FRACTION, OffloadConfig, ReadConfig, available_memory, parse_bytes
from ..errors import BigstoreError, BudgetError, DTypeError, MissingTensorError, ShapeError
from ..format.safetensors import open_weights
from ..io import CpuFiller, Filler, get_executor, make_filler
from ..plan.schedule import plan_layout
from ..store import CachedStore, Store
from ._pager import Pager, PagerStats, PassBytes
from ._units import (
    Unit,
    UnitSpec,
    Weight,
    discover_units,
    model_buffers,
    skeleton,
    split_vectors,
    unique_state_dict,
)
from .reader import TensorStore

__all__ = ["OffloadConfig", "OffloadedModel", "offload", "skeleton", "unique_state_dict"]


# Metadata reads never touch a tensor's values: the guard lets them through without paging.
_META_FUNCS = frozenset(
    [getattr(torch._C.TensorBase, n).__get__ for n in (
        "shape", "dtype", "device", "requires_grad", "is_cuda", "is_meta", "layout", "ndim",
        "is_leaf",
    )]
    + [torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.stride,
       torch.Tensor.element_size, torch.Tensor.is_floating_point, torch.Tensor.__len__,
       torch.Tensor.requires_grad_]
)


class _Guard:
    """While a pass runs, on the thread running it: an op that reads an offloaded parameter
    whose unit is not pinned pages that unit in first (:class:`_Paged` reports the reads)."""

    def __init__(self) -> None:
        self.pager: Pager | None = None  # set once the pager exists (it takes the parameters)
        self.thread: int | None = None  # the thread running a pass, while one runs

    def read(self, unit: int) -> None:
        pager = self.pager
        if self.thread == threading.get_ident() and pager is not None and not pager.busy:
            pager.demand(unit)


class _Paged(nn.Parameter):
    """An offloaded weight: its ``.data`` points into its unit's buffer while the unit is
    resident, at a placeholder otherwise. Every op that receives it tells the guard first.
    Only ops on these parameters pay for the check (~390 calls a GPT-2-medium pass against
    ~2,000 ops): a torch-function mode on every op had cost ~0.011 s of a 0.17 s cold int4
    CPU pass."""

    _guard: _Guard | None = None  # (a copy of the parameter made outside offload has none)
    _unit: int = -1

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in _META_FUNCS:
            for a in (*args, *kwargs.values()):
                if isinstance(a, _Paged):
                    a._read()
                elif isinstance(a, list | tuple):
                    for b in a:
                        if isinstance(b, _Paged):
                            b._read()
        with torch._C.DisableTorchFunctionSubclass():  # results are plain tensors
            return func(*args, **kwargs)

    def _read(self) -> None:
        if self._guard is not None:
            self._guard.read(self._unit)


class OffloadedModel:
    """A model whose weights are paged from a store. Call it (or any model method) as usual.

    ``.module`` is the model itself (an ``nn.Module``). Closing (``close()`` or leaving a
    ``with`` block) removes every hook, restores the model's original parameters and buffers,
    and frees all device buffers, staging memory and worker threads.
    """

    def __init__(
        self, module: nn.Module, pager: Pager, filler: Filler, ts: TensorStore,
        config: OffloadConfig, restore: list[tuple[dict[str, Any], str, Any]],
        handles: list[Any], undo: list[Callable[[], None]],
    ) -> None:
        self.module = module
        self.pager = pager
        self.filler = filler
        self.tensor_store = ts
        self.config = config
        self._restore = restore
        self._handles = handles
        self._undo = undo
        self.closed = False

    def _closed_error(self) -> BigstoreError:
        return BigstoreError(
            "this offloaded model has been closed (its module is restored to what it was "
            "before offload(); offload it again to run it)"
        )

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.closed:
            raise self._closed_error()
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_") or name in ("module", "pager", "filler", "closed"):
            raise AttributeError(name)
        if self.closed:
            raise self._closed_error()
        return getattr(self.module, name)

    def residency(self) -> list[dict[str, Any]]:
        """Where each unit lives now (``device``, ``host`` or ``storage``), its planned tier,
        and its size."""
        out = []
        for st in self.pager.units:
            where = "device" if st.loaded else "host" if st.host is not None else "storage"
            out.append({"unit": st.unit.name, "nbytes": st.nbytes, "now": where,
                        "plan": self.pager.tiers.tier(st.unit.index)})
        return out

    @property
    def last_pass(self) -> PassBytes:
        """Bytes the last complete forward pass took from storage, from the host tier, and
        found already on the device."""
        return self.pager.stats.last_pass

    def set_budgets(self, budget: int | str | None = None,
                    host_budget: int | str | None = None) -> None:
        """Change the device and/or host budget; the units are placed again at once."""
        if self.closed:
            raise self._closed_error()
        self.pager.replan(
            None if budget is None else parse_bytes(budget),
            None if host_budget is None else parse_bytes(host_budget),
        )

    @property
    def units(self) -> list[Unit]:
        return [s.unit for s in self.pager.units]

    @property
    def stats(self) -> PagerStats:
        return self.pager.stats

    @property
    def bytes_read(self) -> int:
        return self.filler.bytes_read

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for h in self._handles:
            h.remove()
        self.pager.close()
        self.filler.close()
        for table, key, original in reversed(self._restore):
            table[key] = original
        self._restore.clear()
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        self.tensor_store.close()

    def __enter__(self) -> OffloadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        s = self.pager.stats
        return (
            f"OffloadedModel({type(self.module).__name__}, {len(self.pager.units)} units, "
            f"budget={self.pager.budget}, resident={s.resident_bytes}, closed={self.closed})"
        )


def _resolve(ts: TensorStore, w: Weight) -> Weight:
    """The weight with the name the store holds it under first (tied weights are stored once)."""
    stored = [n for n in w.names if n in ts]
    if not stored:
        names = " or ".join(repr(n) for n in w.names)
        raise MissingTensorError(f"no tensor {names} in {ts.store.url}")
    meta = ts.meta(stored[0])
    if tuple(meta.shape) != w.shape:
        raise ShapeError(
            f"tensor {stored[0]!r}: the store holds shape {tuple(meta.shape)}, "
            f"the model expects {w.shape}"
        )
    if meta.dtype.torch != w.dtype:
        raise DTypeError(
            f"tensor {stored[0]!r}: the store holds {meta.dtype.name}, the model expects "
            f"{str(w.dtype).removeprefix('torch.')}"
        )
    return Weight((stored[0], *(n for n in w.names if n != stored[0])), w.shape, w.dtype)


def _placeholder(w: Weight, device: torch.device) -> torch.Tensor:
    # One element broadcast to the full shape: shape, dtype and device are right (models read
    # them, e.g. ``model.device``) for a few bytes. NaN makes any unguarded read loud.
    fill = float("nan") if w.dtype.is_floating_point or w.dtype.is_complex else 0
    return torch.full((), fill, dtype=w.dtype, device=device).expand(w.shape)


def _install_vectors(model: nn.Module, ts: TensorStore, device: torch.device,
                     vectors: Sequence[Weight], restore: list[tuple[dict[str, Any], str, Any]],
                     ) -> int:
    """Read ``vectors`` once and point their parameters (every name of a tied one) at them."""
    if not vectors:
        return 0
    values = ts.load([w.name for w in vectors], device=device, mmap=False)
    for w in vectors:
        _install_param(model, w, nn.Parameter(values[w.name], requires_grad=False), restore)
    return sum(w.nbytes for w in vectors)


def _install_param(model: nn.Module, w: Weight, p: nn.Parameter,
                   restore: list[tuple[dict[str, Any], str, Any]]) -> None:
    """``p`` under every name of ``w`` (one object, so a tied weight stays tied)."""
    for name in w.names:
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        restore.append((mod._parameters, attr, mod._parameters[attr]))
        mod._parameters[attr] = p


def _install_buffers(
    model: nn.Module, ts: TensorStore, device: torch.device,
    restore: list[tuple[dict[str, Any], str, Any]],
) -> int:
    """Buffers stay resident: persistent ones from the store, the others from the skeleton."""
    values: dict[int, torch.Tensor] = {}
    total = 0
    for name, (buf, persistent) in model_buffers(model).items():
        if persistent:
            if name not in ts:
                raise MissingTensorError(
                    f"no tensor {name!r} (a persistent buffer) in {ts.store.url}"
                )
            meta = ts.meta(name)
            if tuple(meta.shape) != tuple(buf.shape):
                raise ShapeError(
                    f"buffer {name!r}: the store holds shape {tuple(meta.shape)}, "
                    f"the model expects {tuple(buf.shape)}"
                )
            value = ts.load([name], device=device)[name]
        elif buf.device.type == "meta":
            raise BigstoreError(
                f"buffer {name!r} is not saved with the weights and the skeleton has no value "
                "for it (built under torch.device('meta')?): build the model inside "
                "bigstore.skeleton(), which keeps buffers real"
            )
        else:
            value = buf.to(device)
        values[id(buf)] = value
        total += value.numel() * value.element_size()
    for mod in model.modules():
        for bname, old in list(mod._buffers.items()):
            if old is not None and id(old) in values:
                restore.append((mod._buffers, bname, old))
                mod._buffers[bname] = values[id(old)]
    return total


def offload(
    model: nn.Module,
    url: str | os.PathLike[str] | Store,
    *,
    device: str | torch.device | None = None,
    budget: int | str = OffloadConfig.budget,
    host_budget: int | str | None = OffloadConfig.host_budget,
    prefetch: int = OffloadConfig.prefetch,
    storage_options: Mapping[str, Any] | None = None,
    units: UnitSpec = None,
    cache_dir: str | os.PathLike[str] | None = None,
    cache_bytes: int | str = OffloadConfig.cache_bytes,
    drop_cache: bool = OffloadConfig.drop_cache,
    staging_bytes: int | str = OffloadConfig.staging_bytes,
    guard: bool = OffloadConfig.guard,
    embedding_rows: bool = OffloadConfig.embedding_rows,
    read_config: ReadConfig | None = None,
    compute_threads: int | None = OffloadConfig.compute_threads,
) -> OffloadedModel:
    """Page ``model``'s weights from the store at ``url`` into ``device`` as its forward needs.

    ``model`` is usually a skeleton (see :func:`skeleton`): its parameters need no values.
    At most ``budget`` bytes of weights are resident on ``device`` at any time; ``host_budget``
    bytes of host RAM keep units between uses (None: "auto", see
    :class:`~bigstore.config.OffloadConfig`; 0: off), so later passes read no storage;
    ``prefetch`` units are read ahead in the order recorded on the first forward pass.
    ``units``: module names (or a predicate ``(name, module) -> bool``) whose subtrees are each
    paged as one unit; by default each block of the model's repeated layer list. The model is
    meant for inference: it is put in eval mode and its parameters are made
    ``requires_grad=False`` while offloaded. One forward pass runs at a time (calls from
    several threads wait for each other). A module can be offloaded once at a time.
    Returns an :class:`OffloadedModel`; close it to restore the plain module.
    """
    dev = torch.device(device if device is not None else
                       ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if any(m in _OFFLOADED for m in model.modules()):
        raise BigstoreError(
            f"this {type(model).__name__} (or a module inside it) is already offloaded: close "
            "that handle first (offloading it twice would leave placeholders behind)"
        )
    config = OffloadConfig(
        budget=parse_bytes(budget),
        host_budget=None if host_budget is None else parse_bytes(host_budget),
        prefetch=prefetch, staging_bytes=parse_bytes(staging_bytes),
        drop_cache=drop_cache, guard=guard, embedding_rows=embedding_rows,
        cache_dir=os.fspath(cache_dir) if cache_dir is not None else None,
        cache_bytes=parse_bytes(cache_bytes), compute_threads=compute_threads,
    )
    store = open_weights(url, storage_options)
    if config.cache_dir is not None and store.is_remote:
        store = CachedStore(store, config.cache_dir, config.cache_bytes)
    ts = TensorStore.open(store, config=read_config)
    restore: list[tuple[dict[str, Any], str, Any]] = []
    try:
        return _offload(model, ts, dev, config, units, restore)
    except BaseException:
        for table, key, original in reversed(restore):
            table[key] = original
        ts.close()
        raise


def _offload(
    model: nn.Module, ts: TensorStore, dev: torch.device, config: OffloadConfig,
    units_spec: UnitSpec, restore: list[tuple[dict[str, Any], str, Any]],
) -> OffloadedModel:
    found = discover_units(model, units_spec)
    units = [
        Unit(u.index, u.name, tuple(_resolve(ts, w) for w in u.weights), u.hook_modules)
        for u in found
    ]
    # before anything is allocated: documents the stored objects cannot back are refused
    ts.reader.check_backed([ts.meta(w.name) for u in units for w in u.weights])
    fixed = _install_buffers(model, ts, dev, restore)
    if fixed > config.budget:
        raise BudgetError(
            f"budget of {config.budget} bytes is smaller than the model's buffers ({fixed} bytes)"
        )
    vectors, units = split_vectors(units, config.budget - fixed)
    vector_bytes = _install_vectors(model, ts, dev, vectors, restore)
    fixed += vector_bytes
    for u in units:
        _, size = plan_layout([w.nbytes for w in u.weights], config.align)
        if size > config.budget - fixed:
            raise BudgetError(
                f"budget of {config.budget} bytes is too small for unit {u.name!r} "
                f"({size} bytes{f', plus {fixed} bytes of buffers and vectors' if fixed else ''}): "
                f"the budget must hold the largest unit"
            )
    # fresh parameters (meta tensors cannot be re-pointed at real memory); the same object
    # under every name of a tied weight, so it stays tied
    params: list[list[nn.Parameter]] = []
    guard = _Guard() if config.guard else None
    for u in units:
        ps = []
        for w in u.weights:
            if guard is None:
                p = nn.Parameter(_placeholder(w, dev), requires_grad=False)
            else:
                p = _Paged(_placeholder(w, dev), requires_grad=False)
                p._guard, p._unit = guard, u.index
            _install_param(model, w, p, restore)
            ps.append(p)
        params.append(ps)
    layouts = {w.name: ts.meta(w.name) for u in units for w in u.weights}
    max_row = max((lay.row_bytes for lay in layouts.values()), default=0)
    filler = make_filler(
        ts.reader, dev, background=config.prefetch > 0,
        drop_cache=config.drop_cache and ts.store.local_file("zarr.json") is not None,
        slots=max(2, config.prefetch + 1), slot_bytes=max(config.staging_bytes, max_row),
    )
    filler.bytes_read += vector_bytes  # read from storage too, once (no worker runs yet)
    host = config.host_budget
    if host is None:  # "auto": a share of the RAM available now, never more than the units
        host = min(sum(u.nbytes for u in units), int(HOST_FRACTION * available_memory()))
    pager = Pager(
        units, params, layouts, filler, budget=config.budget, host_budget=host,
        fixed_bytes=fixed, prefetch=config.prefetch, align=config.align,
    )
    if config.embedding_rows:
        pager.rows_units = frozenset(_embedding_units(model, units))
    undo: list[Callable[[], None]] = []
    was_training = model.training
    model.eval()

    def restore_mode() -> None:
        model.train(was_training)

    undo.append(restore_mode)
    # units whose fills decode (compressed or quantized chunks): CPU work beside the compute
    decoding = frozenset(
        u.index for u in units
        if dev.type == "cpu" and any(layouts[w.name].decoded for w in u.weights)
    )

    fill_jobs = FillJobs(_cores())

    def threads_now() -> int | None:
        """Torch threads for the pass starting now (None: leave them)."""
        busy = any(not pager.units[i].loaded and pager.units[i].host is None for i in decoding)
        threads = pass_threads(config.compute_threads, busy, _cores(), torch.get_num_threads(),
                               get_executor(ts.reader.config.threads).threads)
        if isinstance(filler, CpuFiller):
            filler.decode_jobs = fill_jobs.next(threads or torch.get_num_threads(), pager,
                                                busy)
        return threads

    if guard is not None:
        guard.pager = pager
    handles = _install_hooks(model, units, pager, guard, undo, threads_now)
    mods = list(model.modules())  # the model and everything inside it
    _OFFLOADED.update(mods)

    def forget() -> None:
        for mod in mods:
            _OFFLOADED.discard(mod)

    undo.append(forget)
    return OffloadedModel(model, pager, filler, ts, config, restore, handles, undo)


def _embedding_units(model: nn.Module, units: list[Unit]) -> list[int]:
    """Units that are one untied ``nn.Embedding`` weight read by that embedding alone: a
    lookup needs only some of its rows."""
    out = []
    for u in units:
        if len(u.weights) != 1 or len(u.weights[0].names) != 1 or len(u.hook_modules) != 1:
            continue
        mod = model.get_submodule(u.hook_modules[0]) if u.hook_modules[0] else model
        if (isinstance(mod, nn.Embedding) and mod.max_norm is None
                and u.weights[0].names[0] == f"{u.hook_modules[0]}.weight"):
            out.append(u.index)
    return out


# modules offloaded now (with everything inside them): offloading one twice is refused
_OFFLOADED: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def _foldable_input(_m: nn.Module, args: Any) -> Any:
    """A linear layer's input whose leading dimensions cannot be folded into one (a slice such
    as ``hidden[:, -1:, :]``, as every Hugging Face head receives) is copied into standard
    strides first. Otherwise torch's ``matmul`` folds it only for weights that require grad;
    offloaded weights do not, and it takes a ``bmm`` that copies the whole transposed weight
    each call (a 103 MB copy, 220 ms, per prefill of GPT-2-medium's head here; ~4 ms folded).
    The same ``mm`` then runs as in the resident model."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() < 3:
        return None
    sizes, strides = x.shape, x.stride()
    if all(strides[i] == strides[i + 1] * sizes[i + 1] for i in range(x.dim() - 2)):
        return None
    return (x.clone(memory_format=torch.contiguous_format), *args[1:])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: a steady pass that waited for its fills this share of its time is bound by its fills
#: (measured with one job, 2 cores: int4 and int8 passes waited 6-32% of theirs and ran as fast
#: as with the pool or faster; lossless ones 47-56%, and ran slower)
FILL_BOUND = 0.4


@dataclass
class FillJobs:
    """How many reads and decodes a CPU fill runs at once in passes that decode.

    The cores the pass leaves to decoding: more jobs than that only preempt the model's
    thread, and the pass waits for the model (a cold int4 pass on 2 cores: 0.172 -> 0.161 s
    median with one job instead of the pool's four, in one in-process A/B). Once a steady pass
    (its order known, no unit loaded on demand) waited for its fills ``FILL_BOUND`` of its
    time, the fills are the bound (a store whose chunks decode slowly: compressed ones), and
    from then on they get the pool.
    """

    cores: int
    widened: bool = False
    _demand: int = -1  # demand loads counted when the last pass began

    def next(self, torch_threads: int, pager: Pager, decoding: bool) -> int | None:
        """Jobs at once for the pass beginning now (None: the pool's bound)."""
        stats = pager.stats
        steady = (stats.passes >= 2 and not pager.schedule.provisional
                  and stats.demand_loads == self._demand)
        self._demand = stats.demand_loads
        if steady and stats.last_pass_waited_s >= FILL_BOUND * stats.last_pass_s:
            self.widened = True
        if self.widened or not decoding:
            return None
        return max(1, self.cores - torch_threads)


def pass_threads(setting: int | None, decoding: bool, cores: int, torch_threads: int,
                 decode_threads: int) -> int | None:
    """Torch intra-op threads for one CPU pass (None: leave torch's setting). ``setting`` as in
    :class:`~bigstore.config.OffloadConfig` ``compute_threads``; ``decoding``: the pass will
    decode units; ``decode_threads``: the reader pool's threads."""
    if setting == 0:
        return None
    if setting is not None:
        return setting if setting != torch_threads else None
    if not decoding:
        return None
    n = max(1, cores - min(decode_threads, max(1, cores // 2)))
    return n if n < torch_threads else None


def _install_hooks(
    model: nn.Module, units: list[Unit], pager: Pager, guard: _Guard | None,
    undo: list[Callable[[], None]], threads_now: Callable[[], int | None] = lambda: None,
) -> list[Any]:
    """Hooks on every unit's modules, and the root's ``forward`` wrapped to bracket a pass."""
    handles: list[Any] = []
    lock = threading.RLock()  # one pass at a time; re-entrant for nested calls of the root
    depth = 0
    root_units = [u.index for u in units if "" in u.hook_modules]
    had_own = "forward" in model.__dict__
    bound = model.forward

    @functools.wraps(bound)  # keeps the signature (generate() inspects it)
    def forward(*args: Any, **kwargs: Any) -> Any:
        nonlocal depth
        with lock:
            if depth:
                return bound(*args, **kwargs)
            depth = 1
            pager.begin_pass()
            pager.push_frame()
            threads = threads_now()
            before = torch.get_num_threads() if threads is not None else 0
            if threads is not None:
                torch.set_num_threads(threads)
            if guard is not None:
                guard.thread = threading.get_ident()
            try:
                for u in root_units:
                    pager.acquire(u)
                return bound(*args, **kwargs)
            finally:  # whatever ended the pass, KeyboardInterrupt included
                if threads is not None:
                    torch.set_num_threads(before)
                depth = 0
                for u in root_units:
                    pager.release(u)
                if guard is not None:
                    guard.thread = None
                pager.pop_frame()
                pager.end_pass()

    model.forward = forward

    def unwrap() -> None:
        if had_own:
            model.forward = bound
        else:
            del model.forward

    undo.append(unwrap)

    def unit_begin(u: int, _m: nn.Module, _a: Any) -> None:
        pager.acquire(u)
        pager.push_frame()

    def rows_begin(u: int, _m: nn.Module, args: Any) -> Any:
        """An embedding lookup: load only the looked-up rows, and look up in them."""
        ids = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if ids is not None and not ids.is_floating_point():
            pager.busy = True  # no guard work for these few ops
            try:
                uniq, inverse = torch.unique(ids, sorted=True, return_inverse=True)
            finally:
                pager.busy = False
            if pager.acquire_rows(u, uniq.cpu().numpy()):
                pager.push_frame()
                return (inverse.view(ids.shape), *args[1:])
        unit_begin(u, _m, args)
        return None

    def unit_end(u: int, _m: nn.Module, _a: Any, _o: Any) -> None:
        pager.pop_frame()
        pager.release(u)

    for mod in model.modules():
        if isinstance(mod, nn.Linear):
            handles.append(mod.register_forward_pre_hook(_foldable_input))
    for u in units:
        for name in u.hook_modules:
            if name == "":  # the root's own parameters: acquired by the wrapper above
                continue
            mod = model.get_submodule(name)
            begin = rows_begin if u.index in pager.rows_units else unit_begin
            handles.append(mod.register_forward_pre_hook(partial(begin, u.index)))
            handles.append(
                mod.register_forward_hook(partial(unit_end, u.index), always_call=True)
            )
    return handles
