"""A writer process the crash tests kill: saves tensors slowly, announcing each one."""

import json
import sys
import time
from collections.abc import Iterator

import torch

import bigstore

url, opts = sys.argv[1], json.loads(sys.argv[2]) or None


def slow() -> Iterator[tuple[str, torch.Tensor]]:
    for i in range(1000):
        yield f"t.{i}", torch.full((256, 256), float(i))
        print(f"wrote {i}", flush=True)
        time.sleep(0.05)


bigstore.save(slow(), url, storage_options=opts, chunk_bytes=65536)
