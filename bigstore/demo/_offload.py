"""Demo: generate tokens with a GPT-style model several times larger than its memory budget.

Builds a GPT-2-style decoder from a ``transformers`` config with random weights (no hub
download), saves it, runs greedy generation fully resident (the reference), then again with
``bigstore.offload`` under the budget, from a cold page cache, and measures in the same run
the disk's sequential read bandwidth (O_DIRECT, or page-cache drop then read) to say how much
of it offloading achieves.
"""

from __future__ import annotations

import gc
import mmap
import os
import pathlib
import time
from typing import Any

import torch

__all__ = ["run", "gpt_config", "drop_page_cache", "sequential_read_bandwidth", "peak_rss"]

GiB = 1 << 30
MiB = 1 << 20


def gpt_config(quick: bool) -> Any:
    """GPT-2-style: 30 blocks of d=1024 and a 32k vocabulary (~1.64 GB fp32), or a tiny one."""
    import transformers

    if quick:
        return transformers.GPT2Config(
            n_layer=4, n_embd=64, n_head=4, vocab_size=512, n_positions=128
        )
    return transformers.GPT2Config(
        n_layer=30, n_embd=1024, n_head=16, vocab_size=32000, n_positions=1024
    )


def _files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def drop_page_cache(root: pathlib.Path) -> None:
    """Write back, then evict every page of ``root``'s files from the page cache."""
    os.sync()  # dirty pages cannot be dropped
    for p in _files(root):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read_bandwidth(root: pathlib.Path, *, cold: bool = True) -> tuple[float, str]:
    """Bytes/s reading every file under ``root`` in order with large reads, and the method.

    cold: O_DIRECT where the filesystem allows it (bypasses the cache entirely), else drop
    the files' pages first. warm (cold=False): read them twice, time the second (page cache).
    """
    files = _files(root)
    block = 16 * MiB
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT requires
    view = memoryview(buf)
    method = "page cache"
    if cold:
        method = "O_DIRECT"
        try:
            fd = os.open(files[0], os.O_RDONLY | getattr(os, "O_DIRECT", 0))
            os.preadv(fd, [view[:4096]], 0)
            os.close(fd)
        except OSError:
            method = "fadvise(DONTNEED) + read"
        if method != "O_DIRECT":
            drop_page_cache(root)
    flags = os.O_RDONLY | (getattr(os, "O_DIRECT", 0) if method == "O_DIRECT" else 0)
    for attempt in range(1 if cold else 2):
        total = 0
        t0 = time.perf_counter()
        for p in files:
            fd = os.open(p, flags)
            try:
                pos = 0
                while True:
                    n = os.preadv(fd, [view], pos)
                    total += n
                    pos += n
                    if n < block:
                        break
            finally:
                os.close(fd)
        dt = time.perf_counter() - t0
        del attempt
    view.release()
    buf.close()
    return total / dt, method


def peak_rss() -> int:
    """Peak resident set size of this process since the last :func:`reset_peak_rss`, bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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
    say = print if progress else (lambda *a, **k: None)

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    weights = unique_state_dict(model)
    model_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    budget = 320 * 1024 if quick else 256 * MiB
    say(f"offload: built a GPT-style model, {model_bytes / GiB:.2f} GiB of weights "
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

    store_bytes = sum(p.stat().st_size for p in _files(url))
    disk_bw, method = sequential_read_bandwidth(url, cold=True)
    say(f"offload: disk sequential read {disk_bw / 1e9:.2f} GB/s ({method})")

    drop_page_cache(url)
    with skeleton():
        sk = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    gc.collect()
    from bigstore.plan import plan_rows  # JIT-compile the chunk planner (one-time, ~45 MiB)

    plan_rows(bigstore.open(url).meta(next(iter(bigstore.open(url)))), 0, 1)
    reset_peak_rss()
    base_rss = peak_rss()
    with offload(sk, url, device="cpu", budget=budget, prefetch=2) as m, torch.no_grad():
        t0 = time.perf_counter()
        got = m.generate(prompt, **gen)
        offload_s = time.perf_counter() - t0
        read = m.bytes_read
        peak_resident = m.stats.peak_resident_bytes
    rss = peak_rss()
    same = bool(torch.equal(got, want))
    if not same:
        raise AssertionError(f"offloaded tokens differ from the resident run: {got} vs {want}")
    eff = read / offload_s
    figures: dict[str, Any] = {
        "model_bytes": model_bytes,
        "budget": budget,
        "new_tokens": new_tokens,
        "tokens_per_s": new_tokens / offload_s,
        "resident_tokens_per_s": new_tokens / resident_s,
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
        f"offload: {model_bytes / GiB:.2f} GiB GPT-style model under a {budget / MiB:.2f} MiB "
        f"budget on CPU: {new_tokens} tokens identical to the resident run",
        f"offload: {figures['tokens_per_s']:.2f} tokens/s (resident: "
        f"{figures['resident_tokens_per_s']:.2f}), read {read / GiB:.2f} GiB at "
        f"{eff / 1e9:.2f} GB/s = {figures['pct_of_disk']:.0f}% of the disk's "
        f"{disk_bw / 1e9:.2f} GB/s ({method})",
        f"offload: peak weights resident {peak_resident / MiB:.1f} MiB; process peak RSS "
        f"{rss / MiB:.0f} MiB ({(rss - base_rss) / MiB:+.0f} MiB while offloading)",
    ]
    for line in figures["lines"]:
        say(line)
    return figures
