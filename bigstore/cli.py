"""The bigstore command: info, ls, convert, verify, bench, demo.

Every command takes --json; errors go to stderr as one line, with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from .errors import BigstoreError, MissingDependencyError

__all__ = ["main"]

EXIT_ERROR = 2  # bad input, missing store, ...
EXIT_CORRUPT = 1  # verify found damaged chunks


def _storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    opts: dict[str, Any] = {}
    if args.storage_options:
        loaded = json.loads(args.storage_options)
        if not isinstance(loaded, dict):
            raise BigstoreError("--storage-options must be a JSON object")
        opts.update(loaded)
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise BigstoreError(f"-o expects KEY=VALUE, got {item!r}")
        try:
            opts[key] = json.loads(value)
        except json.JSONDecodeError:
            opts[key] = value
    return opts or None


def _emit(args: argparse.Namespace, data: Any, lines: Sequence[str]) -> None:
    if args.json:
        json.dump(data, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
    else:
        for line in lines:
            print(line)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} TiB"


def _arrays(url: str, opts: dict[str, Any] | None) -> tuple[Any, list[dict[str, Any]]]:
    from .format import read_root
    from .store import open_store

    store = open_store(url, opts)
    root = read_root(store)
    rows = []
    for path, doc in sorted(root.arrays.items()):
        if doc.get("node_type") != "array":
            continue
        attrs = (doc.get("attributes") or {}).get("bigstore") or {}
        shape = [int(d) for d in doc.get("shape", [])]
        dtype = attrs.get("dtype") or doc.get("data_type")
        codecs = [c.get("name") for c in doc.get("codecs", [])]
        if codecs and codecs[0] == "sharding_indexed":
            inner = doc["codecs"][0]["configuration"]["codecs"]
            codecs = ["sharding_indexed", *[c.get("name") for c in inner]]
        chunk = doc.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
        from .format import dtype_spec

        try:
            itemsize = dtype_spec(dtype).itemsize
        except BigstoreError:
            itemsize = 0
        n = itemsize
        for d in shape:
            n *= d
        rows.append({"name": path, "shape": shape, "dtype": dtype, "nbytes": n,
                     "chunk_shape": list(chunk), "codecs": codecs})
    return root, rows


def cmd_info(args: argparse.Namespace) -> int:
    root, rows = _arrays(args.url, args.opts)
    total = sum(r["nbytes"] for r in rows)
    data = {"url": args.url, "kind": root.kind, "format_version": root.format_version,
            "arrays": len(rows), "nbytes": total, "attributes": root.attrs}
    lines = [f"{args.url}", f"  kind            {root.kind}",
             f"  format version  {root.format_version}", f"  arrays          {len(rows)}",
             f"  bytes           {total} ({_human(total)})"]
    _emit(args, data, lines)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    _root, rows = _arrays(args.url, args.opts)
    lines = [
        f"{r['name']:60s} {r['dtype']:>10s} {tuple(r['shape'])!s:>20s} "
        f"{_human(r['nbytes']):>12s}  {'+'.join(r['codecs'])}"
        for r in rows
    ]
    _emit(args, rows, lines)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .config import parse_bytes
    from .errors import StoreNotFoundError
    from .format import parse_codec
    from .store import is_local_url, local_path
    from .weights.convert import convert

    # every argument is checked before a progress bar is drawn
    codec = parse_codec(args.codec).spec
    chunk_bytes = parse_bytes(args.chunk_bytes)
    src = Path(local_path(args.src)) if is_local_url(args.src) else None
    if src is not None and not src.exists():
        raise StoreNotFoundError(f"{args.src}: no such file or directory")
    calibration = None
    if args.calibration is not None:
        if args.quantize is None:
            raise BigstoreError("--calibration needs --quantize int8|int4")
        from .weights.calibrate import Calibration

        calibration = Calibration.open(args.calibration, storage_options=args.opts)
    st = [args.dst] + ([str(f) for f in src.glob("*.safetensors")] if src and src.is_dir()
                       else [args.src])
    if any(str(f).lower().endswith(".safetensors") for f in st):
        try:
            import safetensors.torch  # noqa: F401 - checked before the progress bar is drawn
        except ImportError:
            raise MissingDependencyError(
                "missing optional dependency 'safetensors': pip install 'bigstore[convert]'"
            ) from None
    summary = convert(
        args.src, args.dst, codec=codec, chunk_bytes=chunk_bytes,
        storage_options=args.opts, progress=not args.json and not args.quiet,
        quantize=args.quantize, calibration=calibration,
    )
    _emit(args, summary,
          [f"converted {summary['tensors']} tensors ({_human(summary['nbytes'])}) "
           f"{args.src} -> {args.dst}"
           + (f"; {summary['quantized']} quantized {args.quantize} "
              f"({summary['calibrated']} with GPTQ)" if args.quantize else "")])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    bar = None
    if not args.json and not args.quiet:
        from tqdm.auto import tqdm

        root, rows = _arrays(args.url, args.opts)  # the total, and a bad URL fails before a bar
        total = sum(r["nbytes"] for r in rows) if root.kind == "tensors" else None
        bar = tqdm(desc="verify: checking checksums", total=total, unit="B", unit_scale=True,
                   unit_divisor=1024, file=sys.stderr)
    try:
        report = verify(args.url, storage_options=args.opts, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    data = {"url": report.url, "ok": report.ok, "tensors": report.tensors,
            "chunks": report.chunks, "nbytes": report.nbytes,
            "corrupted_tensors": report.corrupted_tensors,
            "problems": [{"tensor": p.tensor, "chunk": p.chunk, "error": p.error}
                         for p in report.problems]}
    lines = [f"{report.url}: {report.chunks} chunks of {report.tensors} tensors checked, "
             f"{'all good' if report.ok else f'{len(report.problems)} damaged'}"]
    lines += [f"  {p.tensor} chunk {p.chunk}: {p.error}" for p in report.problems]
    _emit(args, data, lines)
    if not report.ok:
        if not args.json:
            print(f"bigstore: {len(report.problems)} damaged chunk(s) in "
                  f"{', '.join(report.corrupted_tensors)}", file=sys.stderr)
        return EXIT_CORRUPT
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_all

    data = run_all(args)
    _emit(args, data, data.pop("lines", []) if not args.json else [])
    return 0 if data.get("ok", True) else EXIT_CORRUPT


class _Parser(argparse.ArgumentParser):
    """Argument errors are one line on stderr, exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                   help="a storage option (value parsed as JSON when it parses)")
    p.add_argument("--storage-options", metavar="JSON", help="storage options as JSON")


