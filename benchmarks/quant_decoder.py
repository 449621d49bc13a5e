"""Quality of group-wise int8/int4 weights on a trained *decoder*: top-1 agreement and mean KL
of the next-token distribution against the unquantized model (issue 10's decoder metrics).

No trained decoder ships on the package index (and hub downloads are off), so this script
trains one: a small Llama (4 layers, d=192, BPE vocabulary of 4096 trained here) on the
docstrings of the Python standard library's source files (read with ``ast``, nothing
imported), about six minutes on two cores. It is a real trained model, if a small one: its
held-out loss is printed beside the loss of uniform guessing. The trained weights are kept in
``--workdir`` (a bigstore store) and reused by later runs.

Then, on held-out docstrings (other files than those trained on):

- each variant is written with ``bigstore.quantize`` to a store and loaded back (the whole
  path), the policy's defaults choosing the tensors (linear weights; embeddings, norms, head
  kept);
- GPTQ rows calibrate (``bigstore.calibrate``) on training text, never on the measured text;
- top-1 agreement: the share of positions whose most likely next token is the float model's;
  KL: mean ``KL(p_float || p_quantized)`` over positions, in nats.

    .venv/bin/python benchmarks/quant_decoder.py [--workdir DIR] [--steps 1500] [--json]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import math
import pathlib
import sys
import sysconfig
import tempfile
import time
from typing import Any

import torch
import torch.nn.functional as F

import bigstore

SEQ = 64


def docstrings(held_out: bool) -> list[str]:
    """Docstrings of the standard library's source files, split by file (deterministic): one
    file in eight is held out."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out: list[str] = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("test", "idlelib/idle_test", "lib2to3/tests", "site-packages")):
            continue
        if (hashlib.sha1(rel.encode()).digest()[0] % 8 == 0) != held_out:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef
                          | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= 8:
                    out.append(" ".join(doc.split()))
    return out


def tokenizer(texts: list[str], vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<unk>", "<eos>"],
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def sequences(tok: Any, texts: list[str]) -> torch.Tensor:
    """The texts as one token stream (``<eos>`` between them), cut into rows of SEQ tokens."""
    eos = tok.token_to_id("<eos>")
    ids: list[int] = []
    for enc in tok.encode_batch(texts):
        ids += [*enc.ids, eos]
    n = len(ids) // SEQ
    return torch.tensor(ids[: n * SEQ]).view(n, SEQ)


def new_model(vocab: int) -> Any:
    import transformers

    cfg = transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=SEQ,
        tie_word_embeddings=False)
    return transformers.LlamaForCausalLM(cfg)


def train(model: Any, data: torch.Tensor, steps: int, batch: int) -> list[float]:
    from tqdm.auto import tqdm

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps,
                                                pct_start=0.1)
    g = torch.Generator().manual_seed(0)
    model.train()
    losses = []
    for _ in tqdm(range(steps), desc="train", file=sys.stderr):
        x = data[torch.randint(0, len(data), (batch,), generator=g)]
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    return losses


def trained(work: pathlib.Path, steps: int) -> tuple[Any, Any, dict[str, Any]]:
    """The trained model and its tokenizer, from ``work`` when an earlier run left them."""
    from tokenizers import Tokenizer

    url = work / f"decoder-{steps}.bigstore"
    if url.exists():
        with bigstore.open(url) as ts:
            tok = Tokenizer.from_str(bytes(memoryview(ts.store.get("tokenizer.json"))).decode())
            info = json.loads(bytes(memoryview(ts.store.get("train.json"))))
        model = new_model(tok.get_vocab_size())
        model.load_state_dict(bigstore.load(url))
        return model.eval(), tok, info
    texts = docstrings(held_out=False)
    tok = tokenizer(texts, 4096)
    data = sequences(tok, texts)
    torch.manual_seed(0)
    model = new_model(tok.get_vocab_size())
    t0 = time.perf_counter()
    losses = train(model, data, steps, 32)
    info = {"steps": steps, "train_tokens": data.numel(), "train_s": time.perf_counter() - t0,
            "final_train_loss": sum(losses[-50:]) / len(losses[-50:])}
    bigstore.save(bigstore.unique_state_dict(model), url, files={
        "tokenizer.json": tok.to_str().encode(), "train.json": json.dumps(info).encode()})
    return model, tok, info


