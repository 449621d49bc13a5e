"""``bigstore bench load``: ``bigstore.load`` cold and warm against the raw read of the same
bytes and against the installed peers (safetensors ``load_file``, ``torch.load(mmap=True)``,
runai-model-streamer).

Lazy loaders have read nothing when they return (mmap-backed tensors), so every contender is
timed the same way: load plus one pass over every byte (crc32c, the cheapest full read).
bigstore's own load already is such a pass: it checks every chunk's crc32c before returning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BenchTargetError, NotAStoreError, StoreNotFoundError
from ..store import is_local_url, local_path
from .bounds import memcpy_seconds, read_seconds, store_files
from .peers import PEERS, find_peer
from .progress import Progress
from .result import Report, new_report
from .runs import Case, Outcome, measure
from .stores import Scratch, open_measured

__all__ = ["LoadOptions", "consume", "run_load"]


@dataclass(frozen=True)
class LoadOptions:
    """runs: timed runs per contender; cold / warm: which page-cache states to measure;
    peers: which installed peers to run; readers: O_DIRECT readers for the raw bound;
    dtype: of the synthetic checkpoint."""

    runs: int = 3
    cold: bool = True
    warm: bool = True
    peers: tuple[str, ...] = ("safetensors", "torch", "runai")
    readers: tuple[int, ...] = (1, 4)
    dtype: str = "bfloat16"


def _held(load: Callable[[], Mapping[str, Any]]) -> Callable[[], Outcome]:
    """A run that loads, reads every byte once, and hands the tensors to the runner (freed
    after the clock stops)."""

    def run() -> Outcome:
        tensors = load()
        return Outcome(consume(tensors), hold=tensors)

    return run


def consume(tensors: Mapping[str, Any] | Any) -> int:
    """Read every byte once (crc32c over each tensor's memory); returns the bytes read."""
    import crc32c

    items = tensors.values() if isinstance(tensors, Mapping) else tensors
    total = 0
    for t in items:
        if t.numel():
            buf = t.contiguous().view(-1).view(_u8()).numpy()
            crc32c.crc32c(buf)
            total += buf.nbytes
    return total


def _nbytes(tensors: Mapping[str, Any]) -> int:
    return sum(int(t.numel() * t.element_size()) for t in tensors.values())


def _u8() -> Any:
    import torch

    return torch.uint8


@dataclass
class _Inputs:
    url: str  # the bigstore store measured
    local: bool
    safetensors: list[Path]
    torch_file: Path | None


def run_load(
    target: str | os.PathLike[str], *, synthetic: int | None = None,
    options: LoadOptions | None = None, storage_options: Mapping[str, Any] | None = None,
    workdir: str | os.PathLike[str] | None = None, keep: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Measure loading the checkpoint or store at ``target`` (with ``synthetic``: a new
    checkpoint of about that many bytes written under ``target``)."""
    opts = options or LoadOptions()
    progress = progress or Progress(False)
    target_s = os.fspath(target)
    report = new_report("load", target_s, local_path(target_s) if is_local_url(target_s)
                        else None,
                        settings={"runs": opts.runs, "cold": opts.cold, "warm": opts.warm,
                                  "readers": ",".join(map(str, opts.readers)),
                                  "peers": ",".join(opts.peers), "dtype": opts.dtype},
                        synthetic=synthetic,
                        description=f"Llama-shaped {opts.dtype} checkpoint")
    with Scratch("load", target_s, workdir=workdir, storage_options=storage_options,
                 keep=keep) as scratch:
        if synthetic is not None:
            inputs = _synthetic(scratch.new_store(), synthetic, opts, storage_options,
                                scratch.work, progress, report)
        else:
            inputs = _given(target_s, opts, storage_options, scratch.work, progress, report)
        report.settings["store"] = inputs.url
        if inputs.local:
            _local_cases(report, inputs, opts, progress)
        else:
            _remote_cases(report, inputs, opts, storage_options, progress)
    report.finish()
    return report


def _synthetic(
    url: str, size: int, opts: LoadOptions, storage_options: Mapping[str, Any] | None,
    work: Path, progress: Progress, report: Report,
) -> _Inputs:
    import torch

    import bigstore

    from .synthetic import make_state_dict

    sd = make_state_dict(size, getattr(torch, opts.dtype))
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    with progress.bar("writing the synthetic checkpoint", nbytes, unit="B") as bar:
        bigstore.save(sd, url, storage_options=storage_options)
        bar.update(nbytes)
    local = is_local_url(url)
    st: list[Path] = []
    pt: Path | None = None
    wanted = local and _want(opts, "safetensors", report) | _want(opts, "runai", report,
                                                                  quiet=True)
    if wanted and find_peer(PEERS["safetensors"])[0]:
        from safetensors.torch import save_file

        st = [work / "model.safetensors"]
        save_file(sd, st[0])
    if local and _want(opts, "torch", report):
        pt = work / "model.pt"
        torch.save(sd, pt)
    return _Inputs(url, local, st, pt)


def _want(opts: LoadOptions, name: str, report: Report, *, quiet: bool = False) -> bool:
    """Whether peer ``name`` was asked for and is installed (a note says why not)."""
    if name not in opts.peers:
        return False
    ok, note = find_peer(PEERS[name])
    if not quiet or not ok:
        report.note(note)
    return ok


def _given(
    target: str, opts: LoadOptions, storage_options: Mapping[str, Any] | None, work: Path,
    progress: Progress, report: Report,
) -> _Inputs:
    import bigstore

    try:
        bigstore.open(target, storage_options=storage_options).close()
        is_store = True
    except (NotAStoreError, StoreNotFoundError):
        is_store = False
    local = is_local_url(target)
    if not is_store:
        p = Path(local_path(target))
        if not local or not p.exists():
            raise BenchTargetError(f"{target}: neither a bigstore store nor a checkpoint file "
                                   "or directory (use --synthetic SIZE to make one)")
        url = os.fspath(work / "converted.bigstore")
        with progress.bar("converting the checkpoint to a store", None, unit="B"):
            bigstore.convert(p, url)
        report.note(f"{target} is a checkpoint: converted to a bigstore store in a work "
                    "directory for the measurement")
        st = ([p] if p.suffix == ".safetensors" else
              sorted(p.glob("*.safetensors")) if p.is_dir() else [])
        pt = p if p.suffix in (".pt", ".pth", ".bin") and p.is_file() else None
        return _Inputs(url, True, st, pt)
    if not local:
        return _Inputs(target, False, [], None)
    st, pt = [], None
    if _want(opts, "safetensors", report) | _want(opts, "runai", report, quiet=True) and \
            find_peer(PEERS["safetensors"])[0]:
        st = [work / "model.safetensors"]
        with progress.bar("exporting .safetensors for the peers", None, unit="B"):
            bigstore.convert(target, st[0])
    if _want(opts, "torch", report):
        import torch

        pt = work / "model.pt"
        torch.save(bigstore.load(target), pt)
    return _Inputs(target, True, st, pt)


def _peer_loaders(inputs: _Inputs, opts: LoadOptions, report: Report
                  ) -> list[tuple[str, Callable[[], Outcome], list[Path]]]:
    peers: list[tuple[str, Callable[[], Outcome], list[Path]]] = []
    if "safetensors" in opts.peers and inputs.safetensors:
        from safetensors.torch import load_file

        files = inputs.safetensors
        peers.append((PEERS["safetensors"].name,
                      _held(lambda: {k: v for f in files for k, v in load_file(f).items()}),
                      files))
    if "torch" in opts.peers and inputs.torch_file is not None:
        import torch

        pt = inputs.torch_file
        peers.append((PEERS["torch"].name,
                      _held(lambda: torch.load(pt, mmap=True, weights_only=True)), [pt]))
    if "runai" in opts.peers and inputs.safetensors:
        ok, note = find_peer(PEERS["runai"])
        report.note(note)
        if ok:
            files = inputs.safetensors
            peers.append((PEERS["runai"].name, _held(lambda: _runai(files)), files))
    return peers


def _runai(files: list[Path]) -> dict[str, Any]:
    from runai_model_streamer import SafetensorsStreamer

    with SafetensorsStreamer() as s:
        s.stream_files([os.fspath(f) for f in files])
        return dict(s.get_tensors())  # owned tensors (the default): valid after the stream


def _local_cases(report: Report, inputs: _Inputs, opts: LoadOptions, progress: Progress) -> None:
    import bigstore

    url = inputs.url
    files = store_files(local_path(url))
    peers = _peer_loaders(inputs, opts, report)
    total = sum(f.stat().st_size for f in files)

    def load() -> Outcome:
        # bigstore.load checks every chunk's crc32c: that is its pass over every byte
        tensors = bigstore.load(url)
        return Outcome(_nbytes(tensors), hold=tensors)

    states = [s for s, on in (("cold", opts.cold), ("warm", opts.warm)) if on]
    for state in states:
        # one state at a time: a cold case's drop would otherwise empty a warm case's cache
        cases: list[Case] = []
        cold = state == "cold"
        warmup = 0 if cold else 1
        note = ("its crc32c check is the pass over every byte" if cold
                else "chunks this process checked and kept resident are trusted")
        cases.append(Case("bigstore load", state, "contender", load, files=files, cold=cold,
                          warmup=warmup, note=note))
        for name, fn, pfiles in peers:
            cases.append(Case(name, state, "peer", fn, files=pfiles, cold=cold,
                              warmup=warmup))
        if cold:
            for n in opts.readers:
                def raw(n: int = n) -> Outcome:
                    dt, nbytes = read_seconds(files, direct=True, threads=n)
                    return Outcome(nbytes, seconds=dt)

                cases.append(Case(f"O_DIRECT read, {n} reader{'s' if n > 1 else ''}", state,
                                  "bound", raw, files=files, cold=True, params={"readers": n}))

            def buffered() -> Outcome:  # readahead often beats one O_DIRECT stream on VMs
                dt, nbytes = read_seconds(files, direct=False)
                return Outcome(nbytes, seconds=dt)

            cases.append(Case("buffered read (readahead)", state, "bound", buffered,
                              files=files, cold=True))
        else:
            def cached() -> Outcome:
                dt, nbytes = read_seconds(files, direct=False)
                return Outcome(nbytes, seconds=dt)

            def copy() -> Outcome:
                return Outcome(total, seconds=memcpy_seconds(total, repeat=1))

            cases.append(Case("page-cache read", state, "bound", cached, warmup=1))
            cases.append(Case("memcpy", "memory", "bound", copy, cache="memory"))
        for row in measure(cases, opts.runs, progress, f"timed {state} loads"):
            report.add(row)


def _remote_cases(
    report: Report, inputs: _Inputs, opts: LoadOptions,
    storage_options: Mapping[str, Any] | None, progress: Progress,
) -> None:
    import bigstore

    from ..config import default_io_threads

    url = inputs.url
    store = open_measured(url, storage_options)
    keys = sorted(store.list(""))
    kind = "memory" if url.startswith("memory://") else "remote"
    report.note(f"{url}: peers read local files only; skipped for a remote store"
                if kind == "remote" else f"{url}: peers read local files only")
    report.note("an object store has no page cache of ours to drop: every run reads over the "
                "network" if kind == "remote" else "an in-memory store: nothing to drop")

    def load() -> Outcome:
        tensors = bigstore.load(url, storage_options=storage_options)
        return Outcome(_nbytes(tensors), hold=tensors)

    threads = default_io_threads()

    def get_all() -> Outcome:
        with ThreadPoolExecutor(threads) as pool:
            n = sum(pool.map(lambda k: memoryview(store.get(k)).nbytes, keys))
        return Outcome(n)

    cases = [
        Case("bigstore load", kind, "contender", load, cache=kind, warmup=1),
        Case(f"GET every object, {threads} in flight", kind, "bound", get_all, cache=kind,
             warmup=1, params={"concurrency": threads}),
    ]
    for row in measure(cases, opts.runs, progress, "timed loads"):
        report.add(row)
