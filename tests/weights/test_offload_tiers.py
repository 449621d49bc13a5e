"""Offload's memory tiers (device, host RAM, storage), its counters, and its handle under
interruption and misuse."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bigstore
from bigstore.errors import BigstoreError
from bigstore.plan.residency import plan_tiers
from bigstore.plan.schedule import Schedule, _keep
from bigstore.weights.offload import offload, skeleton, unique_state_dict
from tests._models import tiny_bert, tiny_gpt2, tiny_llama
from tests.weights.test_offload import Block, Net, _inputs, _skeleton

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Net]:
    torch.manual_seed(0)
    ref = Net().eval()
    url = str(tmp_path_factory.mktemp("tiers") / "net")
    bigstore.save(unique_state_dict(ref), url)
    return url, ref


def _small_budget(url: str) -> int:
    probe = offload(_skeleton(), url, device="cpu", budget="1GiB")
    sizes = sorted((s.nbytes for s in probe.pager.units), reverse=True)
    fixed = probe.pager.fixed_bytes
    probe.close()
    return fixed + sum(sizes[:3])  # streams: the model is ~8 units


# -- the planner ----------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    seq=st.lists(st.integers(0, 7), min_size=1, max_size=30),
    sizes=st.lists(st.integers(1, 1000), min_size=8, max_size=8),
    device=st.integers(0, 4000),
    host=st.integers(0, 4000),
    prefetch=st.integers(0, 3),
)
def test_plan_tiers_respects_budgets(seq: list[int], sizes: list[int], device: int, host: int,
                                     prefetch: int) -> None:
    schedule = Schedule(tuple(seq))
    size = dict(enumerate(sizes))
    tiers = plan_tiers(schedule, size, device, host, prefetch)

    def saved(kept: frozenset[int]) -> int:
        return sum(schedule.uses(u) * size[u] for u in kept)
    assert not tiers.device & tiers.host
    assert sum(size[u] for u in tiers.host) <= host
    streamed = [size[u] for u in size if u not in tiers.device and schedule.uses(u)]
    # the window may be shallower than ``prefetch`` when that keeps more, never below one unit
    # ahead (when prefetching at all)
    reserve = sum(sorted(streamed, reverse=True)[: min(prefetch, 1) + 1])
    assert sum(size[u] for u in tiers.device) + (reserve if streamed else 0) <= max(
        device, sum(size.values())
    )
    # a shallower window is taken only for more reading kept away than the full one keeps
    if sum(size.values()) > device:
        deep = _keep(schedule, size, size, device, prefetch)
        assert saved(tiers.device) >= saved(deep)
        if tiers.device != deep:
            assert saved(tiers.device) > saved(deep)
            full = sorted((size[u] for u in size if u not in deep and schedule.uses(u)),
                          reverse=True)
            if deep:  # (a budget below the full window's reserve keeps nothing at that depth)
                assert sum(size[u] for u in deep) + sum(full[: prefetch + 1]) <= device
    for u in size:  # every unit is placed somewhere; unused units never take host memory
        assert tiers.tier(u) in ("device", "host", "storage")
        if not schedule.uses(u):
            assert u not in tiers.host
    # a host budget that holds every streamed unit keeps them all
    if host >= sum(size[u] for u in size if u not in tiers.device):
        assert {u for u in size if schedule.uses(u)} <= tiers.device | tiers.host


# -- tiers at work ------------------------------------------------------------------------
def test_host_tier_reads_storage_once(saved: tuple[str, Net]) -> None:
    url, ref = saved
    budget = _small_budget(url)
    with offload(_skeleton(), url, device="cpu", budget=budget, host_budget="1GiB") as m, \
            torch.no_grad():
        for i, x in enumerate(_inputs()):
            assert torch.equal(m(x), ref(x))
            if i:  # after the first pass: nothing from storage, the streamed units from RAM
                assert m.last_pass.storage == 0 and m.last_pass.host > 0
        assert m.stats.evictions > 0  # it did stream: the device budget is small
        where = {u["now"] for u in m.residency()}
        assert "storage" not in where and {u["plan"] for u in m.residency()} >= {"host"}


def test_no_host_tier_reads_every_pass(saved: tuple[str, Net]) -> None:
    url, ref = saved
    with offload(_skeleton(), url, device="cpu", budget=_small_budget(url), host_budget=0) as m, \
            torch.no_grad():
        for x in _inputs():
            assert torch.equal(m(x), ref(x))
            assert m.last_pass.storage > 0 and m.last_pass.host == 0
        assert m.stats.host_bytes == 0


def test_set_budgets_replans(saved: tuple[str, Net]) -> None:
    url, ref = saved
    x = _inputs()[0]
    with offload(_skeleton(), url, device="cpu", budget=_small_budget(url), host_budget="1GiB"
                 ) as m, torch.no_grad():
        m(x)
        m(x)
        assert m.last_pass.storage == 0
        m.set_budgets(host_budget=0)  # the host copies go: the next pass reads storage again
        assert m.stats.host_bytes == 0
        assert torch.equal(m(x), ref(x)) and m.last_pass.storage > 0
        m.set_budgets(budget="1GiB")  # now everything fits on the device
        m(x)
        assert torch.equal(m(x), ref(x))
        assert m.last_pass.storage == 0 and m.last_pass.host == 0 and m.last_pass.resident > 0


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize(("budget_kib", "host", "prefetch"),
                         [(64, "0", 0), (64, "1GiB", 2), (160, "96KiB", 1), (4096, None, 2)])
def test_grid_bit_identical(tmp_path: Path, arch: str, budget_kib: int, host: str | None,
                            prefetch: int) -> None:
    vocab = 97
    cfgs: dict[str, Any] = {
        "gpt2": tiny_gpt2(vocab),
        "llama": tiny_llama(vocab),  # untied head
        "bert": tiny_bert(vocab),
    }
    cls = transformers.BertModel if arch == "bert" else transformers.AutoModelForCausalLM
    make = (lambda: cls(cfgs[arch])) if arch == "bert" else (lambda: cls.from_config(cfgs[arch]))
    torch.manual_seed(0)
    ref = make().eval()
    bigstore.save(unique_state_dict(ref), tmp_path / "m")
    ids = torch.randint(0, vocab, (2, 6), generator=torch.Generator().manual_seed(2))
    with skeleton():
        sk = make()
    budget = budget_kib * 1024
    if arch == "bert":  # its word embedding is the largest unit: just above it
        budget = max(budget, 16 * 1024 + vocab * 32 * 4)
    with offload(sk, tmp_path / "m", device="cpu", budget=budget, host_budget=host,
                 prefetch=prefetch) as m, torch.no_grad():
        for _ in range(2):
            if arch == "bert":
                assert torch.equal(m(ids).last_hidden_state, ref(ids).last_hidden_state)
            else:
                want = ref.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
                got = m.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
                assert torch.equal(got, want)
        assert m.stats.peak_resident_bytes <= budget


# -- interruption and misuse -----------------------------------------------------------------
def test_keyboard_interrupt_inside_forward_leaves_a_working_handle(saved: tuple[str, Net]
                                                                   ) -> None:
    url, ref = saved
    sk = _skeleton()
    x = _inputs()[0]
    m = offload(sk, url, device="cpu", budget=_small_budget(url))
    fired: list[int] = []

    def interrupt(*_: Any) -> None:
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt  # Ctrl-C in the middle of a pass

    block = sk.blocks[3]
    assert isinstance(block, Block)
    h = block.fc2.register_forward_hook(interrupt)
    with torch.no_grad():
        with pytest.raises(KeyboardInterrupt):
            m(x)
        h.remove()
        assert not torch._C._is_torch_function_mode_enabled()  # the guard left the stack
        for _ in range(2):
            assert torch.equal(m(x), ref(x))  # and the handle still works
    m.close()
    assert all(p.device.type == "meta" for p in sk.parameters())  # the module is restored


def test_offloading_twice_is_refused(saved: tuple[str, Net]) -> None:
    url, _ = saved
    sk = _skeleton()
    with offload(sk, url, device="cpu", budget="1GiB"):
        with pytest.raises(BigstoreError, match="already offloaded"):
            offload(sk, url, device="cpu", budget="1GiB")
        with pytest.raises(BigstoreError, match="already offloaded"):
            offload(sk.blocks[0], url, device="cpu", budget="1GiB")
    with offload(sk, url, device="cpu", budget="1GiB"):  # once closed, it can be again
        pass


def test_after_close_every_use_says_closed(saved: tuple[str, Net]) -> None:
    url, _ = saved
    m = offload(_skeleton(), url, device="cpu", budget="1GiB")
    m.close()
    for use in (lambda: m(_inputs()[0]), lambda: m.generate, lambda: m.set_budgets(1)):
        with pytest.raises(BigstoreError, match="closed"):
            use()


def test_threads_are_serialised(saved: tuple[str, Net]) -> None:
    url, ref = saved
    xs = _inputs()
    errors: list[BaseException] = []
    with offload(_skeleton(), url, device="cpu", budget=_small_budget(url), prefetch=2) as m:

        def run(x: torch.Tensor) -> None:
            try:
                with torch.no_grad():
                    for _ in range(3):
                        assert torch.equal(m(x), ref(x))
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(x,)) for x in xs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_training_mode_is_eval_while_offloaded(saved: tuple[str, Net]) -> None:
    url, _ = saved
    sk = _skeleton().train()
    with offload(sk, url, device="cpu", budget="1GiB"):
        assert not sk.training and not sk.blocks[0].training
    assert sk.training  # restored


def test_embedding_reads_only_the_rows_looked_up(tmp_path: Path) -> None:
    vocab = 2048  # vocabulary-heavy: the embedding is the largest unit
    cfg = tiny_llama(vocab, layers=2)
    torch.manual_seed(0)
    ref = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    bigstore.save(unique_state_dict(ref), tmp_path / "m")
    ids = torch.randint(0, vocab, (1, 5), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = ref.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    emb = vocab * 32 * 4
    read = {}
    for rows in (True, False):
        with skeleton():
            sk = transformers.AutoModelForCausalLM.from_config(cfg)
        with offload(sk, tmp_path / "m", device="cpu", budget=emb + 8192, host_budget=0,
                     embedding_rows=rows) as m, torch.no_grad():
            got = m.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
            assert torch.equal(got, want)
            read[rows] = m.last_pass.storage  # a decode step: one token
    assert read[False] - read[True] == emb - 32 * 4  # the whole table vs the one row used
