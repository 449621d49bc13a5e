"""Calibration for GPTQ: the second moment of each linear layer's inputs on sample data.

``calibrate(model, batches)`` runs a resident model on a few batches with forward hooks on its
linear layers (``nn.Linear``, and GPT-2-style ``Conv1D`` whose weight is ``(in, out)``) and
returns a :class:`Calibration`: per weight name, ``H = E[x xᵀ]`` over every input row seen.
``quantize(src, dst, scheme="int4", calibration=cal)`` then writes those weights with GPTQ
(:mod:`bigstore.weights.gptq`); tensors without a Hessian are rounded to nearest as before.

A calibration is itself a bigstore tensor store (:meth:`Calibration.save`,
:meth:`Calibration.open`), so ``bigstore convert --quantize int4 --calibration DIR`` takes
one made in Python. Nothing is pickled. Padding is left out: when a batch is a mapping with
an ``attention_mask`` whose shape is the inputs' leading shape, only the rows it marks count.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import BigstoreError, NotAStoreError, ShapeError, StoreNotFoundError
from ..progress import progress_bar
from .gptq import DAMP

__all__ = ["Calibration", "calibrate"]

_DOC = "calibration.json"


@dataclass(frozen=True)
class Calibration:
    """Per weight name: the inputs' second moment ``(in, in)`` (float32, CPU) and the weight's
    input axis (-1: ``nn.Linear`` ``(out, in)``; 0: ``Conv1D`` ``(in, out)``).

    samples: input rows seen per weight. damp: GPTQ's dampening (a fraction of the mean of
    ``diag H`` added to the diagonal; raise it if a Hessian is reported not positive definite).
    """

    hessians: Mapping[str, torch.Tensor]
    input_axis: Mapping[str, int]
    samples: Mapping[str, int] = field(default_factory=dict)
    damp: float = DAMP

    def __post_init__(self) -> None:
        if not 0 <= self.damp < 1:
            raise BigstoreError(f"damp must be in [0, 1), got {self.damp}")
        for name, h in self.hessians.items():
            if h.dim() != 2 or h.shape[0] != h.shape[1]:
                raise ShapeError(f"{name}: a Hessian is a square matrix, got {tuple(h.shape)}")
            if name not in self.input_axis:
                raise BigstoreError(f"{name}: calibration has a Hessian but no input axis")

    def __contains__(self, name: object) -> bool:
        return name in self.hessians

    def __len__(self) -> int:
        return len(self.hessians)

    def save(self, url: str | os.PathLike[str], *, overwrite: bool = False,
             storage_options: Mapping[str, Any] | None = None) -> None:
        """Write the calibration as a bigstore tensor store (the Hessians, and a small JSON
        document with the axes, sample counts and damp)."""
        from .writer import save

        doc = {"input_axis": dict(self.input_axis), "samples": dict(self.samples),
               "damp": self.damp}
        save(self.hessians, url, overwrite=overwrite, storage_options=storage_options,
             files={_DOC: json.dumps(doc, indent=1).encode()})

    @classmethod
    def open(cls, url: str | os.PathLike[str], *,
             storage_options: Mapping[str, Any] | None = None) -> Calibration:
        """Read a calibration written by :meth:`save`."""
        from .reader import TensorStore

        with TensorStore.open(url, storage_options=storage_options) as ts:
            try:
                raw = bytes(memoryview(ts.store.get(_DOC)).cast("B"))
            except StoreNotFoundError:
                raise NotAStoreError(
                    f"{os.fspath(url)}: a tensor store without {_DOC}, not a calibration"
                ) from None
            hessians = ts.load(list(ts))
        doc = json.loads(raw)
        axes = {str(k): int(v) for k, v in doc["input_axis"].items()}
        return cls(hessians, axes, {str(k): int(v) for k, v in doc.get("samples", {}).items()},
                   float(doc.get("damp", DAMP)))


def _linear_axis(module: nn.Module) -> int | None:
    w = getattr(module, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        return None
    if isinstance(module, nn.Linear):
        return -1
    if type(module).__name__ == "Conv1D":  # transformers' GPT-2 layer: y = x @ W + b
        return 0
    return None


def calibrate(model: nn.Module, batches: Iterable[Any], *, names: Sequence[str] | None = None,
              damp: float = DAMP, progress: bool = False) -> Calibration:
    """Run ``model`` on ``batches`` (each a mapping of keyword arguments, a tuple of positional
    ones, or one tensor) and collect each linear layer's input second moment.

    ``names``: only these weight names (``"<module>.weight"``, as in the model's state dict);
    default every ``nn.Linear`` and ``Conv1D``. The model runs as it is (put it in eval mode
    first); its outputs are discarded.
    """
    targets: dict[str, tuple[nn.Module, int]] = {}
    for mname, module in model.named_modules():
        axis = _linear_axis(module)
        wname = f"{mname}.weight" if mname else "weight"
        if axis is not None and (names is None or wname in names):
            targets[wname] = (module, axis)
    if names is not None:
        missing = sorted(set(names) - set(targets))
        if missing:
            raise BigstoreError(f"calibrate: not linear layers of this model: {missing[:5]}")
    if not targets:
        raise BigstoreError("calibrate: the model has no nn.Linear or Conv1D layer")
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask: list[torch.Tensor | None] = [None]

    def hook(wname: str):  # type: ignore[no-untyped-def]
        def record(module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            x = inputs[0].detach()
            m = mask[0]
            x = x[m.to(x.device)] if m is not None and m.shape == x.shape[:-1] else x
            x = x.reshape(-1, x.shape[-1]).float()
            xtx = (x.T @ x).to("cpu", torch.float64)
            sums[wname] = sums[wname] + xtx if wname in sums else xtx
            counts[wname] = counts.get(wname, 0) + x.shape[0]
        return record

    handles = [m.register_forward_hook(hook(w)) for w, (m, _) in targets.items()]
    bar = progress_bar(progress, "calibrate (batches)", unit="samples")
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, Mapping):
                    am = batch.get("attention_mask")
                    mask[0] = am.bool() if isinstance(am, torch.Tensor) else None
                    model(**batch)
                elif isinstance(batch, tuple | list):
                    mask[0] = None
                    model(*batch)
                else:
                    mask[0] = None
                    model(batch)
                if bar is not None:
                    bar.update(1)
    finally:
        for h in handles:
            h.remove()
        if bar is not None:
            bar.close()
    seen = [w for w in targets if counts.get(w)]
    if not seen:
        raise BigstoreError("calibrate: no batch reached a linear layer (empty batches?)")
    return Calibration({w: (sums[w] / counts[w]).float() for w in seen},
                       {w: targets[w][1] for w in seen}, {w: counts[w] for w in seen}, damp)
