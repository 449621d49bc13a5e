"""The ``bigstore`` command: info, ls, convert, verify, demo. Every command takes ``--json``;
errors go to stderr with a non-zero exit status."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from .errors import BigstoreError

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
    root, rows = _arrays(args.url, _storage_options(args))
    total = sum(r["nbytes"] for r in rows)
    data = {"url": args.url, "kind": root.kind, "format_version": root.format_version,
            "arrays": len(rows), "nbytes": total, "attributes": root.attrs}
    lines = [f"{args.url}", f"  kind            {root.kind}",
             f"  format version  {root.format_version}", f"  arrays          {len(rows)}",
             f"  bytes           {total} ({_human(total)})"]
    _emit(args, data, lines)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    _root, rows = _arrays(args.url, _storage_options(args))
    lines = [
        f"{r['name']:60s} {r['dtype']:>10s} {tuple(r['shape'])!s:>20s} "
        f"{_human(r['nbytes']):>12s}  {'+'.join(r['codecs'])}"
        for r in rows
    ]
    _emit(args, rows, lines)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .weights.convert import convert

    summary = convert(
        args.src, args.dst, codec=args.codec, chunk_bytes=args.chunk_bytes,
        storage_options=_storage_options(args), progress=not args.json and not args.quiet,
        quantize=args.quantize,
    )
    _emit(args, summary,
          [f"converted {summary['tensors']} tensors ({_human(summary['nbytes'])}) "
           f"{args.src} -> {args.dst}"])
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    bar = None
    if not args.json and not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(desc="verify", unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr)
    try:
        report = verify(args.url, storage_options=_storage_options(args), progress=bar)
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


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(prog="bigstore", description=__doc__)
    ap.add_argument("--version", action="version", version=f"bigstore {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        p.add_argument("-o", "--option", action="append", metavar="KEY=VALUE",
                       help="a storage option (value parsed as JSON when it parses)")
        p.add_argument("--storage-options", metavar="JSON", help="storage options as JSON")
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
                   help="None, lossless, lossless:LEVEL, zstd, zstd:LEVEL, gzip, gzip:LEVEL")
    p.add_argument("--chunk-bytes", default="64MiB")
    p.add_argument("--quantize", choices=["int8", "int4"], default=None,
                   help="store linear weights group-wise quantized (default policy, group 64)")
    p.set_defaults(func=cmd_convert)
    p = add("verify", "re-check every chunk's checksum; exit 1 when any is damaged")
    p.add_argument("url")
    p.set_defaults(func=cmd_verify)
    p = add("demo", "the main job: convert, load, offload and stream, with measured ratios")
    p.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    p.add_argument("--size", default="2GiB", help="checkpoint size for the load demo")
    p.add_argument("--quick", action="store_true", help="small sizes (seconds, not minutes)")
    p.add_argument("--keep", action="store_true", help="keep the files written")
    p.add_argument("--only", choices=["weights", "offload", "data"], action="append",
                   help="run only these parts")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
    except BigstoreError as e:
        print(f"bigstore: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except (OSError, ValueError, json.JSONDecodeError) as e:
        print(f"bigstore: error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("bigstore: interrupted", file=sys.stderr)
        return 130
    return rc


if __name__ == "__main__":
    sys.exit(main())
