"""``bigstore bench offload``: tokens/s of an offloaded model across budgets (and host budgets
where this bigstore has a host tier), against the bound and against accelerate.

The bound of a cell is max(compute-only time, bytes that must be streamed / measured read
speed): compute-only is the same model with every weight resident (nothing read after the
first pass); the bytes that must be streamed per forward are the model's bytes minus the
budget; the read speed is the raw read of the store's files measured in the same run (O_DIRECT
cold, the page cache warm, concurrent GETs for an object store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import inspect
import io
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import MiB, parse_bytes
from ..errors import BenchTargetError, BigstoreError, BudgetError
from ..store import is_local_url, local_path
from .bounds import read_seconds, store_files
from .peers import PEERS, find_peer
from .progress import Progress
from .result import Report, Row, RunSample, new_report
from .runs import Case, Outcome, measure
from .stores import Scratch, open_measured

__all__ = ["OffloadOptions", "offload_features", "run_offload"]


@dataclass(frozen=True)
class OffloadOptions:
    """budgets: each a byte size ("64MiB") or a fraction of the model ("25%");
    host_budgets: host-RAM tier sizes (used where this bigstore supports them);
    tokens: sequence lengths of the timed forward passes; config: a transformers config.json
    (or its directory) for a store that does not sit beside one."""

    runs: int = 2
    budgets: tuple[str, ...] = ("25%", "50%", "100%")
    host_budgets: tuple[str, ...] = ()
    tokens: tuple[int, ...] = (1,)
    prefetch: int = 2
    device: str = "cpu"
    cold: bool = True
    warm: bool = True
    peers: tuple[str, ...] = ("accelerate",)
    config: str | None = None


def offload_features() -> dict[str, bool]:
    """What the running bigstore's offload supports (another engineer adds the host tier and
    per-pass residency counters; this code uses them only where they exist)."""
    import bigstore

    params = inspect.signature(bigstore.offload).parameters
    return {"host_budget": "host_budget" in params,
            "residency": hasattr(bigstore.OffloadedModel, "residency")}


@dataclass
class _Model:
    config: Any
    url: str
    hf_dir: Path | None
    nbytes: int


def run_offload(
    target: str | os.PathLike[str], *, synthetic: int | None = None,
    options: OffloadOptions | None = None, storage_options: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None, keep: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Measure offloaded inference of the model at ``target`` (with ``synthetic``: a new
    GPT-2-shaped model of about that many fp32 bytes, random weights, saved under ``target``)."""
    import transformers

    transformers.logging.set_verbosity_error()
    opts = options or OffloadOptions()
    progress = progress or Progress(False)
    target_s = os.fspath(target)
    features = offload_features()
    report = new_report("offload", target_s,
                        local_path(target_s) if is_local_url(target_s) else None,
                        settings={"runs": opts.runs, "budgets": ",".join(opts.budgets),
                                  "host_budgets": ",".join(opts.host_budgets),
                                  "tokens": ",".join(map(str, opts.tokens)),
                                  "prefetch": opts.prefetch, "device": opts.device,
                                  "host_tier": features["host_budget"],
                                  "residency_counters": features["residency"]},
                        synthetic=synthetic, description="GPT-2-shaped model, random fp32 weights")
    if opts.host_budgets and not features["host_budget"]:
        report.note("this bigstore's offload has no host-RAM tier (host_budget): "
                    "--host-budgets ignored")
    with Scratch("offload", target_s, workdir=workdir, storage_options=storage_options,
                 keep=keep) as scratch:
        work = scratch.work
        if synthetic is not None:
            model = _synthetic(scratch.new_store(), synthetic, opts, storage_options, work,
                               progress, report)
        else:
            model = _given(target_s, opts, storage_options, work, progress)
        report.settings["model_bytes"] = model.nbytes
        _measure(report, model, opts, storage_options, work, progress, features)
    report.finish()
    return report


def _synthetic(
    url: str, size: int, opts: OffloadOptions, storage_options: Mapping[str, Any] | None,
    work: Path, progress: Progress, report: Report,
) -> _Model:
    import torch
    import transformers

    import bigstore

    from .synthetic import gpt_config

    cfg = gpt_config(size)
    torch.manual_seed(0)
    with progress.bar("building and saving the synthetic model", None):
        model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
        weights = bigstore.unique_state_dict(model)
        nbytes = sum(t.numel() * t.element_size() for t in weights.values())
        bigstore.save(weights, url, storage_options=storage_options)
        del weights
        hf: Path | None = None
        if "accelerate" in opts.peers and is_local_url(url):
            ok, note = find_peer(PEERS["accelerate"])
            report.note(note)
            if ok:
                hf = work / "hf"
                with contextlib.redirect_stderr(io.StringIO()):  # transformers' own bar
                    model.save_pretrained(hf)
    del model
    gc.collect()
    return _Model(cfg, url, hf, nbytes)