def build_parser() -> argparse.ArgumentParser:
    from .bench.cli import add_bench_parser
    from .version import __version__

    ap = _Parser(prog="bigstore", description=__doc__)
    ap.add_argument("--version", action="version", version=f"bigstore {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        return p

    p = add("info", "summary of a store")
    p.add_argument("url")
    p.set_defaults(func=cmd_info)
    p = add("ls", "list the arrays of a store")
    p.add_argument("url")
    p.set_defaults(func=cmd_ls)
    p = add("convert", "checkpoint -> store, or store -> .safetensors")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--codec", default=None,
                   help="none (default), lossless, lossless:LEVEL (1-9), zstd, zstd:LEVEL (1-22), "
                   "gzip, gzip:LEVEL (0-9)")
    p.add_argument("--chunk-bytes", default="64MiB")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="store linear weights group-wise quantized (default policy, group 64)")
    p.add_argument("--calibration", default=None, metavar="STORE",
                   help="with --quantize: GPTQ with this calibration (bigstore.calibrate(...)"
                   ".save(STORE))")
    p.set_defaults(func=cmd_convert)
    p = add("verify", "re-check every chunk's checksum; exit 1 when any is damaged")
    p.add_argument("url")
    p.set_defaults(func=cmd_verify)
    add_bench_parser(sub, _common)
    p = add("demo", "the main job: convert, load, offload and stream, with measured ratios")
    p.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--size", default="2GiB", help="checkpoint size for the load demo")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    p.add_argument("--keep", action="store_true", help="keep the files written")
    p.add_argument("--only", choices=["weights", "offload", "data"], action="append",
                   help="run only these parts")
    p.set_defaults(func=cmd_demo)
    return ap


# optional packages -> the extra that installs them
_EXTRAS = {"s3fs": "s3", "safetensors": "convert", "matplotlib": "plot",
           "transformers": "peers", "accelerate": "peers", "runai_model_streamer": "peers"}


def _message(e: BaseException, args: argparse.Namespace) -> str:
    """One line that says what went wrong, for any failure."""
    name = type(e).__name__
    if isinstance(e, MissingDependencyError | BigstoreError):
        msg = str(e)
    elif isinstance(e, ImportError):
        mod = (getattr(e, "name", None) or "").split(".")[0]
        extra = _EXTRAS.get(mod)
        msg = (f"missing optional dependency {mod!r}: pip install 'bigstore[{extra}]'"
               if extra else f"missing dependency: {e}")
    elif name in ("NoCredentialsError", "PartialCredentialsError"):
        msg = ("no credentials for the object store: set AWS_ACCESS_KEY_ID and "
               "AWS_SECRET_ACCESS_KEY (or -o key=... -o secret=...), or -o anon=true for a "
               f"public bucket ({e})")
    elif name in ("EndpointConnectionError", "ConnectTimeoutError", "ClientConnectorError"):
        msg = f"cannot reach the storage endpoint: {e} (is it running? check endpoint_url)"
    elif isinstance(e, TypeError) and args.opts:
        msg = (f"bad storage option(s) {', '.join(sorted(args.opts))} for {_url(args)}: {e}")
    elif isinstance(e, json.JSONDecodeError):
        msg = f"--storage-options is not valid JSON: {e}"
    else:
        msg = f"{name}: {e}"
    return " ".join(msg.split())  # one line


def _url(args: argparse.Namespace) -> str:
    for attr in ("url", "src", "target"):
        if getattr(args, attr, None):
            return str(getattr(args, attr))
    return "the store"


def _quiet_broken_pipe() -> None:
    """stdout's reader went away (``bigstore ls URL | head``): stop writing, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.opts = None
    try:
        args.opts = _storage_options(args)
        rc: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except KeyboardInterrupt:
        print("bigstore: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get("BIGSTORE_DEBUG"):
            raise
        print(f"bigstore: error: {_message(e, args)}", file=sys.stderr)
        return EXIT_ERROR
    return rc


if __name__ == "__main__":
    sys.exit(main())
