"""bigstore.offload on tiny `transformers` models built from configs (random weights, no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import bigstore
from bigstore.weights.offload import offload, skeleton, unique_state_dict
from tests._models import tiny_gpt2, tiny_llama

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VOCAB = 97


def _configs() -> dict[str, Any]:
    return {
        "gpt2": tiny_gpt2(VOCAB),
        "llama": tiny_llama(VOCAB, tied=True),
    }


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("budget_kib", [64, 160, 4096])
def test_causal_lm_generate_identical(tmp_path: Path, arch: str, budget_kib: int) -> None:
    cfg = _configs()[arch]
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    assert ref.lm_head.weight is ref.get_input_embeddings().weight  # tied
    bigstore.save(unique_state_dict(ref), tmp_path / "m")
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want_logits = ref(ids).logits
        want = ref.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)
    with skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    budget = budget_kib * 1024
    with offload(sk, tmp_path / "m", device="cpu", budget=budget, prefetch=2) as m:
        with torch.no_grad():
            assert torch.equal(m(ids).logits, want_logits)
            # token by token with the model's own KV cache
            assert torch.equal(
                m.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0), want
            )
        assert m.stats.peak_resident_bytes <= budget
        if budget_kib == 4096:
            assert m.stats.evictions == 0
            # every weight read once: the paged units' and the resident vectors'
            assert m.bytes_read == sum(p.nbytes for p in ref.parameters())


def test_bert_with_non_persistent_buffers(tmp_path: Path) -> None:
    cfg = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
        vocab_size=VOCAB, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    ref = transformers.BertModel(cfg).eval()
    sd = unique_state_dict(ref)
    assert "embeddings.position_ids" not in sd  # non-persistent: not in the checkpoint
    bigstore.save(sd, tmp_path / "bert")
    with skeleton():
        sk = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, VOCAB, (2, 7), generator=torch.Generator().manual_seed(3))
    # the budget just above the largest unit (the word embedding): evict it, stream the rest
    probe = offload(sk, tmp_path / "bert", device="cpu", budget="1GiB")
    largest = max(st.nbytes for st in probe.pager.units) + probe.pager.fixed_bytes
    probe.close()
    with offload(sk, tmp_path / "bert", device="cpu", budget=largest + 1024) as m, torch.no_grad():
        for _ in range(2):
            out = m(ids)
            want = ref(ids)
            assert torch.equal(out.last_hidden_state, want.last_hidden_state)
            assert torch.equal(out.pooler_output, want.pooler_output)
        assert m.stats.evictions > 0