def _given(
    target: str, opts: OffloadOptions, storage_options: Mapping[str, Any] | None, work: Path,
    progress: Progress,
) -> _Model:
    import transformers

    import bigstore

    local = is_local_url(target)
    p = Path(local_path(target)) if local else None
    try:
        with bigstore.open(target, storage_options=storage_options) as ts:
            nbytes = int(ts.nbytes)
        url, hf = target, None
    except BigstoreError:
        if p is None or not (p / "config.json").is_file():
            raise BenchTargetError(
                f"{target}: neither a bigstore store nor a model directory with config.json "
                "(use --synthetic SIZE to make one)") from None
        url, hf = os.fspath(work / "model.bigstore"), p
        with progress.bar("converting the checkpoint to a store", None, unit="B"):
            bigstore.convert(p, url)
        with bigstore.open(url) as ts:
            nbytes = int(ts.nbytes)
    cfg_path = opts.config or (os.fspath(p) if p is not None and (p / "config.json").is_file()
                               else None)
    if cfg_path is None:
        raise BenchTargetError(f"{target}: a store holds weights, not the model's architecture: "
                               "pass --config CONFIG.json (or its directory)")
    cfg = transformers.AutoConfig.from_pretrained(cfg_path)
    return _Model(cfg, url, hf, nbytes)


def _budget(spec: str, model_bytes: int) -> int:
    s = spec.strip()
    if s.endswith("%"):
        try:
            frac = float(s[:-1]) / 100
        except ValueError:
            raise BigstoreError(f"cannot parse budget {spec!r}") from None
        # +1 MiB: per-tensor alignment padding, so that 100% really holds the whole model
        return int(model_bytes * frac) + MiB
    return parse_bytes(s)


