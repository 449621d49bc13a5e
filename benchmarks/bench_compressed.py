"""Compressed weights (issue 10, "Speed"): one model stored raw (bf16), lossless, int8 and int4,
side by side in one run.

Model: GPT-2-medium's shape (24 blocks, d=1024, vocab 50257), random weights from a
transformers config, bfloat16. For each store:

- offloaded generation on the CPU with a budget of 25% of the model (bf16 bytes): tokens/s of
  ``generate`` (greedy, a few new tokens), cold (the files a contender reads are dropped from
  the page cache with ``posix_fadvise(DONTNEED)`` before every forward pass, so every pass reads
  the disk; bigstore runs without its host-RAM tier there) and warm (everything in the page
  cache; bigstore with its default host tier); bytes per pass (read from the disk, cold;
  delivered into the budget, logical); ratio to the raw bf16 store; accelerate with the same
  budget on the bf16 checkpoint (its disk offload). All contenders run round-robin, best of N,
  so a noisy neighbour slows them alike;
- ``bigstore.load`` of the whole store, cold and warm, against the plain read of the raw bf16
  store's bytes (one buffered sequential pass);
- the decode-only time of each codec (chunks already in RAM, the reader's pool), so a cell bound
  by decoding rather than I/O shows it: decode seconds per pass next to the pass time, beside
  the other bounds of a pass: its disk bytes at the disk's O_DIRECT speed (cold), the
  resident model's compute time per generated token, and that compute time measured while the
  pool decodes the store beside it without pause (decode and compute share the cores and the
  memory bus), and each store's no-disk pass: the store offloaded without a host tier with
  every file in the page cache (each pass fills every streamed unit again, copied out of the
  cache, the disk costs nothing; for the raw store that is the pager's own cost), and the
  resident model's compute with the torch threads a decoding pass runs with.

Every offloaded run's generated tokens are checked against the resident model loaded from the
same store.

    .venv/bin/python benchmarks/bench_compressed.py --workdir DIR [--json out.json]
    .venv/bin/python benchmarks/bench_compressed.py --quick        # seconds, a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import bigstore
from bigstore.bench import disk_bound_seconds, drop_page_cache, read_seconds, store_files
from bigstore.bench.offload import accelerate_device_map
from bigstore.format import QuantizedLayout, lossless
from bigstore.format.codecs import CRC_BYTES
from bigstore.io import get_executor
from bigstore.io.dequant import compute_dtype, dequantize_parts
from bigstore.weights.offload import pass_threads

STORES = ("raw", "lossless", "int8", "int4")
MB = 1e6


def gpt_config(quick: bool) -> Any:
    import transformers

    if quick:
        return transformers.GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=2048,
                                       n_positions=128)
    return transformers.GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257,
                                   n_positions=1024)


def _io_read_bytes() -> int:
    """Bytes this process caused to be fetched from storage (Linux /proc/self/io)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    return 0


def _best(fn: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None
          ) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        got = fn()
        dt = time.perf_counter() - t0
        if dt < best:
            best, out = dt, got
    return best, out


def _disk_bytes(url: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in store_files(url))


# -- decode only ----------------------------------------------------------------------------------
def decode_seconds(url: pathlib.Path, repeat: int) -> tuple[float, int]:
    """Best time to decode every compressed chunk / quantized tensor of the store from RAM with
    the reader's pool, and the decoded (logical) bytes. Raw chunks cost nothing: (0, 0)."""
    jobs = decode_jobs(url)
    if not jobs:
        return 0.0, 0
    pool = get_executor()
    t, n = _best(lambda: sum(pool.map(lambda j: j(), jobs)), repeat)
    return t, int(n)


def contended_compute_seconds(model: Any, ids: torch.Tensor, gkw: dict[str, Any],
                              url: pathlib.Path, repeat: int) -> float:
    """Best time of the resident model's ``generate`` while the reader's pool decodes the
    store's chunks without pause beside it: how much decoding slows the compute on these cores
    and memory bus. No strict floor of an offloaded pass, which decodes with fewer threads and
    only part of the time (cold int4 passes ran below it in runs O and R, NOTES)."""
    import threading

    jobs = decode_jobs(url)
    pool = get_executor()
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            for _ in pool.map(lambda j: j(), jobs):
                pass

    t = threading.Thread(target=churn, daemon=True)
    t.start()
    try:
        with torch.no_grad():
            best, _ = _best(lambda: model.generate(ids, **gkw), repeat)
    finally:
        stop.set()
        t.join()
    return best


