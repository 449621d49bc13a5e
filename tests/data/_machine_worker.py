"""One rank of the multi-machine cache test: ``python _machine_worker.py URL OPTIONS_JSON
CACHE_DIR CACHE_BYTES OUT_DIR`` with RANK / WORLD_SIZE in the environment.

Reads an ``s3://`` dataset through CACHE_DIR (the cache of the "machine" this rank runs on,
shared with the other rank of that machine) for two epochs and saves the samples it saw.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from bigstore import open_dataset


def main() -> None:
    url, options, cache, limit, out = sys.argv[1:6]
    rank = int(os.environ["RANK"])
    ds = open_dataset(url, json.loads(options), cache_dir=cache, cache_bytes=int(limit))
    loader = ds.loader(24, shuffle=True, seed=11, window=2)  # rank, world size: environment
    for epoch in range(2):
        loader.set_epoch(epoch)
        seen = [b["label"] for b in loader]
        np.save(Path(out) / f"rank{rank}-epoch{epoch}.npy",
                np.concatenate(seen) if seen else np.empty(0, np.int64))


if __name__ == "__main__":
    main()