def _counters(m: Any, features: dict[str, bool]) -> dict[str, float]:
    """Numeric counters of the handle: pager stats and, where present, residency counters."""
    out: dict[str, float] = {}
    stats = getattr(m, "stats", None)
    if stats is not None and dataclasses.is_dataclass(stats) and not isinstance(stats, type):
        for k, v in dataclasses.asdict(stats).items():
            if isinstance(v, int | float):
                out[f"stats_{k}"] = float(v)
    if features["residency"]:
        # where each unit lives now (bytes per tier), and where the last pass's bytes came from
        for where in ("device", "host", "storage"):
            out[f"residency_{where}_bytes"] = float(
                sum(u["nbytes"] for u in m.residency() if u["now"] == where)
            )
        for k, v in m.last_pass.to_dict().items():
            out[f"pass_{k}_bytes"] = float(v)
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _measure(
    report: Report, model: _Model, opts: OffloadOptions,
    storage_options: Mapping[str, Any] | None, work: Path, progress: Progress,
    features: dict[str, bool],
) -> None:
    import torch

    import bigstore

    local = is_local_url(model.url)
    files = store_files(local_path(model.url)) if local else []
    gen = torch.Generator().manual_seed(1)
    inputs = {n: torch.randint(0, model.config.vocab_size, (1, n), generator=gen)
              for n in opts.tokens}
    budgets = [(b, _budget(b, model.nbytes)) for b in opts.budgets]
    hosts: list[tuple[str, int] | None] = [None]
    if features["host_budget"] and opts.host_budgets:
        hosts = [(h, parse_bytes(h)) for h in opts.host_budgets]
    states = (["cold"] if opts.cold else []) + (["warm"] if opts.warm else [])
    if not local:
        states = ["memory" if model.url.startswith("memory://") else "remote"]
        report.note(f"{model.url}: an object store has no page cache of ours to drop"
                    if states[0] == "remote" else f"{model.url}: an in-memory store: nothing "
                    "to drop")
        if "accelerate" in opts.peers:
            report.note("accelerate disk offload skipped: it needs a local checkpoint")

    # the read speed of the store's bytes, per page-cache state (the bound's denominator)
    read_rows: dict[str, Row] = {}
    for state in states:
        case = _read_case(state, files, model.url, storage_options)
        (row,) = measure([case], opts.runs, progress, f"offload: read speed ({state})")
        report.add(row)
        read_rows[state] = row

    def run_model(budget: int, state: str, host: tuple[str, int] | None, n: int,
                  label: str) -> Row | None:
        extra: dict[str, Any] = {}
        if host is not None:
            extra["host_budget"] = host[1]
        elif features["host_budget"] and state == "cold":
            extra["host_budget"] = 0  # no host tier: every cold pass must read storage
        with bigstore.skeleton():
            import transformers

            sk = transformers.AutoModelForCausalLM.from_config(model.config).eval()
        try:
            handle = bigstore.offload(sk, model.url, device=opts.device, budget=budget,
                                      prefetch=opts.prefetch, storage_options=storage_options,
                                      drop_cache=state == "cold", **extra)
        except BudgetError as e:
            from .report import human_bytes

            report.note(f"budget {human_bytes(budget)} skipped: {e}")
            return None
        ids = inputs[n].to(opts.device)
        with handle as m, torch.no_grad():
            m(ids)  # records the execution order (and, warm, fills the page cache)
            _sync(opts.device)

            def one() -> Outcome:
                r0, c0 = m.bytes_read, _counters(m, features)
                m(ids)
                _sync(opts.device)
                c1 = _counters(m, features)
                # counters since the start: per-pass deltas; levels and the last pass: as read
                level = ("resident_bytes", "host_bytes")
                metrics = {k: c1[k] - c0.get(k, 0.0) for k in c1
                           if not k.endswith(level) and not k.startswith(("residency_", "pass_"))}
                metrics.update({k: v for k, v in c1.items()
                                if k.endswith(level) or k.startswith(("residency_", "pass_"))})
                return Outcome(m.bytes_read - r0, work=n, metrics=metrics)

            params: dict[str, Any] = {"budget_bytes": budget, "tokens": n,
                                      "prefetch": opts.prefetch}
            if host is not None:
                params["host_budget_bytes"] = host[1]
            case = Case(label, _group(state, n), "contender", one, unit="tokens/s",
                        files=files if state in ("cold", "warm") else (), cold=state == "cold",
                        cache=state, params=params)
            (row,) = measure([case], opts.runs, progress, f"offload: {label}")
        return row

    # compute only: the plain model with every weight resident (no hooks, nothing read)
    compute: dict[int, float] = {}
    for row in _compute_rows(model, opts, storage_options, inputs, progress):
        report.add(row)
        # a bound is the best the machine did: the fastest run, not the typical one
        compute[int(row.params["tokens"] or 0)] = row.seconds.min

    acc_ok = model.hf_dir is not None and "accelerate" in opts.peers and local
    if acc_ok and opts.device != "cpu":
        report.note("accelerate peer runs on the CPU path only here: skipped")
        acc_ok = False
    for state in states:
        bw = read_rows[state].rate.max
        for spec, budget in budgets:
            for host in hosts:
                for n in opts.tokens:
                    label = "bigstore offload" + (f", host {host[0]}" if host else "")
                    got = run_model(budget, state, host, n, label)
                    if got is None:
                        continue
                    row = got
                    row.params["budget"] = spec
                    report.add(row)
                    must = max(0, model.nbytes - budget)
                    bound_s = max(compute.get(n, 0.0), must / bw if bw > 0 else 0.0)
                    if bound_s > 0:
                        report.add(Row("bound", row.group, "bound", "tokens/s",
                                       [RunSample(bound_s, n, must)],
                                       params={"budget_bytes": budget, "tokens": n,
                                               "budget": spec},
                                       cache=state, note="max(compute only, streamed bytes / "
                                       "read speed)"))
                    if acc_ok and host is None:
                        assert model.hf_dir is not None
                        acc = _accelerate_row(model, budget, state, n, inputs[n], work, opts,
                                              progress)
                        acc.params["budget"] = spec
                        report.add(acc)
    _regroup(report)


def _compute_rows(
    model: _Model, opts: OffloadOptions, storage_options: Mapping[str, Any] | None,
    inputs: dict[int, Any], progress: Progress,
) -> list[Row]:
    import torch
    import transformers

    import bigstore

    with bigstore.skeleton():
        m = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    weights = bigstore.load(model.url, storage_options=storage_options, device=opts.device)
    m.load_state_dict(weights, strict=False, assign=True)
    m.tie_weights()  # a tied head is stored once, under the embedding's name
    del weights
    rows = []
    with torch.no_grad():
        for n, x in inputs.items():
            ids = x.to(opts.device)

            def fwd(ids: Any = ids, n: int = n) -> Outcome:
                m(ids)
                _sync(opts.device)
                return Outcome(0, work=n)

            case = Case("compute only (all weights resident)", "compute", "bound", fwd,
                        unit="tokens/s", warmup=1, params={"tokens": n})
            rows += measure([case], opts.runs, progress, "offload: compute only")
    return rows


def _group(state: str, n: int) -> str:
    return f"{state}, {n} token{'s' if n > 1 else ''}"


def _regroup(report: Report) -> None:
    """Each budget is its own comparison: contender, peer and bound of one budget share a
    group."""
    for r in report.rows:
        if r.group not in ("compute", "read") and "budget_bytes" in r.params:
            r.group = f"{r.group}, budget {r.params.get('budget')}"


