"""bigstore.offload from an s3:// store (the local moto server) and the local chunk cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import bigstore
from bigstore.io import CpuFiller
from bigstore.store._cache import CachedStore
from bigstore.weights.offload import offload, skeleton, unique_state_dict


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(64, 64) for _ in range(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _skel() -> Stack:
    with skeleton():
        return Stack()


@pytest.mark.s3
def test_offload_from_s3_with_cache(s3_url: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, opts = s3_url
    torch.manual_seed(0)
    ref = Stack()
    bigstore.save(unique_state_dict(ref), url, storage_options=opts, chunk_bytes=4096)
    x = torch.randn(3, 64)
    with torch.no_grad():
        want = ref(x)
    cache = tmp_path / "cache"
    unit = 64 * 64 * 4 + 256 + 64 * 4
    budget = 2 * unit + 4096
    kwargs: dict[str, Any] = {
        "device": "cpu", "budget": budget, "storage_options": opts, "cache_dir": cache,
        "host_budget": 0,  # no host tier: every pass reads the store (here: its cache)
    }
    with offload(_skel(), url, **kwargs) as m, torch.no_grad():
        assert isinstance(m.tensor_store.store, CachedStore)
        for _ in range(2):
            assert torch.equal(m(x), want)
        store = m.tensor_store.store
        assert store.misses > 0 and store.hits > 0  # the second pass came from the cache
        first_misses = store.misses
    # next run: every chunk from the cache, nothing from S3
    with offload(_skel(), url, **kwargs) as m, torch.no_grad():
        assert torch.equal(m(x), want)
        assert isinstance(m.tensor_store.store, CachedStore)
        assert m.tensor_store.store.misses == 0
    assert first_misses == sum(
        bigstore.open(url, storage_options=opts).meta(n).n_chunks
        for n in bigstore.open(url, storage_options=opts)
    )
    assert not list(cache.rglob(".*tmp-*"))  # no partial file left under any name


@pytest.mark.s3
def test_cache_limit_is_kept(s3_url: tuple[str, dict[str, Any]], tmp_path: Path) -> None:
    url, opts = s3_url
    torch.manual_seed(1)
    ref = Stack()
    bigstore.save(unique_state_dict(ref), url, storage_options=opts, chunk_bytes=4096)
    limit = 20_000
    x = torch.randn(2, 64)
    with offload(
        _skel(), url, device="cpu", budget="1MiB", storage_options=opts,
        cache_dir=tmp_path / "c", cache_bytes=limit,
    ) as m, torch.no_grad():
        assert torch.equal(m(x), ref(x))
        store = m.tensor_store.store
        assert isinstance(store, CachedStore)
        assert 0 < store.cached_bytes() <= limit


def test_cache_rewritten_store_gets_fresh_namespace(tmp_path: Path) -> None:
    from bigstore.store import open_store

    url, so = "memory://cache-ns-test", {"skip_instance_cache": False}  # through fsspec
    bigstore.save({"a": torch.zeros(4)}, url, storage_options=so)
    c1 = CachedStore(open_store(url, so), tmp_path, 1 << 20)
    first = c1.dir  # the namespace binds to the commit seen at first use
    bigstore.save({"a": torch.ones(4)}, url, storage_options=so)  # same shapes, new values
    c2 = CachedStore(open_store(url, so), tmp_path, 1 << 20)
    assert first == c1.dir != c2.dir


@pytest.mark.s3
def test_quantized_offload_from_s3_reads_ahead_into_staging(
        s3_url: tuple[str, dict[str, Any]]) -> None:
    # the page cache cannot read ahead for an object store: the packed parts of the layers
    # due next are staged (fetched several at once) and the fills only check and decode them
    url, opts = s3_url
    torch.manual_seed(2)
    bigstore.quantize(unique_state_dict(Stack()), url, "int4", 16, include=("layers.*.weight",),
                      min_dim=16, storage_options=opts, chunk_bytes=1024)
    resident = Stack().eval()
    resident.load_state_dict(bigstore.load(url, storage_options=opts))
    x = torch.randn(3, 64)
    unit = 64 * 64 * 4 + 64 * 4
    with offload(_skel(), url, device="cpu", budget=3 * unit, storage_options=opts,
                 host_budget=0) as m, torch.no_grad():
        for _ in range(3):
            assert torch.equal(m(x), resident(x))
        assert m.stats.staged_loads > 0
        filler = m.filler
        assert isinstance(filler, CpuFiller)
    assert filler.staging.used == 0