def decode_jobs(url: pathlib.Path) -> list[Callable[[], int]]:
    """One job per compressed chunk / quantized tensor, its input already in RAM."""
    jobs: list[Callable[[], int]] = []
    with bigstore.open(url) as ts:
        for name in ts:
            lay = ts.meta(name)
            if isinstance(lay, QuantizedLayout):
                parts = ts.load([name], dequantize=False)[name]
                jobs.append(_dequant_job(lay, parts))
            elif lay.codec.compressor == "blosc":
                for k in range(lay.n_chunks):
                    blob = (url / lay.chunk_key(k)).read_bytes()[:-CRC_BYTES]
                    jobs.append(_blosc_job(blob, lay.chunk_nbytes))
    return jobs


def _blosc_job(blob: bytes, nbytes: int) -> Callable[[], int]:
    out = np.empty(nbytes, np.uint8)
    out[:] = 0  # pages faulted in once, as the reader's destination would be

    def run() -> int:
        lossless.decode(blob, out)
        return nbytes

    return run


def _dequant_job(lay: QuantizedLayout, parts: Any) -> Callable[[], int]:
    spec = lay.quant
    dt = compute_dtype(spec.dtype)
    out = np.zeros((spec.rows, spec.cols), np.float32 if dt == "float32" else np.uint16)
    packed = parts.packed.numpy()
    scales = parts.scales.view(torch.int16).numpy().view(np.uint16)
    zeros = None if parts.zeros is None else parts.zeros.numpy()

    def run() -> int:
        dequantize_parts(spec, packed, scales, zeros, dt, out)
        return int(out.nbytes)

    return run


# -- load all -------------------------------------------------------------------------------------
def load_seconds(url: pathlib.Path, cold: bool, repeat: int) -> float:
    def run() -> None:
        sd = bigstore.load(url)
        del sd

    t, _ = _best(run, repeat, (lambda: drop_page_cache(store_files(url))) if cold else None)
    return t


# -- offloaded generation -------------------------------------------------------------------------
def _fadvise_dontneed(files: list[pathlib.Path]) -> None:
    """Drop the files' clean pages (no sync: nothing is being written while generating)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def generation_cells(cfg: Any, urls: dict[str, pathlib.Path], budget: int, ids: torch.Tensor,
                     gkw: dict[str, Any], cold: bool, repeat: int,
                     expect: dict[str, torch.Tensor], others: dict[str, tuple[Any, list[Any]]]
                     ) -> dict[str, dict[str, Any]]:
    """Best-of-``repeat`` ``generate`` of every store offloaded, and of ``others`` (name ->
    (model, files it reads)), interleaved round by round so that a noisy neighbour slows all
    of them alike. Cold: the files each contender reads are dropped from the page cache before
    every forward pass (a pre-hook), so every pass of every contender reads the disk."""
    import transformers

    from bigstore.weights.offload import offload, skeleton

    new = gkw["max_new_tokens"]
    with contextlib.ExitStack() as stack, torch.no_grad():
        runs: dict[str, tuple[Any, Any, list[Any]]] = {}  # name -> (callable, offloaded, files)
        for s, url in urls.items():
            with skeleton():
                sk = transformers.AutoModelForCausalLM.from_config(
                    cfg, torch_dtype=torch.bfloat16).eval()
            # cold: no host tier, or after the first pass nothing would be read at all (the
            # tier keeps every unit) and the cells would measure no storage path
            m = stack.enter_context(offload(sk, url, device="cpu", budget=budget, prefetch=2,
                                            drop_cache=cold, host_budget=0 if cold else None))
            if not torch.equal(m.generate(ids, **gkw), expect[s]):  # also records the order
                raise AssertionError(f"{s}: offloaded tokens differ from the resident model's")
            runs[s] = (m, m, store_files(url))
            if cold:
                files = store_files(url)
                h = sk.register_forward_pre_hook(lambda *_a, f=files: _fadvise_dontneed(f))
                stack.callback(h.remove)
        for name, (model, files) in others.items():
            model.generate(ids, **gkw)
            runs[name] = (model, None, files)
            if cold and files:
                h = model.register_forward_pre_hook(lambda *_a, f=files: _fadvise_dontneed(f))
                stack.callback(h.remove)
        best: dict[str, dict[str, Any]] = {}
        for _ in range(repeat):
            for name, (model, off, files) in runs.items():
                if cold:
                    drop_page_cache(files)
                p0 = off.stats.passes if off is not None else 0
                b0 = off.bytes_read if off is not None else 0
                d0 = _io_read_bytes()
                t0 = time.perf_counter()
                out = model.generate(ids, **gkw)
                dt = time.perf_counter() - t0
                passes = max(1, off.stats.passes - p0) if off is not None else new
                cell = {"s": dt, "tok_s": new / dt, "passes": passes, "s_per_pass": dt / passes,
                        "disk_mb_per_pass": (_io_read_bytes() - d0) / passes / MB}
                if off is not None:
                    cell["logical_mb_per_pass"] = (off.bytes_read - b0) / passes / MB
                    # host memory outside the budget: stored bytes read ahead (CPU staging),
                    # the most held at once since the store was offloaded
                    cell["staging_mb"] = off.filler.staging.peak / MB
                    assert torch.equal(out, expect[name])
                if name not in best or dt < best[name]["s"]:
                    best[name] = cell
    return best


def _compute_with_threads(model: Any, ids: torch.Tensor, gkw: dict[str, Any], threads: int,
                          repeat: int) -> float:
    """Best ``generate`` time of the resident model with ``threads`` torch threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            best, _ = _best(lambda: model.generate(ids, **gkw), repeat)
    finally:
        torch.set_num_threads(before)
    return best


