"""When the budget cannot hold the units due next, the pager still lets storage start on them:
`readahead` puts a store's bytes in the page cache without mapping or reserving anything, and
the pager hints each upcoming unit it could not start, once per pass."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from torch import nn

import bigstore
from bigstore.bench import drop_page_cache, resident_bytes, store_files
from bigstore.format import QuantizedLayout
from bigstore.io import FillRequest, readahead
from bigstore.io.device import Filler
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
    real = Filler.hint

    def spy(self: Filler, requests: Sequence[FillRequest]) -> None:
        hinted.append([r.layout.path for r in requests])
        real(self, requests)

    monkeypatch.setattr(Filler, "hint", spy)
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
