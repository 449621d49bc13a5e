"""Data to measure on an empty machine (``--synthetic SIZE``): a file of random bytes, a
Llama-shaped checkpoint, a GPT-2-shaped model with random weights (from a ``transformers``
config: no hub download), a dataset of N samples x row bytes."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..config import MiB, parse_bytes
from ..errors import BigstoreError

__all__ = [
    "dataset_batches", "gpt_config", "make_state_dict", "parse_dataset_spec", "write_random_file",
]


def write_random_file(path: str | os.PathLike[str], nbytes: int, *, seed: int = 0) -> int:
    """``nbytes`` of incompressible bytes at ``path``, written 8 MiB at a time."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, 8 * MiB, dtype=np.uint8)
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(left, block.nbytes)
            f.write(block[:n].tobytes())
            block = np.roll(block, 4097)  # not the same block twice (dedup-proof)
            left -= n
    return nbytes


def make_state_dict(total: int, dtype: Any = None, hidden: int = 4096) -> dict[str, Any]:
    """Llama-shaped random tensors (attention and MLP matrices, norms) adding up to ~total
    bytes; ``hidden`` shrinks with ``total`` so small sizes still get several layers."""
    import torch

    dtype = dtype or torch.bfloat16
    item = torch.empty((), dtype=dtype).element_size()
    while hidden > 128 and (12 * hidden * hidden * item) * 4 > max(total, 1):
        hidden //= 2
    mlp = max(256, hidden * 8 // 3 // 256 * 256)
    per_layer = (4 * hidden * hidden + 3 * hidden * mlp + 2 * hidden) * item
    layers = max(1, round(total / per_layer))
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=g) * 0.02).to(dtype)

    sd: dict[str, torch.Tensor] = {}
    for i in range(layers):
        p = f"model.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[f"{p}.self_attn.{n}.weight"] = rand(hidden, hidden)
        sd[f"{p}.mlp.gate_proj.weight"] = rand(mlp, hidden)
        sd[f"{p}.mlp.up_proj.weight"] = rand(mlp, hidden)
        sd[f"{p}.mlp.down_proj.weight"] = rand(hidden, mlp)
        sd[f"{p}.input_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
        sd[f"{p}.post_attention_layernorm.weight"] = torch.ones(hidden, dtype=dtype)
    return sd


def gpt_config(total: int | None = None, *, quick: bool = False) -> Any:
    """A GPT-2-style config: ``quick`` a tiny one; ``total`` about that many fp32 bytes of
    weights; neither, 30 blocks of d=1024 and a 32k vocabulary (~1.64 GB fp32)."""
    import transformers

    if quick:
        return transformers.GPT2Config(
            n_layer=4, n_embd=64, n_head=4, vocab_size=512, n_positions=128
        )
    if total is None:
        return transformers.GPT2Config(
            n_layer=30, n_embd=1024, n_head=16, vocab_size=32000, n_positions=1024
        )
    # width grows with the size; the blocks (12 d^2 fp32 each) make up most of the weights
    d = 64 if total < 8 * MiB else 256 if total < 256 * MiB else 1024
    vocab = 512 if d == 64 else 4096 if d == 256 else 32000
    emb = (vocab + 1024) * d * 4
    layers = max(2, round((total - emb) / (12 * d * d * 4 + 13 * d * 4)))
    return transformers.GPT2Config(
        n_layer=layers, n_embd=d, n_head=max(1, d // 64), vocab_size=vocab, n_positions=1024
    )


_SPEC = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_dataset_spec(spec: str, row_bytes: int = 4096) -> tuple[int, int]:
    """``"10000x4096"`` (samples x row bytes) or a size (``"64MiB"``, rows of ``row_bytes``)
    -> (samples, row bytes)."""
    m = _SPEC.match(spec)
    if m:
        n, rb = int(m.group(1)), int(m.group(2))
    else:
        rb = row_bytes
        n = parse_bytes(spec) // max(1, rb + 8)
    if n < 1 or rb < 1:
        raise BigstoreError(f"--synthetic {spec!r} makes an empty dataset (rows of {rb} B)")
    return n, rb


def dataset_batches(n: int, row_bytes: int, *, step: int = 8192) -> Iterator[dict[str, Any]]:
    """An ``image`` column of uint8 rows (each row a function of its index, so any loader's
    output can be checked) and an int64 ``label``."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, row_bytes, dtype=np.uint8)
    for s in range(0, n, step):
        m = min(step, n - s)
        idx = np.arange(s, s + m, dtype=np.int64)
        img = np.empty((m, row_bytes), np.uint8)
        img[:] = noise
        img[:, 0] = (idx % 251).astype(np.uint8)
        yield {"image": img, "label": idx}
