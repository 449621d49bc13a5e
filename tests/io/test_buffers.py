"""HostBufferPool: a buffer is handed out again only when nothing but the pool holds it."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from bigstore.io import HostBufferPool

pytestmark = pytest.mark.skipif(not HostBufferPool().enabled,
                                reason="this torch has no storage use count")


def test_released_buffer_is_reused_and_a_miss_frees_idle_others() -> None:
    pool = HostBufferPool()
    a = pool.take(4096)
    ptr = a.data_ptr()
    del a
    b = pool.take(4096)
    assert b.data_ptr() == ptr and pool.hits == 1
    c = pool.take(8192)  # a miss; b is in use: kept
    assert pool.misses == 2 and pool.held_bytes == 4096 + 8192
    del b, c
    d = pool.take(100)  # a miss: the idle 4096 and 8192 buffers are let go
    assert pool.held_bytes == 100 and d.numel() == 100


def test_a_buffer_idle_through_many_takes_is_let_go() -> None:
    # what early passes needed at once (more units than the planned ones) is not kept for good
    pool = HostBufferPool()
    a, b = pool.take(4096), pool.take(8192)
    del a, b
    for _ in range(HostBufferPool.IDLE_TAKES):  # hits only: the 8192 one waits, unused
        t = pool.take(4096)
        del t
    assert pool.held_bytes == 4096 + 8192 and pool.misses == 2
    t = pool.take(4096)
    assert pool.held_bytes == 4096 and pool.misses == 2  # let go on a hit, past its wait
    held = pool.take(4096)  # the one in use is never let go, however long it is held
    for _ in range(HostBufferPool.IDLE_TAKES + 1):
        u = pool.take(100)
        del u
    assert pool.held_bytes == 4096 + 4096 + 100
    del t, held


@pytest.mark.parametrize("hold", ["view", "param", "numpy", "memoryview", "tensor"])
def test_a_buffer_someone_still_sees_is_never_handed_out(hold: str) -> None:
    pool = HostBufferPool()
    buf = pool.take(4096)
    buf.fill_(7)
    held: object
    if hold == "view":
        held = buf[100:200].view(torch.int16)
    elif hold == "param":
        p = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        p.data = buf.view(torch.float32).view(32, 32)
        held = p
    elif hold == "numpy":
        held = buf.numpy()
    elif hold == "memoryview":
        held = memoryview(buf.numpy())
    else:
        held = buf
    del buf
    gc.collect()
    other = pool.take(4096)
    other.fill_(1)
    data = held if not isinstance(held, torch.nn.Parameter) else held.data
    arr = np.asarray(data.numpy() if isinstance(data, torch.Tensor) else data).view(np.uint8)
    assert (arr == 7).all()  # the holder's bytes were not overwritten
    assert pool.hits == 0
    del held, data, arr, other
    gc.collect()
    pool.take(4096)
    assert pool.hits == 1  # released now: reused


def test_reader_scratch_is_aligned_reused_and_bounded() -> None:
    import threading

    from bigstore.io.reader import ARENA_KEEP, _arena
    from bigstore.store import Store

    def addr(v: memoryview) -> int:
        return np.frombuffer(v, np.uint8).ctypes.data

    a = _arena(10_000, "t")
    assert addr(a) % Store.DIRECT_ALIGN == 0 and a.nbytes == 10_000
    b = _arena(5_000, "t")
    assert addr(b) == addr(a)  # reused: no allocation per job
    assert addr(_arena(5_000, "u")) != addr(a)  # slots are separate buffers
    big = _arena(ARENA_KEEP + 1, "t")
    assert addr(big) % Store.DIRECT_ALIGN == 0
    assert addr(_arena(5_000, "t")) == addr(a)  # a big one is not kept
    other: list[int] = []
    t = threading.Thread(target=lambda: other.append(addr(_arena(5_000, "t"))))
    t.start()
    t.join()
    assert other[0] != addr(a)  # per thread
