"""Writer processes for the concurrency tests, forked from the test (no second import of
torch: a fork starts in milliseconds): ``child(action, url, opts, args, say, go)``.

Each child reports through ``say`` (a queue): ``ready``, then waits for the ``go`` event (so that
several writers start together), then one line per finished write. Actions:

- ``append ID N ROWS``: N appends of ROWS rows each (columns ``writer`` = ID, ``seq`` unique).
- ``overwrite ID ROWS``: one replacing ``write_dataset`` of ROWS rows.
- ``save TAG K``: K saves of 10 tensors, every value TAG * 1000 + k.
- ``slow-append ID ROWS STALE``: one append whose source yields a row every 50 ms, announcing
  each (the tests kill or freeze it midway), with ``lock_stale_after=STALE``.
- ``hold STALE``: take the store's writer lock, say ``held``, sleep.

A ConcurrentWriteError ends the child with exit code 3 after saying ``conflict <message>``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

import bigstore
from bigstore.data import write_dataset
from bigstore.errors import ConcurrentWriteError
from bigstore.store import open_store


def rows(writer: int, start: int, n: int) -> dict[str, Any]:
    return {
        "writer": np.full(n, writer, np.int32),
        "seq": np.arange(start, start + n, dtype=np.int64) + writer * 1_000_000,
    }


def child(action: str, url: str, opts: dict[str, Any] | None, args: list[float],
          queue: Any, go: Any) -> None:
    if opts:  # one S3 client for the whole process (a new one per write costs ~0.5 s)
        opts = {k: v for k, v in opts.items() if k != "skip_instance_cache"}
    queue.put("ready")
    go.wait()
    try:
        run(action, url, opts, args, queue.put)
    except ConcurrentWriteError as e:
        queue.put(f"conflict {e}")
        sys.exit(3)  # (not os._exit: the queue's feeder thread must deliver the line first)


def run(action: str, url: str, opts: dict[str, Any] | None, args: list[float],
        say: Any) -> None:
    if action == "append":
        writer, n, size = (int(a) for a in args)
        for i in range(n):
            write_dataset(url, rows(writer, i * size, size), mode="a", storage_options=opts,
                          lock_timeout=300)
            say(f"appended {i}")
    elif action == "overwrite":
        writer, size = int(args[0]), int(args[1])
        write_dataset(url, rows(writer, 0, size), storage_options=opts, lock_timeout=300)
        say("overwrote")
    elif action == "save":
        tag, k = int(args[0]), int(args[1])
        for rep in range(k):
            value = float(tag * 1000 + rep)
            bigstore.save({f"t.{j}": torch.full((32, 64), value) for j in range(10)}, url,
                          storage_options=opts, chunk_bytes=4096)
            say(f"saved {value}")
    elif action == "slow-append":
        writer, size, stale = int(args[0]), int(args[1]), args[2]

        def slow() -> Iterator[dict[str, Any]]:
            for i in range(size):
                yield rows(writer, i, 1)
                say(f"row {i}")
                time.sleep(0.05)

        write_dataset(url, slow(), mode="a", storage_options=opts, lock_timeout=300,
                      lock_stale_after=stale)
        say("appended")
    elif action == "hold":
        with open_store(url, opts).write_lock(5, stale_after=args[0]):
            say("held")
            time.sleep(3600)
    else:
        raise SystemExit(f"unknown action {action!r}")

