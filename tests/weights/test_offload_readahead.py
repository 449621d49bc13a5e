"""When the budget cannot hold the units due next, the pager still lets storage start on them:
`readahead` puts a store's bytes in the page cache without mapping or reserving anything, and
the pager hints each upcoming unit it could not start, once per pass. Units that are decoded
and read past the page cache (or from an object store) are staged instead: their stored bytes
are read ahead into the filler's bounded staging pool, and their fills only check and decode."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import bigstore
from bigstore.bench import drop_page_cache, resident_bytes, store_files
from bigstore.format import QuantizedLayout
from bigstore.io import CpuFiller, FillRequest, readahead
from bigstore.weights.offload import offload, skeleton

WIDTH, LAYERS = 256, 8  # 256 KiB per layer


class Stack(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(LAYERS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


def _saved(tmp_path: Path) -> tuple[str, Stack]:
    torch.manual_seed(0)
    ref = Stack().eval()
    url = str(tmp_path / "stack.bigstore")
    bigstore.save(ref.state_dict(), url)
    return url, ref


def test_readahead_fills_the_page_cache(tmp_path: Path) -> None:
    url, _ = _saved(tmp_path)
    files = [f for f in store_files(url) if "layers.3.weight" in str(f)]
    assert files
    drop_page_cache(files)
    before = resident_bytes(files)
    if before is None or before > 0:
        pytest.skip("this file system keeps pages cached after POSIX_FADV_DONTNEED")
    ts = bigstore.open(url)
    asked = readahead(ts.store, ts.meta("layers.3.weight"))
    assert asked >= WIDTH * WIDTH * 4
    deadline = time.monotonic() + 5
    while (resident_bytes(files) or 0) < WIDTH * WIDTH * 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (resident_bytes(files) or 0) >= WIDTH * WIDTH * 4


def test_pager_hints_units_it_cannot_start(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    url, ref = _saved(tmp_path)
    hinted: list[list[str]] = []
    real = CpuFiller.hint

    def spy(self: CpuFiller, requests: Sequence[FillRequest]) -> Any:
        hinted.append([r.layout.path for r in requests])
        return real(self, requests)

    monkeypatch.setattr(CpuFiller, "hint", spy)
    with skeleton():
        sk = Stack()
    # two layers fit: one computing, one in flight; the next ones can only be hinted
    m = offload(sk, url, device="cpu", budget=2 * WIDTH * WIDTH * 4, prefetch=2, host_budget=0)
    x = torch.randn(3, WIDTH)
    with torch.no_grad():
        want = ref(x)
        for _ in range(3):
            assert torch.equal(m(x), want)
    assert hinted, "no unit was hinted although the budget held only two layers"
    per_pass = len(hinted) / 3
    assert per_pass <= LAYERS  # each unit at most once a pass
    assert all(len(h) == 1 and h[0].startswith("layers.") for h in hinted)
    m.close()


def test_readahead_of_a_quantized_tensor_reads_its_parts(tmp_path: Path) -> None:
    torch.manual_seed(0)
    url = str(tmp_path / "q.bigstore")
    name = "layers.0.mlp.weight"
    bigstore.quantize({name: torch.randn(512, 512)}, url, "int4")
    files = store_files(url)
    drop_page_cache(files)
    if (resident_bytes(files) or 0) > 0:
        pytest.skip("this file system keeps pages cached after POSIX_FADV_DONTNEED")
    ts = bigstore.open(url)
    layout = ts.meta(name)
    assert isinstance(layout, QuantizedLayout)
    parts = sum(part.stored_chunk_nbytes * part.n_chunks for _, part in layout.parts)
    assert readahead(ts.store, layout) >= parts
    deadline = time.monotonic() + 5
    while (resident_bytes(files) or 0) < parts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (resident_bytes(files) or 0) >= parts


class Partial(Stack):
    """The stack, running only its first ``depth`` layers (a pass may end early)."""

    depth = LAYERS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[: self.depth]:
            x = torch.tanh(layer(x))
        return x


def _quantized(tmp_path: Path) -> tuple[str, Partial]:
    """A stack saved as int4, and the resident model loaded from that same store."""
    torch.manual_seed(0)
    url = str(tmp_path / "q4.bigstore")
    bigstore.quantize(Stack().state_dict(), url, "int4", 32, include=("layers.*",))
    resident = Partial().eval()
    resident.load_state_dict(bigstore.load(url))
    return url, resident


def _run(m: Any, resident: Partial, depths: Sequence[int]) -> None:
    x = torch.randn(3, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for d in depths:
            m.module.depth = resident.depth = d
            assert torch.equal(m(x), resident(x))


def _offloaded(url: str, drop_cache: bool) -> tuple[Any, CpuFiller]:
    with skeleton():
        sk = Partial()
    # two decoded layers fit: one computing, one being filled; the others are read ahead
    m = offload(sk, url, device="cpu", budget=2 * WIDTH * WIDTH * 4, prefetch=2, host_budget=0,
                drop_cache=drop_cache)
    assert isinstance(m.filler, CpuFiller)
    return m, m.filler


@pytest.mark.parametrize("drop_cache", [False, True])
def test_decoded_units_read_past_the_cache_are_staged(tmp_path: Path, drop_cache: bool) -> None:
    url, resident = _quantized(tmp_path)
    m, filler = _offloaded(url, drop_cache)
    _run(m, resident, [LAYERS] * 4)
    if drop_cache:  # past the page cache: nothing else would read ahead
        assert m.stats.staged_loads >= LAYERS
        assert 0 < filler.staging_bytes <= filler.staging.capacity
    else:  # the page cache reads ahead (hints): no second copy of the bytes
        assert m.stats.staged_loads == 0 and filler.staging_bytes == 0
    m.close()
    assert filler.staging.used == 0  # every staged unit given back


def test_stages_no_pass_uses_are_let_go(tmp_path: Path) -> None:
    url, resident = _quantized(tmp_path)
    m, filler = _offloaded(url, drop_cache=True)
    # a pass that ends after layer 3 has staged the layers after it; the passes that follow
    # use only the first two (both fit the budget: nothing more is hinted), so those stages
    # are let go after a pass, not kept until the layers come back
    _run(m, resident, [LAYERS, LAYERS, 3])
    assert filler.staging.used > 0
    _run(m, resident, [2, 2, 2])
    assert filler.staging.used == 0
    before = m.stats.staged_loads
    _run(m, resident, [LAYERS, LAYERS])  # the first records the order again
    assert m.stats.staged_loads - before >= LAYERS - 2  # read ahead as before
    m.close()