def no_disk_seconds(cfg: Any, url: pathlib.Path, budget: int, ids: torch.Tensor,
                        gkw: dict[str, Any], repeat: int) -> float:
    """Best ``generate`` time of the store offloaded with no host tier, every file in the page
    cache: each pass fills every streamed unit again (maps, or copies out of the page cache
    and decodes) but the disk costs nothing. For the raw store it is the pager's own cost of a
    pass on this machine. For a decoded store it is no strict floor of a cold pass: with
    ``drop_cache`` that one reads past the page cache into staging (no copy) and can be
    faster."""
    import transformers

    from bigstore.weights.offload import offload, skeleton

    with skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16).eval()
    with offload(sk, url, device="cpu", budget=budget, prefetch=2, host_budget=0) as m, \
            torch.no_grad():
        m.generate(ids, **gkw)
        best, _ = _best(lambda: m.generate(ids, **gkw), repeat)
    return best


def accelerate_model(cfg: Any, ckpt: pathlib.Path, folder: pathlib.Path, budget: int) -> Any:
    import transformers
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    with init_empty_weights():
        model = transformers.AutoModelForCausalLM.from_config(
            cfg, torch_dtype=torch.bfloat16).eval()
    model.tie_weights()
    device_map = accelerate_device_map(model, budget, ["GPT2Block"], dtype=torch.bfloat16)
    with contextlib.redirect_stderr(io.StringIO()):  # a progress bar line per weight
        return load_checkpoint_and_dispatch(model, str(ckpt), device_map=device_map,
                                            offload_folder=str(folder), dtype=torch.bfloat16,
                                            no_split_module_classes=["GPT2Block"])


def write_store(kind: str, weights: dict[str, torch.Tensor], url: pathlib.Path) -> None:
    if kind in ("int8", "int4"):
        bigstore.quantize(weights, url, kind, overwrite=True)
    else:
        bigstore.save(weights, url, codec=None if kind == "raw" else kind, overwrite=True)