def _read_case(
    state: str, files: list[Path], url: str, storage_options: Mapping[str, Any] | None
) -> Case:
    if state in ("cold", "warm"):
        direct = state == "cold"

        def read() -> Outcome:
            dt, nbytes = read_seconds(files, direct=direct, threads=4 if direct else 1)
            return Outcome(nbytes, seconds=dt)

        return Case("O_DIRECT read, 4 readers" if direct else "page-cache read", "read",
                    "bound", read, files=files, cold=direct, cache=state,
                    warmup=0 if direct else 1)
    store = open_measured(url, storage_options)
    keys = sorted(store.list(""))

    def get_all() -> Outcome:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            return Outcome(sum(pool.map(lambda k: memoryview(store.get(k)).nbytes, keys)))

    return Case("GET every object, 8 in flight", "read", "bound", get_all, cache=state,
                warmup=1)


def _accelerate_row(
    model: _Model, budget: int, state: str, n: int, ids: Any, work: Path, opts: OffloadOptions,
    progress: Progress,
) -> Row:
    import torch

    folder = work / f"acc-{budget}"
    # accelerate draws its own progress bar and warns about meta parameters: keep our stderr
    with contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        acc = _accelerate_model(model, folder, budget)
    try:
        with torch.no_grad():
            acc(ids)

            def one() -> Outcome:
                acc(ids)
                return Outcome(0, work=n)

            files = store_files(folder) if folder.exists() else []
            case = Case(PEERS["accelerate"].name, _group(state, n), "peer", one,
                        unit="tokens/s", files=files, cold=state == "cold", cache=state,
                        params={"budget_bytes": budget, "tokens": n})
            (row,) = measure([case], opts.runs, progress, "offload: accelerate")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row.note = "bytes read not counted by accelerate"
    return row


def _accelerate_model(model: _Model, folder: Path, budget: int) -> Callable[..., Any]:
    import transformers
    from accelerate import init_empty_weights, load_checkpoint_and_dispatch

    with init_empty_weights():
        m = transformers.AutoModelForCausalLM.from_config(model.config).eval()
    m.tie_weights()
    blocks = [type(m).__name__]
    layers = getattr(getattr(m, "transformer", None), "h", None)
    if layers is not None and len(layers):
        blocks = [type(layers[0]).__name__]
    device_map = accelerate_device_map(m, budget, blocks)
    assert model.hf_dir is not None
    out: Callable[..., Any] = load_checkpoint_and_dispatch(
        m, os.fspath(model.hf_dir), device_map=device_map, offload_folder=os.fspath(folder),
        no_split_module_classes=blocks,
    )
    return out


def accelerate_device_map(model: Any, budget: int, blocks: list[str],
                          dtype: Any = None) -> dict[str, str]:
    """accelerate's CPU-device map for ``model`` under ``budget`` bytes: ``"cpu"`` (resident)
    and ``"disk"`` (offloaded), as `infer_auto_device_map` gives it when that map is usable.

    `infer_auto_device_map` may answer with no "cpu" entry at all - for a Llama model under a
    small budget it returns ``{"": "disk"}`` - which `load_checkpoint_and_dispatch` refuses, and
    patching its first entry to "cpu" would make the *whole* model resident (a comparison that
    measures nothing). Then the modules are placed here in execution order: embeddings, each
    block, the final norm, the head on "cpu" while their bytes fit ``budget`` (the first always:
    accelerate needs one), the rest on "disk"; a tied module goes where its twin went.
    """
    from accelerate import infer_auto_device_map

    kwargs = {} if dtype is None else {"dtype": dtype}
    dmap: dict[str, str] = infer_auto_device_map(
        model, max_memory={"cpu": budget, "disk": 1 << 40}, no_split_module_classes=blocks,
        **kwargs)
    if "cpu" in dmap.values():
        return dmap
    return _ordered_device_map(model, budget)


def _ordered_device_map(model: Any, budget: int) -> dict[str, str]:
    import torch

    def parts(mod: Any, prefix: str) -> list[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for name, child in mod.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, torch.nn.ModuleList):
                out += [(f"{full}.{i}", c) for i, c in enumerate(child)]
            elif any(isinstance(c, torch.nn.ModuleList) for c in child.children()):
                out += parts(child, f"{full}.")
            else:
                out.append((full, child))
        return out

    placed: dict[int, str] = {}  # id(parameter) -> tier, so tied weights share one
    dmap: dict[str, str] = {}
    used = 0
    for name, mod in parts(model, ""):
        params = list(mod.parameters())
        tied = [placed[id(p)] for p in params if id(p) in placed]
        if tied:
            dmap[name] = tied[0]
        else:
            n = sum(p.numel() * p.element_size() for p in params)
            dmap[name] = "cpu" if used + n <= budget or not dmap else "disk"
            used += n if dmap[name] == "cpu" else 0
        for p in params:
            placed.setdefault(id(p), dmap[name])
    return dmap
