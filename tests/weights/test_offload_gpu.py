"""The CUDA path: pinned staging ring, copy stream, events. Runs wherever a GPU is present."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import bigstore
from bigstore.io import CudaFiller
from bigstore.weights.offload import offload, skeleton, unique_state_dict
from tests._models import tiny_llama
from tests.weights.test_offload import Net, _inputs

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("prefetch", [0, 1, 3])
@pytest.mark.parametrize("staging", ["4KiB", "64MiB"])  # 4 KiB: units cross several slots
def test_cuda_identical(tmp_path: Path, prefetch: int, staging: str) -> None:
    torch.manual_seed(0)
    ref = Net().eval()
    bigstore.save(unique_state_dict(ref), tmp_path / "m")
    ref = ref.cuda()
    with skeleton():
        sk = Net().eval()
    budget = 64 * 1024
    with offload(
        sk, tmp_path / "m", device="cuda", budget=budget, prefetch=prefetch,
        staging_bytes=staging,
    ) as m, torch.no_grad():
        filler = m.filler
        assert isinstance(filler, CudaFiller)
        assert filler.copy_stream is not None
        assert all(t.is_pinned() for t in filler.ring)
        for x in _inputs():
            x = x.cuda()
            assert torch.equal(m(x), ref(x))
        assert m.stats.peak_resident_bytes <= budget
        assert all(p.device.type == "cuda" for p in sk.parameters())
    assert all(p.device.type == "meta" for p in sk.parameters())


def test_cuda_gpt2_generate(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=4, n_embd=64, n_head=4, vocab_size=101, n_positions=64)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    bigstore.save(unique_state_dict(ref), tmp_path / "g")
    ref = ref.cuda()
    ids = torch.randint(0, 101, (2, 5), device="cuda")
    with torch.no_grad():
        want = ref.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
    with skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with offload(sk, tmp_path / "g", device="cuda", budget="256KiB") as m, torch.no_grad():
        got = m.generate(ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
        assert torch.equal(got, want)
        assert m.stats.evictions > 0


@pytest.mark.parametrize("host", ["0", "1GiB"])
def test_cuda_host_tier(tmp_path: Path, host: str) -> None:
    torch.manual_seed(0)
    ref = Net().eval()
    bigstore.save(unique_state_dict(ref), tmp_path / "m")
    ref = ref.cuda()
    with skeleton():
        sk = Net().eval()
    with offload(sk, tmp_path / "m", device="cuda", budget=64 * 1024, host_budget=host,
                 prefetch=2) as m, torch.no_grad():
        for i, x in enumerate(_inputs()):
            x = x.cuda()
            assert torch.equal(m(x), ref(x))
            if i and host != "0":  # pinned host copies: no storage read after the first pass
                assert m.last_pass.storage == 0 and m.last_pass.host > 0
            if host == "0":
                assert m.last_pass.host == 0
        if host != "0":
            assert all(t.is_pinned() for st in m.pager.units if st.host is not None
                       for t in st.host.tensors)


def test_cuda_embedding_rows(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    vocab = 2048
    cfg = tiny_llama(vocab, layers=2)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    bigstore.save(unique_state_dict(ref), tmp_path / "m")
    ref = ref.cuda()
    ids = torch.randint(0, vocab, (1, 5), device="cuda")
    with torch.no_grad():
        want = ref.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    read = {}
    for rows in (True, False):
        with skeleton():
            sk = transformers.AutoModelForCausalLM.from_config(cfg)
        with offload(sk, tmp_path / "m", device="cuda", budget=vocab * 32 * 4 + 8192,
                     host_budget=0, embedding_rows=rows) as m, torch.no_grad():
            got = m.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            assert torch.equal(got, want)
            read[rows] = m.last_pass.storage  # a decode step: one token
    assert read[False] - read[True] == vocab * 32 * 4 - 32 * 4  # the table vs the row used
