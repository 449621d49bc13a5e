"""The pager: which units are resident, loading ahead of use, evicting under the byte budget.

Every decision is made on the thread running the model (the hooks call in); worker threads
only fill buffers they were handed, and report through futures. So the unit table needs no
lock, and what the accounting says is what is allocated.

A unit's lifecycle: absent -> in flight (buffer allocated and counted, fill running) -> loaded
(parameters point into its buffer) -> absent again on eviction (parameters point to a tiny
placeholder). A unit is never evicted while pinned (between its hook module's pre- and
post-forward hooks, or while a guarded op outside that module uses it).

Tiers (:mod:`bigstore.plan.residency`): after each recorded pass the pager plans which units
stay on the device for good and which keep a host copy (host RAM, ``host_budget``) between
uses; a fill of a unit with a host copy reads nothing from storage. Until the first pass is
recorded, host copies are kept first come, first served while the host budget allows.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BudgetError
from ..format import ArrayLayout
from ..io import Filled, Filler, FillRequest, HostCopy, Staged
from ..plan.residency import Tiers, plan_tiers
from ..plan.schedule import NEVER, Schedule, choose_victims, plan_layout
from ._units import Unit

__all__ = ["PassBytes", "Pager", "PagerStats", "ROWS_WORTH"]

#: rows are loaded instead of the whole unit only when they are at most 1/ROWS_WORTH of it
ROWS_WORTH = 2


@dataclass
class PassBytes:
    """Where the bytes of the units one pass used came from."""

    storage: int = 0  # read from the store (disk, page cache, object storage)
    host: int = 0  # copied from the host tier
    resident: int = 0  # already on the device

    def to_dict(self) -> dict[str, int]:
        return {"storage": self.storage, "host": self.host, "resident": self.resident}


@dataclass
class PagerStats:
    """Counters since the pager started (bytes are device-buffer bytes, padding included)."""

    loads: int = 0
    evictions: int = 0
    demand_loads: int = 0  # loads the forward pass had to wait for without any prefetch
    staged_loads: int = 0  # loads whose stored bytes had been read ahead into staging
    waited_s: float = 0.0  # seconds the model's thread waited for fills, all passes
    last_pass_s: float = 0.0  # how long the last completed pass took
    last_pass_waited_s: float = 0.0  # of which it waited for fills
    bytes_loaded: int = 0
    resident_bytes: int = 0
    peak_resident_bytes: int = 0
    host_bytes: int = 0  # held by host copies
    passes: int = 0
    this_pass: PassBytes = field(default_factory=PassBytes)
    last_pass: PassBytes = field(default_factory=PassBytes)  # the last completed pass
    total: PassBytes = field(default_factory=PassBytes)


@dataclass
class _UnitState:
    unit: Unit
    params: list[nn.Parameter]
    placeholders: list[torch.Tensor]
    offsets: tuple[int, ...]
    nbytes: int
    requests: list[FillRequest]
    buf: torch.Tensor | None = None
    future: Future[Filled] | None = None
    loaded: bool = False
    pins: int = 0
    host: HostCopy | None = None  # the unit's host-tier copy, when it keeps one
    keeping: bool = False  # a fill in flight was asked to make a host copy (bytes reserved)
    rows_bytes: int = 0  # loaded as just some rows (an embedding's looked-up rows)
    hinted: int = -1  # the pass in which storage was last told this unit comes soon
    staged: Future[Staged | None] | None = None  # its stored bytes being read ahead (hint)


class Pager:
    def __init__(
        self,
        units: Sequence[Unit],
        params: Sequence[Sequence[nn.Parameter]],
        layouts: Mapping[str, ArrayLayout],
        filler: Filler,
        *,
        budget: int,
        host_budget: int,
        fixed_bytes: int,
        prefetch: int,
        align: int,
    ) -> None:
        self.filler = filler
        self.budget = budget
        self.host_budget = host_budget
        self.prefetch = prefetch
        self.stats = PagerStats(resident_bytes=fixed_bytes, peak_resident_bytes=fixed_bytes)
        self.fixed_bytes = fixed_bytes
        self.units: list[_UnitState] = []
        for unit, ps in zip(units, params):
            offsets, total = plan_layout([w.nbytes for w in unit.weights], align)
            reqs = [FillRequest(layouts[w.name], off) for w, off in zip(unit.weights, offsets)]
            holders = [p.data for p in ps]
            self.units.append(_UnitState(unit, list(ps), holders, offsets, total, reqs))
        self.sizes = {s.unit.index: s.nbytes for s in self.units}
        # what a load reads from storage: a quantized unit ~1/4 of its decoded size
        self.costs = {s.unit.index: sum(r.layout.stored_nbytes for r in s.requests)
                      for s in self.units}
        # until the first pass is recorded, guess registration order (for prefetching only)
        self.schedule = Schedule(tuple(range(len(self.units))), provisional=True)
        self.tiers = Tiers(frozenset(), frozenset())
        self.cursor = 0
        self._recording: list[int] = []
        self.frames: list[list[int]] = []
        self.busy = False  # set while the pager itself touches parameters (the guard skips)
        self._began = time.perf_counter()  # when the pass in progress began
        self._waited = 0.0  # how long it waited for fills so far
        self.rows_units: frozenset[int] = frozenset()  # may load just the rows a lookup needs

    # -- passes -------------------------------------------------------------------------------
    @property
    def resident_set(self) -> frozenset[int]:
        return self.tiers.device

    def begin_pass(self) -> None:
        self.cursor = 0
        self._recording = []
        self.stats.this_pass = PassBytes()
        self._began = time.perf_counter()
        self._waited = 0.0

    def end_pass(self) -> None:
        """Close a pass (also one that raised midway, even with KeyboardInterrupt)."""
        self.stats.passes += 1
        self.stats.last_pass_s = time.perf_counter() - self._began
        self.stats.last_pass_waited_s = self._waited
        self.stats.waited_s += self._waited
        for st in self.units:  # a pass that raised midway must not leave pins behind
            if st.pins and st.rows_bytes:
                st.pins = 1
                self.release(st.unit.index)
            st.pins = 0
        self.frames = []
        for st in self.units:  # read ahead in an earlier pass and not used since: let go
            if st.staged is not None and st.hinted < self.stats.passes - 1:
                self._unstage(st)
        self.stats.last_pass = self.stats.this_pass
        t, p = self.stats.total, self.stats.this_pass
        t.storage += p.storage
        t.host += p.host
        t.resident += p.resident
        seq = tuple(self._recording)
        if seq and (seq != self.schedule.seq or self.schedule.provisional):
            self.schedule = Schedule(seq)
            self.replan()
        self.cursor = 0

    def replan(self, budget: int | None = None, host_budget: int | None = None) -> None:
        """Place the units in the tiers for the recorded order (and new budgets, if given);
        host copies the new plan does not keep are freed."""
        if budget is not None:
            if budget < self.stats.resident_bytes:
                for st in self.units:  # shrink: evict what the new budget cannot hold
                    if st.loaded and st.pins == 0 and self.stats.resident_bytes > budget:
                        self._evict(st)
                if self.stats.resident_bytes > budget:
                    raise BudgetError(f"cannot shrink the budget to {budget} bytes while "
                                      f"units in use hold {self.stats.resident_bytes}")
            self.budget = budget
        if host_budget is not None:
            self.host_budget = host_budget
        if self.schedule.provisional:
            self.tiers = Tiers(frozenset(), frozenset())
        else:
            self.tiers = plan_tiers(self.schedule, self.sizes, self.budget - self.fixed_bytes,
                                    self.host_budget, self.prefetch, self.costs)
        for st in self.units:
            if st.host is not None and st.unit.index not in self.tiers.host:
                self._free_host(st)
        while self.stats.host_bytes > self.host_budget:  # first-come copies over a new budget
            victim = next(st for st in self.units if st.host is not None)
            self._free_host(victim)

    def _free_host(self, st: _UnitState) -> None:
        assert st.host is not None
        host, st.host = st.host, None
        self.stats.host_bytes -= st.nbytes  # what was reserved (the unit's padded size)
        if not st.loaded:
            self.filler.free_host(st.requests, host)

    def _keeps_host(self, st: _UnitState) -> bool:
        """Whether a fill from storage should leave a host copy behind."""
        if self.host_budget <= 0 or st.unit.index in self.tiers.device:
            return False
        if self.schedule.provisional:  # nothing recorded yet: first come, first served
            return self.stats.host_bytes + st.nbytes <= self.host_budget
        return st.unit.index in self.tiers.host

    # -- acquire / release --------------------------------------------------------------------
    def acquire(self, u: int) -> None:
        """Make unit ``u`` resident and pinned; returns when the device may read it."""
        st = self.units[u]
        self.busy = True
        try:
            self._recording.append(u)
            seq = self.schedule.seq
            if seq and seq[self.cursor % len(seq)] == u:
                self.cursor = (self.cursor + 1) % len(seq)
            else:
                self.cursor = self.schedule.resync(u, self.cursor)
            st.pins += 1
            try:
                if st.loaded:
                    self.stats.this_pass.resident += st.nbytes
                elif st.future is None:
                    self.stats.demand_loads += 1
                    self._start(st, demand=True)
                self._prefetch()
                self._finish(st)
            except BaseException:
                st.pins -= 1
                raise
        finally:
            self.busy = False

    def acquire_rows(self, u: int, rows: Any) -> bool:
        """Load just ``rows`` (sorted, distinct) of unit ``u``'s one weight, pinned, when that
        reads less than the whole unit: True when done, False when the whole unit should be
        acquired instead (it is on the device, kept in RAM, or most rows are needed)."""
        st = self.units[u]
        (req,) = st.requests
        n = len(rows) * req.layout.row_bytes
        if (st.loaded or st.future is not None or st.pins
                or u in self.tiers.device or n * ROWS_WORTH > st.nbytes
                or sum(self.sizes.values()) <= self.budget - self.fixed_bytes
                or (st.host is None and self._keeps_host(st))):
            # the whole unit is here, or cheap, or everything fits the budget; or it should
            # be read whole once into the host tier, where later lookups take their rows
            return False
        self.busy = True
        try:
            self._recording.append(u)
            self.cursor = self.schedule.resync(u, self.cursor)
            self._make_room(n, demand=True, nearer_than=NEVER)
            self.stats.resident_bytes += n
            self.stats.peak_resident_bytes = max(self.stats.peak_resident_bytes,
                                                 self.stats.resident_bytes)
            assert self.stats.resident_bytes <= self.budget, "pager accounting exceeded the budget"
            st.rows_bytes = n
            try:
                t = self.filler.fill_rows(req.layout, rows, st.host)
            except BaseException:
                self.stats.resident_bytes -= n
                st.rows_bytes = 0
                raise
            (w,) = st.unit.weights
            (p,) = st.params
            p.data = t.view(w.dtype).view(len(rows), *w.shape[1:])
            st.pins += 1
            if st.host is not None:
                self.stats.this_pass.host += n
            else:
                self.stats.this_pass.storage += n
            self._prefetch()
        finally:
            self.busy = False
        return True

    def release(self, u: int) -> None:
        st = self.units[u]
        st.pins = max(0, st.pins - 1)
        if st.rows_bytes and not st.pins:  # rows are used by one lookup: free them at once
            busy, self.busy = self.busy, True  # setting .data is an op the guard would see
            try:
                for p, ph in zip(st.params, st.placeholders):
                    p.data = ph
            finally:
                self.busy = busy
            self.stats.resident_bytes -= st.rows_bytes
            st.rows_bytes = 0

    def demand(self, u: int) -> None:
        """A guarded op outside ``u``'s own module reads it: pin it until the frame ends."""
        if self.units[u].pins:
            return
        self.acquire(u)
        if self.frames:
            self.frames[-1].append(u)

    def push_frame(self) -> None:
        self.frames.append([])

    def pop_frame(self) -> None:
        if self.frames:
            for u in self.frames.pop():
                self.release(u)

    # -- loading ------------------------------------------------------------------------------
    def _start(self, st: _UnitState, *, demand: bool, nearer_than: float = NEVER) -> bool:
        if not self._make_room(st.nbytes, demand=demand, nearer_than=nearer_than):
            return False
        buf, alloc_event = self.filler.allocate(st.nbytes)
        st.buf = buf
        self.stats.resident_bytes += st.nbytes
        self.stats.peak_resident_bytes = max(
            self.stats.peak_resident_bytes, self.stats.resident_bytes
        )
        assert self.stats.resident_bytes <= self.budget, "pager accounting exceeded the budget"
        keep = st.host is None and self._keeps_host(st)
        if keep:  # counted from now: the copy is being made
            self.stats.host_bytes += st.nbytes
        st.keeping = keep
        staged, st.staged = st.staged, None
        st.future = self.filler.submit(st.requests, buf, alloc_event, host=st.host, keep=keep,
                                       staged=staged)
        return True

    def _finish(self, st: _UnitState) -> None:
        """Wait for an in-flight fill, then point the unit's parameters into its buffer."""
        if st.loaded:
            return
        fut = st.future
        assert fut is not None and st.buf is not None
        t0 = time.perf_counter()
        try:
            filled = fut.result()
        except BaseException:
            self._unreserve(st)
            self._drop(st)
            raise
        self._waited += time.perf_counter() - t0
        if filled.host is not None and st.keeping:
            st.host, st.keeping = filled.host, False
        self._unreserve(st)  # a copy was asked for and not made
        self.stats.this_pass.storage += filled.from_storage
        self.stats.this_pass.host += filled.from_host
        self.stats.staged_loads += filled.staged
        if filled.tensors is not None:  # CPU: one tensor per weight (mapped or read)
            for p, w, t in zip(st.params, st.unit.weights, filled.tensors):
                p.data = t.view(w.dtype).view(w.shape)
        else:
            if filled.ready is not None:  # CUDA: kernels queued from now on wait for the copies
                torch.cuda.current_stream(self.filler.device).wait_event(filled.ready)
            buf = st.buf
            for p, w, off in zip(st.params, st.unit.weights, st.offsets):
                p.data = buf[off : off + w.nbytes].view(w.dtype).view(w.shape)
        st.future = None
        st.loaded = True
        self.stats.loads += 1
        self.stats.bytes_loaded += st.nbytes

    def _unreserve(self, st: _UnitState) -> None:
        if st.keeping:
            st.keeping = False
            self.stats.host_bytes -= st.nbytes

    def _prefetch(self) -> None:
        if self.prefetch <= 0:
            return
        upcoming = self.schedule.upcoming(self.cursor, 2 * self.prefetch)
        self._hint(upcoming[self.prefetch:])
        upcoming = upcoming[: self.prefetch]
        for k, v in enumerate(upcoming):
            st = self.units[v]
            if st.loaded or st.future is not None or st.rows_bytes:
                continue
            if v in self.rows_units and v not in self.tiers.device and st.host is None:
                continue  # looked up row by row: never read whole ahead of time
            # never evict what is needed before the unit being fetched
            if not self._start(st, demand=False, nearer_than=float(k)):
                self._hint(upcoming[k:])
                return

    def _hint(self, units: Sequence[int]) -> None:
        """Units due soon that are not started now (past the prefetch window, or the budget
        is full until the running unit is done): storage starts on them anyway (into the
        page cache; nothing reserved), so their fills find the bytes read. Without it a
        small budget leaves one unit's read in flight at a time. Once a pass per unit."""
        for v in units:
            st = self.units[v]
            if (st.host is None and st.future is None and not st.loaded
                    and st.hinted != self.stats.passes and v not in self.rows_units):
                st.hinted = self.stats.passes
                if st.staged is None:  # else still staged from the last pass: kept
                    st.staged = self.filler.hint(st.requests)

    def _unstage(self, st: _UnitState) -> None:
        staged, st.staged = st.staged, None
        self.filler.unstage(staged)

    def _make_room(self, need: int, *, demand: bool, nearer_than: float) -> bool:
        if need > self.budget - self.fixed_bytes:
            raise BudgetError(
                f"a unit of {need} bytes cannot fit in a budget of {self.budget} bytes"
            )
        for protect_resident in (True, False) if demand else (True,):
            while True:
                free = self.budget - self.stats.resident_bytes
                evictable = {
                    s.unit.index: s.nbytes for s in self.units
                    if s.loaded and s.pins == 0
                    and not (protect_resident and s.unit.index in self.resident_set)
                }
                dist = {v: self.schedule.distance(v, self.cursor) for v in evictable}
                victims = choose_victims(evictable, dist, need, free, nearer_than=nearer_than)
                if victims is not None:
                    for v in victims:
                        self._evict(self.units[v])
                    return True
                if not demand:
                    return False
                # unused prefetched units may still be in flight: let them land, then retry
                pending = [s for s in self.units if s.future is not None and s.pins == 0]
                if not pending:
                    break
                for s in pending:
                    self._finish(s)
        pinned = [s.unit.name for s in self.units if s.pins and (s.loaded or s.future)]
        raise BudgetError(
            f"budget of {self.budget} bytes exhausted: {need} more bytes are needed while "
            f"units in use hold {self.stats.resident_bytes - self.fixed_bytes} bytes "
            f"({', '.join(pinned) or 'none'}); raise the budget"
        )

    def _evict(self, st: _UnitState) -> None:
        assert st.pins == 0 and st.loaded
        old = [p.data for p in st.params]
        for p, ph in zip(st.params, st.placeholders):
            p.data = ph
        self._drop(st)
        self.filler.release(st.requests, old, kept=st.host is not None)
        self.stats.evictions += 1

    def _drop(self, st: _UnitState) -> None:
        if st.buf is not None:
            self.stats.resident_bytes -= st.nbytes
        st.buf = None
        st.future = None
        st.loaded = False

    def close(self) -> None:
        for st in self.units:
            if st.future is not None:
                # closing: a failed read has no one left to report to
                with contextlib.suppress(BaseException):
                    st.future.result()
            for p, ph in zip(st.params, st.placeholders):
                p.data = ph
            self._unreserve(st)
            self._drop(st)
            self._unstage(st)
            if st.host is not None:
                self._free_host(st)