# -- main -----------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model (smoke run)")
    ap.add_argument("--budget-frac", type=float, default=0.25)
    ap.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=4, help="tokens generated per run")
    ap.add_argument("--repeat", type=int, default=3, help="best of N")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-accelerate", action="store_true")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    import transformers


    transformers.logging.set_verbosity_error()
    # a directory of its own under --workdir (which picks the disk), removed at the end: each
    # run writes ~3.6 GB of stores and checkpoints
    work = pathlib.Path(tempfile.mkdtemp(prefix="bench-compressed-", dir=args.workdir))
    try:
        _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run(args: argparse.Namespace, work: pathlib.Path) -> None:
    import transformers

    from bigstore.weights.offload import unique_state_dict

    cfg = gpt_config(args.quick)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16).eval()
    weights = unique_state_dict(model)
    model_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    budget = int(model_bytes * args.budget_frac)
    urls = {s: work / s for s in STORES}
    write_s = {}
    for s, url in urls.items():
        t0 = time.perf_counter()
        write_store(s, weights, url)
        write_s[s] = time.perf_counter() - t0
    ckpt = work / "hf"
    if not args.no_accelerate:
        model.save_pretrained(ckpt)
    del weights
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=gen)
    new = args.new_tokens
    gkw = {"max_new_tokens": new, "do_sample": False, "pad_token_id": 0}
    expect = {}
    for s, url in urls.items():  # the tokens each store's resident model generates
        m = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16).eval()
        m.load_state_dict(bigstore.load(url), strict=False)
        m.tie_weights()
        with torch.no_grad():
            expect[s] = m.generate(ids, **gkw)
        del m
        gc.collect()

    raw_files = store_files(urls["raw"])
    best_s, best_bytes, readers = disk_bound_seconds(raw_files)
    disk_bw = best_bytes / best_s
    drop_page_cache(raw_files)
    plain_cold, raw_bytes = read_seconds(raw_files, direct=False)
    read_seconds(raw_files, direct=False)
    plain_warm, _ = _best(lambda: read_seconds(raw_files, direct=False), args.repeat)
    print(f"model {model_bytes / 1e9:.3f} GB bf16 ({cfg.n_layer} blocks, d={cfg.n_embd}), "
          f"budget {budget / 1e6:.0f} MB ({args.budget_frac:.0%}); disk {disk_bw / 1e9:.2f} GB/s "
          f"(O_DIRECT, {readers} reader(s)); plain read of the raw store {plain_cold:.3f} s cold, "
          f"{plain_warm:.3f} s warm; {torch.get_num_threads()} torch threads, "
          f"{get_executor().threads} I/O threads", flush=True)

    acc_model = None
    folder = work / "acc-offload"
    acc: dict[str, Any] = {}
    if not args.no_accelerate:
        try:
            acc_model = accelerate_model(cfg, ckpt, folder, budget)
            with torch.no_grad():
                acc_tokens = acc_model.generate(ids, **gkw)
            acc["same_tokens_as_raw"] = bool(torch.equal(acc_tokens, expect["raw"]))
        except Exception as e:  # report, do not hide: the cells say why accelerate is absent
            acc["error"] = f"{type(e).__name__}: {e}"
            acc_model = None

    others: dict[str, tuple[Any, list[Any]]] = {"resident": (model, [])}
    if acc_model is not None:
        others["accelerate"] = (acc_model, store_files(folder))
    cells = {cache: generation_cells(cfg, urls, budget, ids, gkw, cache == "cold", args.repeat,
                                     expect, others) for cache in ("cold", "warm")}
    contended = {s: contended_compute_seconds(model, ids, gkw, url, args.repeat)
                 for s, url in urls.items() if s != "raw"}
    # every store's pass with no disk at all (each file in the page cache, host tier off)
    no_disk = {s: no_disk_seconds(cfg, url, budget, ids, gkw, args.repeat)
               for s, url in urls.items()}
    pager_s = no_disk["raw"]
    # the resident model's compute with the torch threads a decoding pass gets (auto)
    pass_n = pass_threads(None, True, os.cpu_count() or 1, torch.get_num_threads(),
                          get_executor().threads) or torch.get_num_threads()
    compute_pass_s = _compute_with_threads(model, ids, gkw, pass_n, args.repeat)
    del model, acc_model
    gc.collect()
    compute_s = min(cells["cold"]["resident"]["s"], cells["warm"]["resident"]["s"])
    for cache in ("cold", "warm"):
        if "accelerate" in cells[cache]:
            acc[cache] = cells[cache]["accelerate"]
    rows: list[dict[str, Any]] = []
    for s, url in urls.items():
        dec_s, dec_bytes = decode_seconds(url, args.repeat)
        row: dict[str, Any] = {
            "store": s, "disk_mb": _disk_bytes(url) / MB, "write_s": write_s[s],
            "ratio_vs_raw_bytes": _disk_bytes(urls["raw"]) / _disk_bytes(url),
            "decode_s": dec_s, "decode_gb_s": dec_bytes / dec_s / 1e9 if dec_s else None,
            "load_cold_s": load_seconds(url, True, args.repeat),
            "load_warm_s": load_seconds(url, False, args.repeat),
        }
        row["load_cold_vs_plain_read"] = plain_cold / row["load_cold_s"]
        row["load_warm_vs_plain_read"] = plain_warm / row["load_warm_s"]
        for cache in ("cold", "warm"):
            c = cells[cache][s]
            if dec_s:  # the decode share of a pass: decode-only seconds for the bytes it moves
                c["decode_s_per_pass"] = dec_s * c["logical_mb_per_pass"] * MB / dec_bytes
            c["io_s_per_pass"] = c["disk_mb_per_pass"] * MB / disk_bw
            c["compute_s_per_pass"] = compute_s / new
            c["no_disk_s_per_pass"] = no_disk[s] / new
            if s in contended:
                c["compute_while_decoding_s_per_pass"] = contended[s] / new
            row[cache] = c
        rows.append(row)
    raw = rows[0]
    for row in rows:
        for cache in ("cold", "warm"):
            row[cache]["vs_raw"] = row[cache]["tok_s"] / raw[cache]["tok_s"]
            if cache in acc:
                row[cache]["vs_accelerate"] = row[cache]["tok_s"] / acc[cache]["tok_s"]

    _print_table(rows, acc, new)
    print(f"no disk: the store offloaded the same way with every file in the page cache and the "
          f"host tier off (every unit filled again each pass, copied out of the cache, no disk "
          f"read); the raw store's is the pager's own cost ({pager_s / new:.3f} s per pass); a "
          f"cold pass of a decoded store reads past the cache and may beat it")
    print(f"compute with the {pass_n} torch thread(s) a decoding pass runs with: "
          f"{compute_pass_s / new:.3f} s per pass")
    if args.json:
        figures = {"model_bytes": model_bytes, "budget": budget, "disk_gb_s": disk_bw / 1e9,
                   "disk_readers": readers, "plain_read_cold_s": plain_cold,
                   "plain_read_warm_s": plain_warm, "raw_bytes": raw_bytes,
                   "resident_tok_s": new / compute_s, "new_tokens": new, "prompt": args.prompt,
                   "pager_floor_s_per_pass": pager_s / new,
                   "decoding_pass_threads": pass_n,
                   "compute_decoding_threads_s_per_pass": compute_pass_s / new,
                   "torch_threads": torch.get_num_threads(), "stores": rows, "accelerate": acc}
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=1))


