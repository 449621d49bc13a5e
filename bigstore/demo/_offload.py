"""Demo: generate tokens with a GPT-style model several times larger than its memory budget.

Builds a GPT-2-style decoder from a ``transformers`` config with random weights (no hub
download), saves it, runs greedy generation fully resident (the reference), then again with
``bigstore.offload`` under the budget, from a cold page cache, and measures in the same run
the disk's sequential read bandwidth (O_DIRECT, or page-cache drop then read) to say how much
of it offloading achieves.
"""

from __future__ import annotations

import gc
import pathlib
import sys
import time
from typing import Any

import torch

from ..bench import drop_page_cache as _drop
from ..bench import peak_rss_bytes, read_seconds, reset_peak_rss, store_files
from ..bench.report import human_bytes
from ..bench.synthetic import gpt_config as synthetic_gpt_config

__all__ = ["run", "gpt_config", "drop_page_cache", "sequential_read_bandwidth"]

GiB = 1 << 30
MiB = 1 << 20


def gpt_config(quick: bool) -> Any:
    """GPT-2-style: 30 blocks of d=1024 and a 32k vocabulary (~1.64 GB fp32), or a tiny one."""
    return synthetic_gpt_config(quick=quick)


def drop_page_cache(root: pathlib.Path) -> None:
    """Write back, then evict every page of ``root``'s files from the page cache."""
    _drop(store_files(root))


def sequential_read_bandwidth(root: pathlib.Path, *, cold: bool = True) -> tuple[float, str]:
    """Bytes/s reading every file under ``root`` in order with large reads, and the method:
    cold, O_DIRECT (the disk); warm, twice through the page cache, the second one timed."""
    files = store_files(root)
    if not cold:
        read_seconds(files, direct=False)
    dt, total = read_seconds(files, direct=cold)
    return total / dt, "O_DIRECT" if cold else "page cache"


def run(workdir: pathlib.Path, *, quick: bool = False, progress: bool = True) -> dict[str, Any]:
    """Build, save, generate resident and offloaded, compare, measure. Returns the figures."""
    import transformers

    import bigstore
    from bigstore.weights.offload import offload, skeleton, unique_state_dict

    transformers.logging.set_verbosity_error()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    url = workdir / ("offload-gpt-quick" if quick else "offload-gpt")
    cfg = gpt_config(quick)
    new_tokens = 4 if quick else 8
    def say(msg: str) -> None:  # progress notes go to stderr; the summary is returned
        if progress:
            print(msg, file=sys.stderr, flush=True)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    weights = unique_state_dict(model)
    model_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    budget = 320 * 1024 if quick else 256 * MiB
    say(f"offload: built a GPT-style model, {human_bytes(model_bytes)} of weights "
        f"({time.perf_counter() - t0:.1f} s); saving to {url}")
    bigstore.save(weights, url)
    del weights
    prompt = torch.randint(0, cfg.vocab_size, (1, 16), generator=torch.Generator().manual_seed(1))
    gen: dict[str, Any] = {"max_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}
    with torch.no_grad():
        t0 = time.perf_counter()
        want = model.generate(prompt, **gen)
        resident_s = time.perf_counter() - t0
    del model
    gc.collect()

    store_bytes = sum(p.stat().st_size for p in store_files(url))
    disk_bw, method = sequential_read_bandwidth(url, cold=True)
    say(f"offload: disk sequential read {disk_bw / 1e9:.2f} GB/s ({method})")

    drop_page_cache(url)
    with skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    gc.collect()
    from bigstore.plan import plan_rows  # JIT-compile the chunk planner (one-time, ~45 MiB)

    plan_rows(bigstore.open(url).meta(next(iter(bigstore.open(url)))), 0, 1)
    reset_peak_rss()
    base_rss = peak_rss_bytes()
    with offload(sk, url, device="cpu", budget=budget, prefetch=2) as m, torch.no_grad():
        t0 = time.perf_counter()
        got = m.generate(prompt, **gen)  # cold: the first pass reads the store
        offload_s = time.perf_counter() - t0
        read = m.bytes_read
        t0 = time.perf_counter()
        again = m.generate(prompt, **gen)  # warm: the host tier holds what streams
        warm_s = time.perf_counter() - t0
        warm_pass = m.last_pass.to_dict()
        peak_resident = m.stats.peak_resident_bytes
        host_bytes = m.stats.host_bytes
    rss = peak_rss_bytes()
    same = bool(torch.equal(got, want)) and bool(torch.equal(again, want))
    if not same:
        raise AssertionError(f"offloaded tokens differ from the resident run: {got} vs {want}")
    eff = read / offload_s
    figures: dict[str, Any] = {
        "model_bytes": model_bytes,
        "budget": budget,
        "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / offload_s,
        "warm_tokens_per_s": new_tokens / warm_s,
        "resident_tokens_per_s": new_tokens / resident_s,
        "warm_pass_bytes": warm_pass,
        "host_tier_bytes": host_bytes,
        "bytes_read": read,
        "effective_gb_s": eff / 1e9,
        "disk_gb_s": disk_bw / 1e9,
        "disk_method": method,
        "pct_of_disk": 100 * eff / disk_bw,
        "peak_resident_bytes": peak_resident,
        "peak_rss": rss,
        "rss_over_baseline": rss - base_rss,
        "store_bytes": store_bytes,
        "tokens_match": same,
    }
    figures["lines"] = [
        f"offload: {human_bytes(model_bytes)} GPT-style model under a {human_bytes(budget)} "
        f"budget on CPU: {new_tokens} tokens "
        + ("identical to the resident run" if same else "DIFFER from the resident run (bug)"),
        f"offload, cold: {figures['tokens_per_s']:.2f} tokens/s, read {human_bytes(read)} from "
        f"the store; warm: {figures['warm_tokens_per_s']:.2f} tokens/s (resident model: "
        f"{figures['resident_tokens_per_s']:.2f})",
        f"offload, a warm pass: {human_bytes(warm_pass['storage'])} from storage, "
        f"{human_bytes(warm_pass['host'])} from the host tier ({human_bytes(host_bytes)} kept in "
        f"RAM), {human_bytes(warm_pass['resident'])} already on the device",
        f"offload: peak weights resident {human_bytes(peak_resident)}; process peak RSS "
        f"{rss / MiB:.0f} MiB ({(rss - base_rss) / MiB:+.0f} MiB while offloading)",
    ]
    figures["ok"] = bool(same)
    return figures
