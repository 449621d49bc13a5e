"""Offloaded generation (issue 9): bigstore's device/host/storage tiers against accelerate,
against the resident model and against the read bound, all measured in one run.

Models (random weights from transformers configs, no hub): a GPT-2-medium shape (tied head)
and a Llama-style shape (untied head), fp32 and bf16. Workloads: the prompt's forward pass and
a 32-token greedy generation with the model's KV cache. Cells: budget (share of the model) x
host tier on (auto) / off x cold (page cache of the store's files dropped) / warm. accelerate
gets the same device budget (``max_memory={"cpu": budget}``), the rest offloaded to disk.

Bounds, same run: compute = the resident model's time; read = the plain read of the bytes that
must move per pass (model minus budget) at the speed the store's files read cold (or warm).

    .venv/bin/python benchmarks/bench_generate.py --quick          # a small smoke run
    .venv/bin/python benchmarks/bench_generate.py --json out.json  # the full matrix
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

import bigstore
from bigstore.bench import drop_page_cache, read_seconds, store_files
from bigstore.bench.offload import accelerate_device_map
from bigstore.config import MiB
from bigstore.errors import BudgetError

Row = dict[str, Any]


def configs(quick: bool) -> dict[str, Any]:
    import transformers

    if quick:
        return {
            "gpt2": transformers.GPT2Config(n_layer=6, n_embd=256, n_head=4, vocab_size=8000,
                                            n_positions=256),
            "llama": transformers.LlamaConfig(
                num_hidden_layers=6, hidden_size=256, intermediate_size=704,
                num_attention_heads=4, num_key_value_heads=4, vocab_size=8000,
                tie_word_embeddings=False, max_position_embeddings=256),
        }
    return {
        "gpt2": transformers.GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257,
                                        n_positions=1024),
        "llama": transformers.LlamaConfig(
            num_hidden_layers=12, hidden_size=1024, intermediate_size=2816,
            num_attention_heads=16, num_key_value_heads=16, vocab_size=32000,
            tie_word_embeddings=False, max_position_embeddings=1024),
    }


def best(fn: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None) -> float:
    out = math.inf
    for _ in range(repeat):
        if before is not None:
            before()
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out = min(out, time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--models", default="gpt2,llama")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--budget", type=float, default=0.25, help="the main cells' budget share")
    ap.add_argument("--curve", default="0.1,0.25,0.5,0.75,1.0")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--no-accelerate", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(torch.get_num_threads())
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-generate-", dir=args.workdir))
    rows: list[Row] = []
    try:
        for name in args.models.split(","):
            for dt in args.dtypes.split(","):
                rows += run_model(name, configs(args.quick)[name], getattr(torch, dt), args,
                                  work / f"{name}-{dt}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


def run_model(name: str, cfg: Any, dtype: torch.dtype, args: argparse.Namespace,
              work: pathlib.Path) -> list[Row]:
    import transformers

    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).to(dtype).eval()
    store = work / "store"
    bigstore.save(bigstore.unique_state_dict(ref), store)
    model_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    files = store_files(store)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=g)
    gen = {"max_new_tokens": args.tokens, "min_new_tokens": args.tokens, "do_sample": False,
           "pad_token_id": 0}
    want, compute = _resident(ref, ids, gen, args.repeat)
    # the read speed of this store's bytes: cold (dropped page cache) and warm
    drop_page_cache(files)
    cold_s, total = read_seconds(files, direct=False, threads=4)
    warm_s, _ = read_seconds(files, direct=False, threads=4)
    speed = {"cold": total / cold_s, "warm": total / warm_s}
    acc_dir = None if args.no_accelerate else _accelerate_checkpoint(ref, work)
    del ref
    gc.collect()
    label = f"{name} {str(dtype).removeprefix('torch.')} ({model_bytes / 1e9:.2f} GB)"
    rows: list[Row] = []
    shares = sorted({args.budget, *(float(f) for f in args.curve.split(",") if f)})
    for share in shares:
        budget = int(model_bytes * share) + 4 * MiB  # alignment padding of the units
        streamed = max(0, model_bytes - budget)
        main = share == args.budget
        for state in ("cold", "warm") if main else ("warm",):
            for work_kind in ("forward", "generate") if main else ("generate",):
                passes = 1 if work_kind == "forward" else args.tokens
                bound = max(compute[work_kind], passes * streamed / speed[state])
                base = {"model": label, "share": share, "state": state, "work": work_kind,
                        "compute_s": compute[work_kind], "bound_s": bound}
                for host in ("auto", "0"):
                    try:
                        t, identical, pass_bytes = _bigstore(cfg, dtype, store, files, budget,
                                                             host, state, work_kind, ids, gen,
                                                             want, args.repeat)
                    except BudgetError as e:  # below the largest unit: a cell it cannot run
                        rows.append({**base, "who": f"bigstore host={host}", "s": None,
                                     "note": str(e)})
                        continue
                    rows.append({**base, "who": f"bigstore host={host}", "s": t,
                                 "identical": identical, "last_pass": pass_bytes})
                if acc_dir is not None and main:
                    t = _accelerate(cfg, dtype, acc_dir, budget, state, work_kind, ids, gen,
                                    args.repeat)
                    rows.append({**base, "who": "accelerate", "s": t})
    return rows


def _resident(ref: Any, ids: torch.Tensor, gen: dict[str, Any], repeat: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """The reference tokens, and the resident model's own time per workload (compute bound)."""
    with torch.no_grad():
        want = ref.generate(ids, **gen)
        return want, {"forward": best(lambda: ref(ids), repeat),
                      "generate": best(lambda: ref.generate(ids, **gen), repeat)}