def _print_table(rows: list[dict[str, Any]], acc: dict[str, Any], new: int) -> None:
    head = ("store", "disk MB", "x smaller", "decode GB/s", "load cold s (x plain)",
            "load warm s (x plain)", "cache", "tok/s", "x raw", "x accel", "s/pass",
            "decode s/pass", "compute+decode s/pass", "I/O s/pass", "no-disk s/pass",
            "disk MB/pass", "logical MB/pass", "staging MB (peak)")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        for cache in ("cold", "warm"):
            c = r[cache]
            dec = f"{r['decode_gb_s']:.2f}" if r["decode_gb_s"] else "-"
            cells = (
                r["store"], f"{r['disk_mb']:.0f}", f"{r['ratio_vs_raw_bytes']:.2f}", dec,
                f"{r['load_cold_s']:.3f} ({r['load_cold_vs_plain_read']:.2f})",
                f"{r['load_warm_s']:.3f} ({r['load_warm_vs_plain_read']:.2f})",
                cache, f"{c['tok_s']:.2f}", f"{c['vs_raw']:.2f}",
                f"{c['vs_accelerate']:.2f}" if "vs_accelerate" in c else "-",
                f"{c['s_per_pass']:.3f}",
                f"{c['decode_s_per_pass']:.3f}" if "decode_s_per_pass" in c else "-",
                f"{c['compute_while_decoding_s_per_pass']:.3f}"
                if "compute_while_decoding_s_per_pass" in c else "-",
                f"{c['io_s_per_pass']:.3f}", f"{c['no_disk_s_per_pass']:.3f}",
                f"{c['disk_mb_per_pass']:.0f}", f"{c['logical_mb_per_pass']:.0f}",
                f"{c.get('staging_mb', 0):.0f}",
            )
            print("| " + " | ".join(cells) + " |")
    print(f"compute floor (resident bf16 model): {rows[0]['cold']['compute_s_per_pass']:.3f} s "
          "per pass; compute+decode: the resident model's pass while the pool decodes that "
          "store without pause beside it (how much decoding slows the compute here)")
    if "error" in acc:
        print(f"accelerate: could not run ({acc['error']})")
    for cache in ("cold", "warm"):
        if cache in acc:
            print(f"accelerate {cache}: {acc[cache]['tok_s']:.2f} tok/s ({new} new tokens)")
    if "same_tokens_as_raw" in acc:
        print(f"accelerate generates the raw store's tokens: {acc['same_tokens_as_raw']}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
