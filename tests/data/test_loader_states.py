"""The loader's state transitions (see bigstore/data/loader.py's docstring): each ``iter()`` is a
fresh pass from the loader's state; an older iterator raises LoaderStateError instead of
blocking; breaking out and iterating again continues after the last batch delivered; a finished
pass moves to the next epoch. And how ``ds.torch_dataset`` behaves inside torch's DataLoader.
Every test has a timeout: a hang fails loudly."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bigstore.data import open_dataset, write_dataset
from bigstore.data.loader import LoaderStateError

pytestmark = pytest.mark.timeout(60)
N, B = 1000, 32  # 32 batches an epoch, the last one short


@pytest.fixture(params=["mapped", "copied"])
def ds(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    if request.param == "copied":
        monkeypatch.setenv("BIGSTORE_NO_MMAP", "1")
    write_dataset(tmp_path / "ds", {"id": np.arange(N, dtype=np.int64)}, chunk_rows=50)
    return open_dataset(tmp_path / "ds")


def ids(batches: list[dict[str, Any]]) -> list[list[int]]:
    return [np.asarray(b["id"]).tolist() for b in batches]


def epoch(ds: Any, e: int = 0) -> list[list[int]]:
    """The reference: epoch ``e`` of a fresh loader, run to the end."""
    loader = ds.loader(B, shuffle=True, seed=3)
    loader.set_epoch(e)
    return ids(list(loader))


def test_an_older_iterator_raises_instead_of_blocking(ds: Any) -> None:
    want = epoch(ds)
    loader = ds.loader(B, shuffle=True, seed=3)
    a = iter(loader)
    b = iter(loader)  # a never started: b is the live pass
    assert ids([next(b)]) == want[:1]
    with pytest.raises(LoaderStateError, match="no longer live"):
        next(a)
    c = iter(loader)  # started iterators are superseded too, and c continues after b's batch
    with pytest.raises(LoaderStateError):
        next(b)
    assert ids(list(c)) == want[1:]
    with pytest.raises(StopIteration):  # a finished iterator stays finished
        next(c)


def test_load_state_dict_or_set_epoch_mid_loop(ds: Any) -> None:
    want = epoch(ds)
    loader = ds.loader(B, shuffle=True, seed=3)
    it = iter(loader)
    got = ids([next(it) for _ in range(5)])
    state = loader.state_dict()
    got += ids([next(it) for _ in range(3)])
    loader.load_state_dict(state)  # back to after batch 5: the running pass cannot continue
    with pytest.raises(LoaderStateError, match="load_state_dict"):
        next(it)
    assert ids(list(loader)) == want[5:]  # a fresh iter() continues from the loaded state
    assert got == want[:8] and loader.epoch == 1
    it = iter(loader)
    next(it)
    loader.set_epoch(7)
    with pytest.raises(LoaderStateError):
        next(it)
    assert ids(list(loader)) == epoch(ds, 7)  # the whole of epoch 7, from its start
    assert loader.epoch == 8


def test_breaking_out_and_iterating_again_continues(ds: Any) -> None:
    want = epoch(ds)
    loader = ds.loader(B, shuffle=True, seed=3)
    got: list[list[int]] = []
    for stop in (3, 4, 10):  # three loops broken out of, then one that runs to the end
        for i, batch in enumerate(loader):
            got += ids([batch])
            if i + 1 == stop:
                break
        assert loader.epoch == 0 and len(loader) == len(want) - len(got)
    got += ids(list(loader))
    assert got == want  # every batch once, in order: nothing lost, nothing repeated
    seen = np.concatenate([np.array(b) for b in got])
    assert np.array_equal(np.sort(seen), np.arange(N))
    assert loader.epoch == 1  # the finished pass moved on
    assert ids(list(loader)) == epoch(ds, 1)
    assert loader.epoch == 2


def test_state_dict_after_a_break_resumes_elsewhere(ds: Any) -> None:
    want = epoch(ds)
    loader = ds.loader(B, shuffle=True, seed=3)
    for i, _ in enumerate(loader):
        if i == 6:
            break
    other = ds.loader(B, shuffle=True, seed=3)
    other.load_state_dict(loader.state_dict())
    assert ids(list(other)) == want[7:]


def test_a_failing_transform_loses_no_batch(ds: Any) -> None:
    want = epoch(ds)
    calls = {"n": 0}

    def transform(batch: dict[str, Any]) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 4:
            raise ValueError("a bad augmentation")
        return batch

    loader = ds.loader(B, shuffle=True, seed=3, transform=transform)
    got = []
    with pytest.raises(ValueError, match="bad augmentation"):
        for batch in loader:
            got += ids([batch])
    got += ids(list(loader))  # the batch whose transform failed is handed out again
    assert got == want


def test_iterators_stopped_from_another_thread_never_block(ds: Any) -> None:
    loader = ds.loader(B, shuffle=True, seed=3, prefetch=1)
    it = iter(loader)
    next(it)
    outcome: list[BaseException | str] = []

    def consume() -> None:
        try:
            for _ in it:
                time.sleep(0.01)
            outcome.append("finished")
        except BaseException as e:  # the error it must see
            outcome.append(e)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.05)
    loader.load_state_dict(loader.state_dict())  # from this thread, while the other reads
    t.join(20)
    assert not t.is_alive(), "the consumer blocked"
    assert len(outcome) == 1 and isinstance(outcome[0], LoaderStateError | str)


def test_a_consumer_waiting_when_its_producer_stops_wakes_up() -> None:
    from bigstore.io import Producer, StoppedError

    release = threading.Event()

    class Slow(Producer):
        def _produce(self) -> None:
            release.wait(30)  # nothing comes until the test is over
            self._put("late")

    p = Slow(2, "slow")
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            p.next_item()
        except BaseException as e:  # the error it must see
            outcome.append(e)

    t = threading.Thread(target=consume)
    t.start()
    time.sleep(0.1)  # the consumer waits inside the queue now
    stopper = threading.Thread(target=p.stop)
    stopper.start()
    time.sleep(0.05)
    release.set()  # let the producer thread end so stop() returns
    stopper.join(10)
    t.join(10)
    assert not t.is_alive(), "the consumer blocked after stop()"
    assert len(outcome) == 1 and isinstance(outcome[0], StoppedError)


def test_loops_broken_out_of_leave_no_threads(ds: Any) -> None:
    loader = ds.loader(B, shuffle=True, seed=3)
    list(loader)  # pools and caches made once
    before = threading.active_count()
    for _ in range(20):
        for _batch in loader:
            break
    for _ in range(50):  # producer threads end once their pass is closed
        if threading.active_count() <= before:
            break
        time.sleep(0.05)
    assert threading.active_count() <= before


# -- the torch adapter: torch's semantics (passes are independent; state set between passes) --
@pytest.mark.parametrize("workers", [0, 2])
def test_torch_dataloader_passes(ds: Any, workers: int) -> None:
    tds = ds.torch_dataset(B, shuffle=True, seed=3)
    dl = torch.utils.data.DataLoader(tds, batch_size=None, num_workers=workers)
    want = ids(list(dl))  # (with workers, each delivers its own span: another order)
    assert sorted(np.concatenate(want).tolist()) == list(range(N))
    assert want == epoch(ds) or workers > 1
    # two iterators of one DataLoader are independent passes (torch's own semantics): both
    # deliver the whole epoch, neither blocks nor disturbs the other
    a, b = iter(dl), iter(dl)
    first_b = next(b)
    assert ids([next(a)]) == want[:1]
    assert ids([first_b, *b]) == want
    assert ids(list(a)) == want[1:]
    # breaking out and iterating again starts the pass again (torch cannot tell how far the
    # consumer got: state_dict(batches_seen) turns what it saw into a resumable state)
    seen = []
    for i, batch in enumerate(dl):
        seen += ids([batch])
        if i == 4:
            break
    assert seen == want[:5] and ids(list(dl)) == want
    tds.load_state_dict(tds.state_dict(5, workers))
    assert ids(list(dl)) == want[5:]
    # set_epoch mid-loop: the running pass keeps the state it started from; the next one
    # starts the new epoch (a loaded state is where every pass starts until then: a finished
    # pass does not move on by itself, call set_epoch as with torch's samplers)
    it = iter(dl)
    head = ids([next(it)])
    tds.set_epoch(1)
    assert head + ids(list(it)) == want[5:]
    one = ids(list(dl))
    assert one != want and sorted(np.concatenate(one).tolist()) == list(range(N))
    assert one == epoch(ds, 1) or workers > 1
    assert ids(list(dl)) == one
