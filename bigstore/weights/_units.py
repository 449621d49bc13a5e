"""Paging units: which tensors of a model are read, kept and evicted together.

A *weight* is one distinct tensor of the model (tied weights are one weight with several
names). A *unit* is a group of weights with the modules whose forward needs them ("hook
modules").
Discovery only inspects the module tree: it allocates nothing and reads nothing.

Default units, sensible for transformer models: each child of the largest repeated layer list
(the ``nn.ModuleList`` holding most parameters) is one unit; every other parameter belongs to
the unit of the module that owns it directly (embedding, final norm, head...). Parameters shared
between modules (an embedding tied to the output head) merge their owners into one unit, so a
shared tensor is read once and never held twice.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import BigstoreError

__all__ = [
    "VECTOR_SHARE", "Unit", "Weight", "default_unit_roots", "discover_units", "skeleton",
    "split_vectors", "unique_state_dict",
]

UnitSpec = Sequence[str] | Callable[[str, nn.Module], bool] | None


@dataclass(frozen=True)
class Weight:
    """One distinct parameter: every name it is reachable under, shape and dtype."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


@dataclass(frozen=True)
class Unit:
    """Weights paged together, and the modules whose forward triggers loading them."""

    index: int
    name: str
    weights: tuple[Weight, ...]
    hook_modules: tuple[str, ...]

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.weights)


def default_unit_roots(model: nn.Module) -> list[str]:
    """The children of the repeated layer list holding the most parameters ([] if none)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2:
            n = sum(p.numel() for p in mod.parameters())
            if n and (best is None or n > best[0]):
                best = (n, name, mod)
    if best is None:
        return []
    _, name, mod = best
    return [f"{name}.{i}" if name else str(i) for i in range(len(mod))]


def _resolve_roots(model: nn.Module, units: UnitSpec) -> list[str]:
    if units is None:
        return default_unit_roots(model)
    names = dict(model.named_modules())
    if callable(units):
        roots = [n for n, m in names.items() if units(n, m)]
    else:
        roots = list(units)
        for r in roots:
            if r not in names:
                raise BigstoreError(f"units: the model has no submodule {r!r}")
    roots.sort(key=len)
    for i, r in enumerate(roots):  # nested roots would page one tensor in two units
        for outer in roots[:i]:
            if outer == "" or r.startswith(outer + "."):
                raise BigstoreError(f"units: {r!r} lies inside unit {outer!r}; units must not nest")
    return roots


def _root_of(path: str, roots: Sequence[str]) -> str | None:
    for r in roots:
        if r == "" or path == r or path.startswith(r + "."):
            return r
    return None


def discover_units(model: nn.Module, units: UnitSpec = None) -> list[Unit]:
    """Group the model's parameters into paging units (in module registration order)."""
    roots = _resolve_roots(model, units)
    order = {name: i for i, (name, _) in enumerate(model.named_modules(remove_duplicate=False))}
    by_id: dict[int, list[str]] = {}
    params: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
        params[id(p)] = p
    # union-find over group keys: a unit root, or the module owning a parameter directly
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        parent.setdefault(k, k)
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    slot_key: dict[int, str] = {}
    for pid, names in by_id.items():
        keys = []
        for n in names:
            owner = n.rpartition(".")[0]
            root = _root_of(owner, roots) if roots else None
            keys.append(root if root is not None else owner)
        first = find(keys[0])
        for k in keys[1:]:
            other = find(k)
            if other != first:
                # keep the key that comes first in the module tree as the representative
                a, b = sorted((first, other), key=lambda x: order.get(x, 0))
                parent[b] = a
                first = a
        slot_key[pid] = keys[0]
    groups: dict[str, list[int]] = {}
    members: dict[str, set[str]] = {}
    for pid in by_id:
        rep = find(slot_key[pid])
        groups.setdefault(rep, []).append(pid)
    for k in list(parent):
        members.setdefault(find(k), set()).add(k)
    reps = sorted(groups, key=lambda r: min(order.get(k, 0) for k in members[r]))
    out: list[Unit] = []
    for i, rep in enumerate(reps):
        weights = tuple(
            Weight(tuple(by_id[pid]), tuple(params[pid].shape), params[pid].dtype)
            for pid in groups[rep]
        )
        hooks = tuple(sorted(members[rep], key=lambda k: order.get(k, 0)))
        out.append(Unit(i, "+".join(h or "<root>" for h in hooks), weights, hooks))
    return out