def _bigstore(cfg: Any, dtype: torch.dtype, store: pathlib.Path, files: list[pathlib.Path],
              budget: int, host: str, state: str, work_kind: str, ids: torch.Tensor,
              gen: dict[str, Any], want: torch.Tensor, repeat: int
              ) -> tuple[float, bool, dict[str, int]]:
    import transformers

    with bigstore.skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg).to(dtype)
    host_budget = None if host == "auto" else 0
    identical = True

    def run(m: Any) -> None:
        nonlocal identical
        if work_kind == "forward":
            m(ids)
        else:
            identical = identical and bool(torch.equal(m.generate(ids, **gen), want))

    if state == "cold":  # a fresh handle, the page cache of the store dropped: the first use
        times = []
        for _ in range(repeat):
            drop_page_cache(files)
            t0 = time.perf_counter()
            with bigstore.offload(sk, store, device="cpu", budget=budget,
                                  host_budget=host_budget) as m, torch.no_grad():
                run(m)
                times.append(time.perf_counter() - t0)
                last = m.last_pass.to_dict()
        return min(times), identical, last
    with bigstore.offload(sk, store, device="cpu", budget=budget, host_budget=host_budget) as m, \
            torch.no_grad():
        run(m)  # the first use records the order (and fills the host tier)
        t = best(lambda: run(m), repeat)
        return t, identical, m.last_pass.to_dict()


def _accelerate_checkpoint(ref: Any, work: pathlib.Path) -> pathlib.Path | None:
    try:
        import accelerate  # noqa: F401
        from safetensors.torch import save_file
    except ImportError:
        return None
    d = work / "hf"
    d.mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in bigstore.unique_state_dict(ref).items()},
              d / "model.safetensors", metadata={"format": "pt"})
    return d


def _accelerate(cfg: Any, dtype: torch.dtype, ckpt: pathlib.Path, budget: int, state: str,
                work_kind: str, ids: torch.Tensor, gen: dict[str, Any], repeat: int) -> float:
    import accelerate
    import transformers

    def load() -> Any:
        off = ckpt.parent / "acc-offload"
        shutil.rmtree(off, ignore_errors=True)
        with accelerate.init_empty_weights():
            m = transformers.AutoModelForCausalLM.from_config(cfg).to(dtype)
        m.tie_weights()
        block = type(m.base_model.layers[0] if hasattr(m.base_model, "layers")
                     else m.base_model.h[0]).__name__
        dmap = accelerate_device_map(m, budget, [block])
        return accelerate.load_checkpoint_and_dispatch(
            m, str(ckpt), device_map=dmap, offload_folder=str(off),
            no_split_module_classes=[block]), off

    def run(m: Any) -> None:
        with torch.no_grad():
            m(ids) if work_kind == "forward" else m.generate(ids, **gen)

    m, off = load()
    if state == "cold":
        times = []
        for _ in range(repeat):
            drop_page_cache(store_files(off))
            t0 = time.perf_counter()
            run(m)
            times.append(time.perf_counter() - t0)
        return min(times)
    run(m)
    return best(lambda: run(m), repeat)




def print_table(rows: list[Row]) -> None:
    print(f"{'model':28s} {'budget':>6s} {'state':5s} {'work':8s} {'who':20s} {'s':>8s} "
          f"{'x bound':>7s} {'x compute':>9s} {'vs acc':>6s}  last pass (storage/host/resident)")
    acc = {(r["model"], r["share"], r["state"], r["work"]): r["s"] for r in rows
           if r["who"] == "accelerate"}
    for r in rows:
        if r["s"] is None:
            print(f"{r['model']:28s} {r['share']:6.0%} {r['state']:5s} {r['work']:8s} "
                  f"{r['who']:20s} {'-':>8s}  {r['note']}")
            continue
        key = (r["model"], r["share"], r["state"], r["work"])
        vs = f"{acc[key] / r['s']:.2f}x" if key in acc and r["who"] != "accelerate" else ""
        lp = r.get("last_pass")
        lps = (f"{lp['storage'] / 1e6:.0f}/{lp['host'] / 1e6:.0f}/{lp['resident'] / 1e6:.0f} MB"
               if lp else "")
        same = "" if r.get("identical", True) else "  NOT IDENTICAL"
        print(f"{r['model']:28s} {r['share']:6.0%} {r['state']:5s} {r['work']:8s} {r['who']:20s} "
              f"{r['s']:8.3f} {r['s'] / r['bound_s']:7.2f} {r['s'] / r['compute_s']:9.2f} "
              f"{vs:>6s}  {lps}{same}")


if __name__ == "__main__":
    main()
