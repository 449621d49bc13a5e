"""The peers each command measures against, found at run time: a peer that is not installed
is skipped with a note, never an error."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from importlib import metadata

__all__ = ["PEERS", "Peer", "find_peer"]


@dataclass(frozen=True)
class Peer:
    """A peer: its display name, the module it needs, the distribution that provides it."""

    name: str
    module: str
    distribution: str


PEERS = {
    "safetensors": Peer("safetensors load_file", "safetensors", "safetensors"),
    "torch": Peer("torch.load(mmap=True)", "torch", "torch"),
    "runai": Peer("runai-model-streamer", "runai_model_streamer", "runai-model-streamer"),
    "accelerate": Peer("accelerate disk offload", "accelerate", "accelerate"),
    "torch_dataloader": Peer("torch DataLoader over memmap", "torch", "torch"),
    "pyarrow": Peer("pyarrow take", "pyarrow", "pyarrow"),
}


def find_peer(peer: Peer) -> tuple[bool, str]:
    """(installed, note): the note names the version, or says how to install the peer."""
    if importlib.util.find_spec(peer.module) is None:
        return False, (f"{peer.name} skipped: not installed "
                       f"(pip install {peer.distribution}, or bigstore[peers])")
    try:
        version = metadata.version(peer.distribution)
    except metadata.PackageNotFoundError:
        version = "unknown version"
    return True, f"{peer.name} {version}"
