"""One rank of the multi-rank test: ``python _dist_worker.py URL OUT_DIR STATE_IN STOP_AFTER``.

Joins a gloo process group (MASTER_ADDR/PORT, RANK, WORLD_SIZE from the environment), iterates
its loader (rank and world size taken from torch.distributed), optionally from a saved state,
stops after STOP_AFTER batches (-1: the whole epoch) and writes what it saw as .npy, and its
state as JSON (rank 0).
"""

from __future__ import annotations

import functools
import json
import operator
import sys
from pathlib import Path

import numpy as np
import torch.distributed as dist

from bigstore.data import open_dataset


def main() -> None:
    url, out, state_in, stop_after = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    ds = open_dataset(url)
    loader = ds.loader(7, shuffle=True, seed=5, window=3, columns=["label", "x"])
    if state_in != "-":
        loader.load_state_dict(json.loads(Path(state_in).read_text()))
    seen = []
    for i, batch in enumerate(loader):
        assert (batch["x"] == (batch["label"][:, None] % 251).astype(np.uint8)).all()
        seen.append(batch["label"])
        if i + 1 == stop_after:
            break
    gathered: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, np.concatenate(seen).tolist() if seen else [])
    if rank == 0:
        np.save(out / "seen.npy", np.array(functools.reduce(operator.iadd, gathered, []), np.int64))
        (out / "state.json").write_text(json.dumps(loader.state_dict()))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
