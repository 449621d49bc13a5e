"""Offloaded inference: bigstore.offload vs accelerate's big-model path, against the bound.

Same model (GPT-2-style, random weights), same budget, same prompt. Cells: {cold, warm} page
cache x {1-token, N-token} forwards. The bound is measured in the same run:
max(compute-only time of the fully resident model, raw sequential read time of the bytes that
must be streamed = model - budget: cold with O_DIRECT from disk, warm from the page cache).
Then a curve of bigstore's tokens/s against the budget (10%..100% of the model).

    .venv/bin/python benchmarks/bench_offload.py                 # 1.64 GB model, 256 MiB budget
    .venv/bin/python benchmarks/bench_offload.py --quick         # small, seconds
"""

from __future__ import annotations

import argparse
import gc
import json
import pathlib
import statistics
import tempfile
import time
from functools import partial
from typing import Any

import torch

from bigstore.bench import disk_bound_seconds, store_files
from bigstore.demo._offload import drop_page_cache, gpt_config, sequential_read_bandwidth

MiB = 1 << 20


def _time(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _bigstore_cell(
    cfg: Any, url: pathlib.Path, budget: int, ids: torch.Tensor, cold: bool, repeat: int
) -> tuple[float, int]:
    import transformers

    from bigstore.weights.offload import offload, skeleton

    with skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with offload(sk, url, device="cpu", budget=budget, prefetch=2, drop_cache=cold) as m, \
            torch.no_grad():
        m(ids)  # first pass: records the execution order (and, warm, fills the page cache)
        times, reads = [], []
        for _ in range(repeat):
            if cold:
                drop_page_cache(url)
            r0 = m.bytes_read
            t0 = time.perf_counter()
            m(ids)
            times.append(time.perf_counter() - t0)
            reads.append(m.bytes_read - r0)
    return statistics.median(times), int(statistics.median(reads))


def _accelerate_model(cfg: Any, ckpt: pathlib.Path, folder: pathlib.Path, budget: int) -> Any:
    import transformers
    from accelerate import infer_auto_device_map, init_empty_weights, load_checkpoint_and_dispatch

    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    model.tie_weights()
    device_map = infer_auto_device_map(
        model, max_memory={"cpu": budget, "disk": 1 << 40},
        no_split_module_classes=["GPT2Block"],
    )
    if "cpu" not in device_map.values():  # accelerate cannot load a map that is all "disk"
        device_map[next(iter(device_map))] = "cpu"
    return load_checkpoint_and_dispatch(
        model, str(ckpt), device_map=device_map, offload_folder=str(folder),
        no_split_module_classes=["GPT2Block"],
    )


def _accelerate_cell(
    model: Any, folder: pathlib.Path, ids: torch.Tensor, cold: bool, repeat: int
) -> float:
    with torch.no_grad():
        model(ids)
        times = []
        for _ in range(repeat):
            if cold:
                drop_page_cache(folder)
            t0 = time.perf_counter()
            model(ids)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model (smoke run)")
    ap.add_argument("--budget", default="256MiB")
    ap.add_argument("--tokens", type=int, default=64, help="length of the multi-token forward")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-accelerate", action="store_true")
    ap.add_argument("--curve", default="0.1,0.25,0.5,0.75,1.0")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import transformers

    import bigstore
    from bigstore.weights.offload import unique_state_dict

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(torch.get_num_threads())
    work = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="bench-offload-"))
    work.mkdir(parents=True, exist_ok=True)
    cfg = gpt_config(args.quick)
    budget = bigstore.parse_bytes(args.budget) if not args.quick else 320 * 1024
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    weights = unique_state_dict(model)
    model_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    url = work / "store"
    bigstore.save(weights, url)
    del weights
    ckpt = work / "hf"
    model.save_pretrained(ckpt)
    gen = torch.Generator().manual_seed(1)
    inputs = {
        1: torch.randint(0, cfg.vocab_size, (1, 1), generator=gen),
        args.tokens: torch.randint(0, cfg.vocab_size, (1, args.tokens), generator=gen),
    }
    compute: dict[int, float] = {}
    with torch.no_grad():
        for n, x in inputs.items():
            compute[n] = _time(partial(model, x), args.repeat + 1)
    del model
    gc.collect()

    # the disk's bound: the best O_DIRECT read of the store with 1-8 readers in flight
    best_s, best_bytes, readers = disk_bound_seconds(store_files(url))
    cold_bw, method = best_bytes / best_s, f"O_DIRECT, {readers} reader(s)"
    warm_bw, _ = sequential_read_bandwidth(url, cold=False)
    must_stream = max(0, model_bytes - budget)
    print(f"model {model_bytes / 1e9:.2f} GB, budget {budget / MiB:.0f} MiB, must stream "
          f"{must_stream / 1e9:.2f} GB per forward; disk {cold_bw / 1e9:.2f} GB/s ({method}), "
          f"page cache {warm_bw / 1e9:.2f} GB/s; {torch.get_num_threads()} torch threads")

    acc_model = None
    folder = work / "acc-offload"
    if not args.no_accelerate:
        acc_model = _accelerate_model(cfg, ckpt, folder, budget)

    rows: list[dict[str, Any]] = []
    for cold in (True, False):
        bw = cold_bw if cold else warm_bw
        for n, ids in inputs.items():
            bound = max(compute[n], must_stream / bw)
            t_bs, read = _bigstore_cell(cfg, url, budget, ids, cold, args.repeat)
            row: dict[str, Any] = {
                "cache": "cold" if cold else "warm", "tokens": n,
                "bound_s": bound, "compute_s": compute[n], "stream_s": must_stream / bw,
                "bigstore_s": t_bs, "bigstore_tok_s": n / t_bs,
                "bigstore_gb_s": read / t_bs / 1e9, "bigstore_read_gb": read / 1e9,
                "bigstore_vs_bound": t_bs / bound,
            }
            if acc_model is not None:
                t_acc = _accelerate_cell(acc_model, folder, ids, cold, args.repeat)
                row.update(accelerate_s=t_acc, accelerate_tok_s=n / t_acc,
                           accelerate_vs_bound=t_acc / bound, speedup_vs_accelerate=t_acc / t_bs)
            rows.append(row)
            print(
                f"{row['cache']:4} {n:3}-token: bound {bound:.3f} s | bigstore {t_bs:.3f} s "
                f"({row['bigstore_tok_s']:.2f} tok/s, {row['bigstore_gb_s']:.2f} GB/s, "
                f"{row['bigstore_vs_bound']:.2f}x bound)"
                + (f" | accelerate {row['accelerate_s']:.3f} s "
                   f"({row['accelerate_vs_bound']:.2f}x bound; bigstore "
                   f"{row['speedup_vs_accelerate']:.2f}x faster)" if acc_model is not None else "")
            )
    del acc_model
    gc.collect()

    curve = []
    for frac in (float(f) for f in args.curve.split(",")):
        # +1 MiB: per-tensor alignment padding, so that 100% really holds the whole model
        b = max(int(model_bytes * frac) + MiB, budget if args.quick else 0)
        t, read = _bigstore_cell(cfg, url, b, inputs[1], True, args.repeat)
        curve.append({"budget_frac": frac, "budget": b, "tok_s": 1 / t, "read_gb": read / 1e9})
        print(f"curve: budget {frac:4.0%} of the model ({b / MiB:.0f} MiB): {1 / t:.2f} tok/s "
              f"(1-token forward, cold), read {read / 1e9:.2f} GB")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"cells": rows, "curve": curve}, indent=1))


if __name__ == "__main__":
    main()
