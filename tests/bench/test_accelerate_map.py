"""The accelerate contender really offloads: its device map keeps part of the model on "disk"
under a small budget, and the dispatched model computes what the resident model computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from bigstore.bench.offload import accelerate_device_map

transformers = pytest.importorskip("transformers")
accelerate = pytest.importorskip("accelerate")
safetensors_torch = pytest.importorskip("safetensors.torch")


def _config(kind: str) -> Any:
    if kind == "llama":  # untied head; accelerate maps it as {"": "disk"} under a small budget
        return transformers.LlamaConfig(hidden_size=64, intermediate_size=128,
                                        num_hidden_layers=4, num_attention_heads=4,
                                        num_key_value_heads=4, vocab_size=1000,
                                        bos_token_id=0, eos_token_id=1)
    return transformers.GPT2Config(n_embd=64, n_layer=4, n_head=4, vocab_size=1000,  # tied
                                   bos_token_id=0, eos_token_id=1)


def _bytes(params: Any) -> int:
    return sum(p.numel() * p.element_size() for p in params)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("share", [0.1, 0.25, 0.5])
def test_map_offloads_and_outputs_match(kind: str, share: float, tmp_path: Path) -> None:
    cfg = _config(kind)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    ckpt = tmp_path / "model.safetensors"
    unique = {k: v.contiguous() for k, v in ref.state_dict().items() if k != "lm_head.weight"
              or not cfg.tie_word_embeddings}
    safetensors_torch.save_file(unique, ckpt)

    with accelerate.init_empty_weights():
        m = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    m.tie_weights()
    total = _bytes(m.parameters())
    budget = int(total * share)
    block = type(m.base_model.layers[0] if kind == "llama" else m.base_model.h[0]).__name__
    dmap = accelerate_device_map(m, budget, [block])

    assert set(dmap.values()) == {"cpu", "disk"}, dmap  # neither all resident nor all offloaded
    on_cpu = {id(p): p for name, tier in dmap.items() if tier == "cpu"
              for p in (m.get_submodule(name).parameters() if name else m.parameters())}
    first = next(iter(dmap))
    assert _bytes(on_cpu.values()) <= max(budget, _bytes(m.get_submodule(first).parameters()))
    if kind == "gpt2" and "lm_head" in dmap:  # the tied head stays with its embedding
        assert dmap["lm_head"] == dmap["transformer.wte"]

    dispatched = accelerate.load_checkpoint_and_dispatch(
        m, str(ckpt), device_map=dmap, offload_folder=str(tmp_path / "off"),
        no_split_module_classes=[block])
    ids = torch.randint(0, cfg.vocab_size, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = ref(ids).logits
        got = dispatched(ids).logits
    assert torch.equal(got, want)
