"""Offload straight from the checkpoints people have: a safetensors file, a sharded Hugging Face
directory, and ``from_pretrained`` (with and without transformers installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

import bigstore
from bigstore.errors import NotAStoreError
from bigstore.format.safetensors import SafetensorsStore, open_weights
from bigstore.store import open_store
from bigstore.weights.offload import offload, skeleton, unique_state_dict
from tests._models import tiny_llama

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
safetensors_torch = pytest.importorskip("safetensors.torch")

VOCAB = 97


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A sharded Hugging Face directory (index + 2 shards, config, a tokenizer file)."""
    cfg = tiny_llama(VOCAB, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    ref = transformers.LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    d = tmp_path_factory.mktemp("hf") / "model"
    d.mkdir()
    sd = {k: v.contiguous() for k, v in unique_state_dict(ref).items()}
    names = sorted(sd)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    for fname, keys in shards.items():
        safetensors_torch.save_file({k: sd[k] for k in keys}, d / fname)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    cfg.save_pretrained(d)
    (d / "tokenizer_config.json").write_text('{"model_max_length": 64}')
    return d, ref


def _gen(m: Any, ids: torch.Tensor) -> torch.Tensor:
    return m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)


IDS = torch.randint(0, VOCAB, (2, 5), generator=torch.Generator().manual_seed(4))


def test_sharded_directory_is_a_read_only_store(hf_dir: tuple[Path, Any], tmp_path: Path
                                                ) -> None:
    d, ref = hf_dir
    store = open_weights(d)
    assert isinstance(store, SafetensorsStore)
    got = bigstore.load(d)
    want = unique_state_dict(ref)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    with bigstore.open(d) as st:  # row slices read only their bytes
        name = "model.embed_tokens.weight"
        assert torch.equal(st[name][3:9].torch(), want[name][3:9])
    with pytest.raises(NotAStoreError, match="refusing to overwrite"):
        bigstore.save({"x": torch.zeros(2)}, d)


def test_offload_from_files_equals_from_converted_store(hf_dir: tuple[Path, Any],
                                                        tmp_path: Path) -> None:
    d, ref = hf_dir
    bigstore.convert(d, tmp_path / "store")
    # the converted store keeps what from_pretrained needs
    store = open_store(tmp_path / "store")
    assert store.exists("config.json") and store.exists("tokenizer_config.json")
    single = tmp_path / "single.safetensors"
    safetensors_torch.save_file({k: v.contiguous() for k, v in unique_state_dict(ref).items()},
                                single)
    with torch.no_grad():
        want = _gen(ref, IDS)
    outs = []
    for src in (d, single, tmp_path / "store"):
        with skeleton():
            sk = transformers.LlamaForCausalLM(ref.config).to(torch.bfloat16).eval()
        with offload(sk, src, device="cpu", budget="40KiB", host_budget=0) as m, \
                torch.no_grad():
            outs.append(_gen(m, IDS))
            assert m.stats.evictions > 0
    assert all(torch.equal(o, want) for o in outs)


@pytest.mark.parametrize("source", ["dir", "store"])
def test_from_pretrained(hf_dir: tuple[Path, Any], tmp_path: Path, source: str) -> None:
    d, ref = hf_dir
    src: Path = d
    if source == "store":
        bigstore.convert(d, tmp_path / "store")
        src = tmp_path / "store"
    with bigstore.from_pretrained(src, device="cpu", budget="40KiB") as m, torch.no_grad():
        assert type(m.module).__name__ == "LlamaForCausalLM"
        assert next(m.module.parameters()).dtype == torch.bfloat16
        assert torch.equal(_gen(m, IDS), _gen(ref, IDS))


def test_from_pretrained_without_transformers_names_the_extra(hf_dir: tuple[Path, Any]) -> None:
    d, _ = hf_dir
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import bigstore\n"
        "from bigstore.errors import MissingDependencyError\n"
        f"try:\n    bigstore.from_pretrained({str(d)!r})\n"
        "except MissingDependencyError as e:\n    print('OK', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("OK") and "bigstore[hf]" in out.stdout, out.stderr


def test_a_directory_without_config_is_refused_clearly(tmp_path: Path) -> None:
    safetensors_torch.save_file({"w": torch.zeros(3)}, tmp_path / "model.safetensors")
    with pytest.raises(NotAStoreError, match=r"config\.json"):
        bigstore.from_pretrained(tmp_path)
