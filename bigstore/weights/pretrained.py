"""``bigstore.from_pretrained``: a Hugging Face model, offloaded, from its files or a store.

The skeleton is built from the ``config.json`` found next to the weights (a model directory of
safetensors files, or a bigstore store made by ``convert`` of such a directory, which keeps
``config.json``, ``generation_config.json`` and the tokenizer files), with ``transformers``
(an optional extra: ``pip install 'bigstore[hf]'``), on the ``meta`` device; then
:func:`~bigstore.offload` pages the weights in.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..errors import MissingDependencyError, NotAStoreError, StoreNotFoundError
from ..format.safetensors import open_weights
from ..store import Store
from .offload import OffloadedModel, offload, skeleton

__all__ = ["HF_FILES", "from_pretrained"]

#: the files of a model directory besides its weights that make it loadable by name
HF_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "tokenizer.model", "spiece.model", "chat_template.jinja", "preprocessor_config.json",
)


def from_pretrained(
    path_or_url: str | os.PathLike[str] | Store,
    *,
    storage_options: Mapping[str, Any] | None = None,
    model_class: Any = None,
    **offload_options: Any,
) -> OffloadedModel:
    """The model of ``path_or_url`` (a Hugging Face directory of safetensors files, or a
    bigstore store converted from one), offloaded: ``device``, ``budget``, ``host_budget`` and
    every other keyword go to :func:`~bigstore.offload`. ``model_class``: the ``transformers``
    class to build (default: the config's ``architectures[0]``, else AutoModelForCausalLM).
    Close the result (or use it in a ``with`` block) to free it."""
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError(
            "from_pretrained builds the model with transformers, which is not installed: "
            "pip install 'bigstore[hf]'"
        ) from None
    store = open_weights(path_or_url, storage_options)
    try:
        raw = bytes(memoryview(store.get("config.json")).cast("B"))
    except StoreNotFoundError:
        raise NotAStoreError(
            f"{store.url} has no config.json: from_pretrained needs a model directory (or a "
            "store converted from one, which keeps it); build the model yourself inside "
            "bigstore.skeleton() and call bigstore.offload"
        ) from None
    with tempfile.TemporaryDirectory() as d:
        Path(d, "config.json").write_bytes(raw)
        config = transformers.AutoConfig.from_pretrained(d)
    cls = model_class or _model_class(transformers, json.loads(raw))
    dtype = _stored_float_dtype(store)
    with skeleton():
        model = cls._from_config(config) if hasattr(cls, "_from_config") else cls(config)
        if dtype is not None:
            model = model.to(dtype)  # parameters are on meta: free
    return offload(model, store, **offload_options)


def _model_class(transformers: Any, config: dict[str, Any]) -> Any:
    for arch in config.get("architectures") or ():
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForCausalLM


def _stored_float_dtype(store: Store) -> torch.dtype | None:
    """The floating dtype most of the stored weights have (the model is built in it)."""
    from ..format import read_root
    from ..format.dtypes import dtype_spec

    counts: Counter[str] = Counter()
    for doc in read_root(store, expect_kind="tensors").arrays.values():
        name = ((doc.get("attributes") or {}).get("bigstore") or {}).get("dtype")
        try:
            spec = dtype_spec(name or doc.get("data_type"))
        except Exception:  # a dtype this torch lacks: not a candidate
            continue
        if spec.torch is not None and spec.torch.is_floating_point:
            counts[spec.name] += 1
    if not counts:
        return None
    t = dtype_spec(counts.most_common(1)[0][0]).torch
    return t if isinstance(t, torch.dtype) else None