#: vectors (biases, norms) stay resident when they take at most 1/VECTOR_SHARE of the budget
VECTOR_SHARE = 8


def split_vectors(units: Sequence[Unit], budget: int) -> tuple[list[Weight], list[Unit]]:
    """The weights to keep resident for good, and the units left to page (renumbered; a unit
    left with no weight is gone).

    Vectors (1-D weights: biases, norms) are O(d) bytes against the O(d^2) of a layer's
    matrices, yet each is an object of its own in the store: paging them costs a read, a
    checksum and a mapping per vector per use (cold, a disk seek each: a third of a GPT-2 int4
    pass here, NOTES). So they are read once and kept, when together they take at most
    1/VECTOR_SHARE of the budget.
    """
    vectors = [w for u in units for w in u.weights if len(w.shape) <= 1]
    if not vectors or sum(w.nbytes for w in vectors) * VECTOR_SHARE > budget:
        return [], list(units)
    paged: list[Unit] = []
    for u in units:
        weights = tuple(w for w in u.weights if len(w.shape) > 1)
        if weights:
            paged.append(Unit(len(paged), u.name, weights, u.hook_modules))
    return vectors, paged


def unique_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors to save: each tied parameter once (under its first name), persistent buffers.

    ``bigstore.save(unique_state_dict(model), url)`` stores an embedding tied to the output
    head once; ``bigstore.save(model.state_dict(), url)`` also works (the copy is stored twice,
    and offloading reads whichever name it finds first).
    """
    out: dict[str, torch.Tensor] = dict(model.named_parameters())  # dedups tied parameters
    for name, buf in _persistent_buffers(model):
        out[name] = buf
    return out


def _persistent_buffers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        for bname, buf in mod._buffers.items():
            if buf is None or bname in mod._non_persistent_buffers_set or id(buf) in seen:
                continue
            seen.add(id(buf))
            yield (f"{mod_name}.{bname}" if mod_name else bname), buf


def model_buffers(model: nn.Module) -> Mapping[str, tuple[torch.Tensor, bool]]:
    """name -> (buffer, persistent), each distinct buffer once."""
    out: dict[str, tuple[torch.Tensor, bool]] = {}
    seen: set[int] = set()
    for mod_name, mod in model.named_modules():
        for bname, buf in mod._buffers.items():
            if buf is None or id(buf) in seen:
                continue
            seen.add(id(buf))
            full = f"{mod_name}.{bname}" if mod_name else bname
            out[full] = (buf, bname not in mod._non_persistent_buffers_set)
    return out


@contextlib.contextmanager
def skeleton() -> Iterator[None]:
    """Build models inside this block without allocating their parameters.

    Parameters are created on the ``meta`` device (no memory, no initialisation cost) while
    buffers stay real: non-persistent buffers such as BERT's ``position_ids`` or Llama's rotary
    ``inv_freq`` are computed at construction and are not in any checkpoint, so a skeleton built
    under ``torch.device("meta")`` would have no values for them. Example::

        config = transformers.AutoConfig.for_model("gpt2", n_layer=48)
        with bigstore.skeleton():
            model = transformers.AutoModelForCausalLM.from_config(config)
        model = bigstore.offload(model, "gpt2-store", budget="256MiB")
    """
    original = nn.Module.register_parameter

    def register(self: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(self, name, param)
        if param is not None and param.device.type != "meta":
            p = self._parameters[name]
            assert p is not None
            kwargs: dict[str, Any] = dict(p.__dict__)
            kwargs["requires_grad"] = p.requires_grad
            self._parameters[name] = type(p)(p.to("meta"), **kwargs)

    nn.Module.register_parameter = register  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]
