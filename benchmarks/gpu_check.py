"""The one prepared check for a CUDA machine: the ``gpu`` tests, then a short load and offload
benchmark, with one summary at the end (and ``gpu_check.json`` under ``--out`` or ``$OUT``).

    python benchmarks/gpu_check.py                  # everything, about 5 minutes on an H200
    python benchmarks/gpu_check.py --skip-tests     # the benchmark only

On a machine where bigstore is not installed (the lent device machine: zarr and numcodecs travel
as wheels in ``.whl``), ``native/`` must be importable as ``bigstore_native``:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    mkdir -p /tmp/nat && ln -sfn $PWD/native /tmp/nat/bigstore_native
    PYTHONPATH=/tmp/site:$PWD:/tmp/nat python3 benchmarks/gpu_check.py --out $OUT

Every figure is a ratio to a bound measured in the same run: the host->device copy of pinned
memory (PCIe), the raw read of the same files, and the resident model's own compute time.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
GiB = 1 << 30
MiB = 1 << 20


def _sync() -> None:
    torch.cuda.synchronize()


def _best(fn: Callable[[], Any], repeat: int, before: Callable[[], Any] | None = None) -> float:
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        best = min(best, time.perf_counter() - t0)
    return best


def run_tests() -> dict[str, Any]:
    # every test marked gpu; modules needing what this machine lacks (moto, dask) are skipped
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider",
           "-o", "addopts=", "--continue-on-collection-errors", "tests"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    print(out[-6000:])
    return {"rc": proc.returncode, "seconds": time.perf_counter() - t0,
            "summary": out.strip().splitlines()[-1] if out.strip() else ""}


def _h2d_seconds(nbytes: int) -> float:
    pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    return _best(lambda: dev.copy_(pinned, non_blocking=True), 3)


def bench_load(work: pathlib.Path, size: int) -> dict[str, Any]:
    import bigstore
    from bigstore.bench import drop_page_cache, store_files

    n = 32
    rows = size // n // (4096 * 2)
    torch.manual_seed(0)
    sd = {f"layer.{i}.weight": torch.randn(rows, 4096, dtype=torch.bfloat16) for i in range(n)}
    url = work / "ckpt.bigstore"
    bigstore.save(sd, url)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    files = store_files(url)
    out: dict[str, Any] = {"bytes": nbytes}

    out["h2d_pinned_s"] = _h2d_seconds(nbytes)

    def load() -> None:
        got = bigstore.load(url, device="cuda")
        assert all(v.is_cuda for v in got.values())

    out["bigstore_warm_s"] = _best(load, 3)
    out["bigstore_cold_s"] = _best(load, 2, before=lambda: drop_page_cache(files))
    got = bigstore.load(url, device="cuda")
    out["bit_exact"] = all(torch.equal(got[k].cpu(), v) for k, v in sd.items())
    del got
    try:
        import safetensors.torch as st

        sf = work / "ckpt.safetensors"
        st.save_file(sd, sf)
        out["safetensors_warm_s"] = _best(lambda: st.load_file(sf, device="cuda"), 3)
        out["safetensors_cold_s"] = _best(lambda: st.load_file(sf, device="cuda"), 2,
                                          before=lambda: drop_page_cache([sf]))
    except ImportError:
        out["safetensors"] = "not installed"
    from bigstore.bench import read_seconds

    drop_page_cache(files)
    out["raw_read_cold_s"] = min(read_seconds(files, direct=False, threads=t)[0] for t in (4,))
    out["raw_read_warm_s"] = read_seconds(files, direct=False, threads=4)[0]
    return out


def bench_offload(work: pathlib.Path, tokens: int) -> dict[str, Any]:
    import transformers

    import bigstore
    from bigstore.weights.offload import offload, skeleton, unique_state_dict

    cfg = transformers.GPT2Config(n_layer=24, n_embd=1024, n_head=16, vocab_size=50257,
                                  n_positions=1024)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float16).eval()
    url = work / "gpt2m.bigstore"
    bigstore.save(unique_state_dict(ref), url)
    model_bytes = sum(p.numel() * p.element_size() for p in ref.parameters())
    budget = model_bytes // 4
    ids = torch.randint(0, cfg.vocab_size, (1, 32), device="cuda")
    gen = {"max_new_tokens": tokens, "do_sample": False, "pad_token_id": 0,
           "min_new_tokens": tokens}
    out: dict[str, Any] = {"model_bytes": model_bytes, "budget": budget, "tokens": tokens}
    ref = ref.cuda()
    with torch.no_grad():
        want = ref.generate(ids, **gen)
        out["resident_s"] = _best(lambda: ref.generate(ids, **gen), 2)
    ref = ref.cpu()
    torch.cuda.empty_cache()

    def run(store: Any, host: str | None, tag: str, expect: Any) -> None:
        with skeleton():
            sk = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float16).eval()
        with offload(sk, store, device="cuda", budget=budget, host_budget=host) as m, \
                torch.no_grad():
            got = m.generate(ids, **gen)  # the first use reads storage (and fills the host tier)
            out[f"{tag}_identical"] = bool(torch.equal(got, expect))
            out[f"{tag}_s"] = _best(lambda: m.generate(ids, **gen), 2)
            out[f"{tag}_peak_resident"] = m.stats.peak_resident_bytes
            out[f"{tag}_last_pass"] = m.last_pass.to_dict()
        torch.cuda.empty_cache()

    run(url, "0", "bigstore_nohost", want)
    run(url, None, "bigstore", want)  # host tier "auto": pinned RAM keeps what streams
    qurl = work / "gpt2m-int4.bigstore"
    bigstore.quantize(url, qurl, "int4", 64)
    qref_sd = bigstore.load(qurl)
    qref = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float16).eval()
    qref.load_state_dict(qref_sd, strict=False)
    qref = qref.cuda()
    with torch.no_grad():
        qwant = qref.generate(ids, **gen)
        out["int4_resident_s"] = _best(lambda: qref.generate(ids, **gen), 2)
    qref_sd.clear()
    torch.cuda.empty_cache()
    run(qurl, "0", "int4_nohost", qwant)
    run(qurl, None, "int4", qwant)
    try:
        import accelerate

        with accelerate.init_empty_weights():
            am = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float16).eval()
        am.tie_weights()
        device_map = accelerate.infer_auto_device_map(
            am, max_memory={0: budget, "cpu": 64 * GiB}, no_split_module_classes=["GPT2Block"]
        )
        sdir = work / "acc"
        sdir.mkdir(exist_ok=True)
        import safetensors.torch as st

        st.save_file({k: v.contiguous() for k, v in unique_state_dict(ref).items()},
                     sdir / "model.safetensors")
        am = accelerate.load_checkpoint_and_dispatch(am, str(sdir / "model.safetensors"),
                                                     device_map=device_map)
        with torch.no_grad():
            got = am.generate(ids, **gen)
            out["accelerate_identical"] = bool(torch.equal(got, want))
            out["accelerate_s"] = _best(lambda: am.generate(ids, **gen), 2)
    except Exception as e:  # a peer failing is a note, not a failure of this check
        out["accelerate_error"] = f"{type(e).__name__}: {e}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--size", default=str(2 * GiB))
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", default=os.environ.get("OUT"))
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device", file=sys.stderr)
        return 2
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    work = pathlib.Path(tempfile.mkdtemp(prefix="bigstore-gpu-"))
    if not args.skip_tests:
        parts.append(("tests", run_tests))
    parts.append(("load", lambda: bench_load(work, int(args.size))))
    parts.append(("offload", lambda: bench_offload(work, args.tokens)))
    ok = True
    for name, fn in parts:
        t0 = time.perf_counter()
        try:
            summary[name] = fn()
        except Exception as e:
            traceback.print_exc()
            summary[name] = {"error": f"{type(e).__name__}: {e}"}
            ok = False
        summary[name]["wall_s"] = round(time.perf_counter() - t0, 1)
        print(f"== {name}: {json.dumps(summary[name], default=str)}", flush=True)
    tests = summary.get("tests", {})
    ok = ok and tests.get("rc", 0) == 0
    load = summary.get("load", {})
    if "bigstore_cold_s" in load:
        b = load["bytes"]
        print(f"load {b / GiB:.2f} GiB -> cuda: bigstore warm "
              f"{b / load['bigstore_warm_s'] / 1e9:.2f} GB/s, "
              f"cold {b / load['bigstore_cold_s'] / 1e9:.2f} GB/s; PCIe pinned "
              f"{b / load['h2d_pinned_s'] / 1e9:.1f} GB/s; raw read cold "
              f"{b / load['raw_read_cold_s'] / 1e9:.2f} GB/s")
    off = summary.get("offload", {})
    if "bigstore_s" in off:
        print(f"offload gen {off['tokens']} tok, budget 25%: resident {off['resident_s']:.2f} s, "
              f"bigstore host tier {off['bigstore_s']:.2f} s (none: {off['bigstore_nohost_s']:.2f}"
              f" s), int4 {off.get('int4_s', float('nan')):.2f} s, accelerate "
              f"{off.get('accelerate_s', 'n/a')}")
    summary["ok"] = ok
    if args.out:
        pathlib.Path(args.out).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(args.out) / "gpu_check.json").write_text(json.dumps(summary, indent=1,
                                                                          default=str))
    print(json.dumps(summary, indent=1, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