def logits(model: Any, data: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(input_ids=data[i:i + 16]).logits.double()
                          for i in range(0, len(data), 16)])


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="quant-decoder-"))
    work.mkdir(parents=True, exist_ok=True)
    model, tok, info = trained(work, args.steps)
    held = sequences(tok, docstrings(held_out=True))[: args.eval_rows]
    calib = sequences(tok, docstrings(held_out=False))
    calib = calib[torch.randperm(len(calib), generator=torch.Generator().manual_seed(1))]
    calib = calib[: args.calibration_rows]
    ref = logits(model, held)
    ref_logp = F.log_softmax(ref, -1)
    top = ref.argmax(-1)
    held_loss = float(F.cross_entropy(ref[:, :-1].reshape(-1, ref.shape[-1]),
                                      held[:, 1:].reshape(-1)))
    cal = bigstore.calibrate(model, [{"input_ids": calib[i:i + 16]}
                                     for i in range(0, len(calib), 16)])
    sd = bigstore.unique_state_dict(model)
    rows = []
    for label, scheme, gptq in [("int8 g64", "int8", False), ("int8 g64 GPTQ", "int8", True),
                                ("int4 g64", "int4", False), ("int4 g64 GPTQ", "int4", True)]:
        url = work / f"q-{scheme}-{'gptq' if gptq else 'rtn'}"
        summary = bigstore.quantize(sd, url, scheme, 64, calibration=cal if gptq else None,
                                    overwrite=True)
        q = new_model(tok.get_vocab_size())
        q.load_state_dict(bigstore.load(url))
        out = logits(q.eval(), held)
        logp = F.log_softmax(out, -1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
        with bigstore.open(url) as ts:
            specs = [ts.quantization(n) for n in ts]
        qp = sum(math.prod(s.shape) for s in specs if s is not None)
        rows.append({"variant": label, "top1_agreement": float((out.argmax(-1) == top).float()
                                                               .mean()),
                     "kl_mean": float(kl.mean()), "kl_p99": float(kl.quantile(0.99)),
                     "quantized": summary["quantized"], "calibrated": summary["calibrated"],
                     "quantized_params_frac": qp / sum(t.numel() for t in sd.values()),
                     "bits_per_weight": 8 * sum(s.nbytes for s in specs if s is not None) / qp})
    return {"model": "llama 4x192, BPE 4096, trained here on stdlib docstrings",
            "params": sum(t.numel() for t in sd.values()), **info,
            "held_out_loss": held_loss, "uniform_loss": math.log(tok.get_vocab_size()),
            "eval_tokens": held.numel(), "calibration_tokens": calib.numel(), "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default=None, help="keeps the trained model for later runs")
    ap.add_argument("--steps", type=int, default=1500, help="training steps (batch 32 x 64)")
    ap.add_argument("--eval-rows", type=int, default=128, help="held-out rows of 64 tokens")
    ap.add_argument("--calibration-rows", type=int, default=128, help="GPTQ calibration rows")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    res = run(args)
    if args.json:
        print(json.dumps(res, indent=1))
        return 0
    print(f"{res['model']}: {res['params'] / 1e6:.2f}M params, {res['steps']} steps on "
          f"{res['train_tokens'] / 1e3:.0f}k tokens ({res['train_s']:.0f} s); held-out loss "
          f"{res['held_out_loss']:.3f} nats/token (uniform {res['uniform_loss']:.3f}); "
          f"{res['eval_tokens']} held-out tokens measured, {res['calibration_tokens']} "
          "training tokens calibrate GPTQ")
    print(f"{'variant':16} {'top-1 agree':>11} {'KL mean':>9} {'KL p99':>8} {'bits/w':>7} "
          f"{'quantized':>9}")
    for r in res["rows"]:
        print(f"{r['variant']:16} {r['top1_agreement']:11.4f} {r['kl_mean']:9.5f} "
              f"{r['kl_p99']:8.4f} {r['bits_per_weight']:7.3f} {r['quantized_params_frac']:9.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
