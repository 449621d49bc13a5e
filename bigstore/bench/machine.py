"""Machine facts and package versions, recorded with every result: a figure means little
without the CPU, memory, kernel, file system and device it was measured on."""

from __future__ import annotations

import functools
import os
import platform
import sys
from importlib import metadata
from typing import Any

__all__ = ["PACKAGES", "filesystem_of", "machine_facts", "package_versions"]

# Versions worth knowing next to a figure: bigstore's own stack and every peer.
PACKAGES = (
    "bigstore", "numpy", "torch", "zarr", "numcodecs", "pyarrow", "fsspec", "s3fs", "numba",
    "crc32c", "safetensors", "runai-model-streamer", "accelerate", "transformers", "matplotlib",
)


def _mount_of(path: str) -> tuple[str, str, str]:
    """(device, mount point, file system type) of the mount holding ``path``."""
    best = ("", "", "")
    try:
        real = os.path.realpath(path)
        with open("/proc/self/mounts") as f:
            for line in f:
                dev, mnt, fs = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(
                    best[1]
                ):
                    best = (dev, mnt, fs)
    except OSError:
        pass
    return best


def filesystem_of(path: str | os.PathLike[str]) -> str:
    """The file system type holding ``path`` ('ext4', 'tmpfs', 'overlay', ...; '' if unknown)."""
    return _mount_of(os.fspath(path))[2]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _rotational(dev: str) -> bool | None:
    name = dev.rsplit("/", 1)[-1]
    for cand in (name, name.rstrip("0123456789"), name.split("p")[0]):
        try:
            with open(f"/sys/block/{cand}/queue/rotational") as f:
                return f.read().strip() == "1"
        except OSError:
            continue
    return None


def machine_facts(path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """CPU, cores, RAM, kernel, OS, Python; with ``path``, its file system and device."""
    facts: dict[str, Any] = {
        "cpu": _cpu_model(), "cores": os.cpu_count(), "ram_bytes": _ram_bytes(),
        "kernel": platform.release(), "os": platform.system(),
        "python": sys.version.split()[0], "hostname": platform.node(),
        "filesystem": None, "device": None, "mount": None, "rotational": None,
    }
    if path is not None and "://" not in os.fspath(path):
        dev, mnt, fs = _mount_of(os.fspath(path))
        facts.update(filesystem=fs or None, device=dev or None, mount=mnt or None,
                     rotational=_rotational(dev) if dev.startswith("/dev/") else None)
    return facts


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    found = _installed()
    return {n: found.get(_norm(n)) for n in names}


def _norm(name: str) -> str:
    return name.lower().replace("_", "-")


@functools.cache
def _installed() -> dict[str, str]:
    # one scan of the installed distributions (metadata.version() rescans for every name)
    out: dict[str, str] = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and _norm(name) not in out:
            out[_norm(name)] = dist.version
    return out
