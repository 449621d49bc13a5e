"""Quantized stores: bigstore.quantize / convert --quantize, reads dequantized through the store
(whole, rows, devices), the packed parts as plain Zarr arrays, offload == resident, damage."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import zarr
from torch import nn

import bigstore
from bigstore.bench import drop_page_cache
from bigstore.bench.counters import resident_bytes
from bigstore.cli import main as cli
from bigstore.errors import BigstoreError, ChecksumError, MissingTensorError
from bigstore.format import QuantizedLayout
from bigstore.io import CpuFiller, RowRequest
from bigstore.io.dequant import dequantize_into
from bigstore.weights.offload import offload, skeleton, unique_state_dict

from .._stores import takes_o_direct

HALF_ULP = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8, "float64": 2.0**-24}


def _weights(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    w = {
        "model.embed_tokens.weight": torch.randn(300, 160, generator=g),
        "model.layers.0.mlp.up_proj.weight": torch.randn(300, 160, generator=g) * 0.02,
        "model.layers.0.mlp.down_proj.weight": torch.randn(160, 300, generator=g) * 0.02,
        "model.layers.0.input_layernorm.weight": torch.rand(160, generator=g),
        "model.layers.0.mlp.up_proj.bias": torch.randn(300, generator=g),
        "lm_head.weight": torch.randn(300, 160, generator=g),
    }
    w["model.layers.0.mlp.down_proj.weight"][3, 17] = 0.5  # an outlier group
    w["model.layers.0.mlp.up_proj.weight"][7] = 0.25  # constant groups
    return {k: v.to(dtype) for k, v in w.items()}


QUANTIZED = ("model.layers.0.mlp.up_proj.weight", "model.layers.0.mlp.down_proj.weight")


def _bits(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _check_bound(x: torch.Tensor, deq: torch.Tensor, parts: bigstore.PackedTensor) -> None:
    """Every group: |x - deq| <= s/2 + levels * |s - s_exact| (s the stored scale) + the final
    rounding into the output dtype."""
    spec = parts.spec
    x64 = x.double().reshape(spec.rows, spec.cols).numpy()
    d64 = deq.double().reshape(spec.rows, spec.cols).numpy()
    s = parts.scales.double().numpy()
    half_ulp = HALF_ULP[spec.dtype]
    for gi in range(spec.n_groups):
        sl = slice(gi * spec.group_size, min(spec.cols, (gi + 1) * spec.group_size))
        xs = x64[:, sl]
        if spec.scheme == "int8":
            levels, exact = 127, np.abs(xs).max(axis=1) / 127
        else:
            levels = 15
            exact = (np.maximum(xs.max(axis=1), 0) - np.minimum(xs.min(axis=1), 0)) / 15
        bound = s[:, gi] / 2 + levels * np.abs(s[:, gi] - exact)
        err = np.abs(xs - d64[:, sl])
        limit = bound[:, None] * (1 + 1e-6) + np.abs(d64[:, sl]) * half_ulp + 2.0**-24
        assert np.all(err <= limit), (gi, float((err - limit).max()))


@pytest.mark.parametrize("scheme", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_quantize_a_checkpoint_error_within_the_bound_for_every_group(
        tmp_path: Path, scheme: str, dtype: torch.dtype) -> None:
    from safetensors.torch import save_file

    w = _weights(dtype)
    save_file(w, str(tmp_path / "m.safetensors"))
    url = str(tmp_path / "q")
    summary = bigstore.quantize(str(tmp_path / "m.safetensors"), url, scheme, 64,
                                chunk_bytes="8KiB")
    assert summary["quantized"] == 2 and summary["stored_nbytes"] < summary["nbytes"]
    back = bigstore.load(url)
    parts = bigstore.load(url, dequantize=False)
    for name, x in w.items():
        assert back[name].dtype == dtype and back[name].shape == x.shape
        if name not in QUANTIZED:  # embeddings, norms, biases, heads: exactly as they were
            assert _bits(back[name]) == _bits(x), name
            assert isinstance(parts[name], torch.Tensor)
            continue
        p = parts[name]
        assert isinstance(p, bigstore.PackedTensor) and p.spec.scheme == scheme
        assert p.packed.dtype == (torch.int8 if scheme == "int8" else torch.uint8)
        assert p.scales.dtype == torch.float16 and (p.zeros is None) == (scheme == "int8")
        _check_bound(x, back[name], p)
        assert _bits(p.dequantize()) == _bits(back[name])  # torch twin == numba, bit for bit
    with bigstore.open(url) as ts:
        lay = ts.meta(QUANTIZED[0])
        assert isinstance(lay, QuantizedLayout) and lay.n_chunks > 1  # several chunks read
        assert ts.quantization(QUANTIZED[0]) == lay.quant
        assert ts.quantization("lm_head.weight") is None
        assert ts.stored_nbytes < ts.nbytes


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    """Shapes the default policy skips, forced in: 3-D, a vector, float64, short last groups."""
    g = torch.Generator().manual_seed(3)
    w = {
        "conv.weight": torch.randn(9, 6, 40, generator=g).bfloat16(),
        "vec": torch.randn(100, generator=g).half(),
        "wide.weight": torch.randn(70, 131, generator=g, dtype=torch.float64),
        "keep": torch.arange(12, dtype=torch.int32),
    }
    url = str(tmp_path_factory.mktemp("odd") / "q")
    bigstore.quantize(w, url, "int4", 16, include=("conv.*", "vec", "wide.*"), chunk_bytes=512)
    return url, w


def test_odd_shapes_quantize_within_the_bound(odd: tuple[str, dict[str, torch.Tensor]]) -> None:
    url, w = odd
    back = bigstore.load(url)
    parts = bigstore.load(url, dequantize=False)
    assert _bits(back["keep"]) == _bits(w["keep"])
    for name in ("conv.weight", "vec", "wide.weight"):
        assert back[name].dtype == w[name].dtype and back[name].shape == w[name].shape
        p = parts[name]
        assert isinstance(p, bigstore.PackedTensor)
        _check_bound(w[name], back[name], p)
    # float64 comes back as the float32 values, widened exactly
    assert torch.equal(back["wide.weight"], back["wide.weight"].float().double())


@pytest.mark.parametrize("rows", [(0, 1), (2, 7), (3, 9), (0, 9), (8, 9), (4, 4)])
def test_rows_read_only_their_parts_and_equal_the_whole(
        odd: tuple[str, dict[str, torch.Tensor]], rows: tuple[int, int]) -> None:
    url, _ = odd
    a, b = rows
    whole = bigstore.load(url)
    with bigstore.open(url) as ts:
        lay = ts.meta("conv.weight")
        assert isinstance(lay, QuantizedLayout)
        assert lay.n_chunks == 3 and lay.part_rows_per_row == 6
        assert _bits(ts["conv.weight"][a:b].torch()) == _bits(whole["conv.weight"][a:b])
        assert _bits(ts["wide.weight"][a * 7:b * 7].torch()) == _bits(
            whole["wide.weight"][a * 7:b * 7])
        assert _bits(ts["vec"][a * 11:b * 11].torch()) == _bits(whole["vec"][a * 11:b * 11])
        if a < 9:
            assert _bits(ts["conv.weight"][a].torch()) == _bits(whole["conv.weight"][a])
        assert ts["conv.weight"].quantization is not None
        assert _bits(ts["conv.weight"].packed().dequantize()) == _bits(whole["conv.weight"])


def test_device_filler_function_matches_the_reader(
        odd: tuple[str, dict[str, torch.Tensor]]) -> None:
    """What the CUDA filler does (parts' bytes -> device -> torch dequantize), on CPU tensors."""
    url, _ = odd
    whole = bigstore.load(url)
    with bigstore.open(url) as ts:
        for name, (a, b) in (("conv.weight", (2, 7)), ("vec", (10, 60)),
                             ("wide.weight", (0, 70))):
            lay = ts.meta(name)
            assert isinstance(lay, QuantizedLayout)
            parts = {}
            for span in lay.part_spans(a, b):
                buf = torch.empty(span.nbytes, dtype=torch.uint8)
                ts.reader.read_rows([RowRequest(span.layout, span.start, span.stop,
                                                memoryview(buf.numpy()))])
                parts[span.part] = buf
            as_bytes = torch.empty((b - a) * lay.row_bytes, dtype=torch.uint8)
            got = dequantize_into(lay, parts, as_bytes, a, b)
            assert got.dtype == whole[name].dtype and _bits(got) == _bits(whole[name][a:b])
            typed = torch.empty_like(whole[name][a:b])
            dequantize_into(lay, parts, typed, a, b)
            assert _bits(typed) == _bits(whole[name][a:b])


def test_the_parts_are_plain_zarr_arrays(odd: tuple[str, dict[str, torch.Tensor]]) -> None:
    url, _ = odd
    parts = bigstore.load(url, dequantize=False)
    root = zarr.open_group(url, mode="r")
    for name in ("conv.weight", "vec", "wide.weight"):
        p = parts[name]
        assert isinstance(p, bigstore.PackedTensor)
        group = root[name]
        assert isinstance(group, zarr.Group)
        meta = dict(group.attrs)["bigstore"]
        assert isinstance(meta, Mapping)
        desc = meta["quantized"]
        assert desc == p.spec.to_json()
        packed, zeros, scales = group["packed"], group["zeros"], group["scales"]
        assert isinstance(packed, zarr.Array) and isinstance(zeros, zarr.Array)
        assert isinstance(scales, zarr.Array)
        assert p.zeros is not None
        assert np.array_equal(np.asarray(packed[...]), p.packed.numpy())
        assert np.array_equal(np.asarray(zeros[...]), p.zeros.numpy())
        assert np.asarray(scales[...]).tobytes() == _bits(p.scales)
    doc = json.loads((Path(url) / "zarr.json").read_text())
    assert doc["attributes"]["bigstore"]["format_version"] == 2  # older readers refuse it


def test_quantized_chunk_damage_is_detected(tmp_path: Path) -> None:
    url = str(tmp_path / "q")
    bigstore.save(_weights(torch.bfloat16), url, quantize="int4", chunk_bytes="8KiB")
    name = QUANTIZED[0]
    for part in ("packed", "scales"):
        f = Path(url) / name / part / "c" / "0" / "0"
        raw = bytearray(f.read_bytes())
        raw[5] ^= 0x01
        f.write_bytes(bytes(raw))
        with pytest.raises(ChecksumError, match=rf"{name}/{part}.*chunk 0"):
            bigstore.load(url, names=[name])
        with bigstore.open(url) as ts, pytest.raises(ChecksumError, match=name):
            ts[name][0:3].numpy()
        raw[5] ^= 0x01
        f.write_bytes(bytes(raw))
    f = Path(url) / name / "zeros" / "c" / "1" / "0"
    f.write_bytes(f.read_bytes()[:-1])
    report = bigstore.verify(url)
    assert report.corrupted_tensors == [f"{name}/zeros"]


@pytest.mark.parametrize("codec", [None, "lossless"])
def test_direct_reads_equal_cached_ones_and_check_the_same(tmp_path: Path,
                                                          codec: str | None) -> None:
    """``read_rows(direct=True)`` (quantized parts and compressed chunks past the page cache)
    gives the bytes of an ordinary read, and damage is caught the same way."""
    url = str(tmp_path / "q")
    w = _weights(torch.bfloat16)
    bigstore.save(w, url, quantize="int4", chunk_bytes="8KiB", codec=codec)
    name = QUANTIZED[0]
    with bigstore.open(url) as ts:
        outs = {}
        for direct in (False, True):
            reqs = []
            for n in ts:
                lay = ts.meta(n)
                buf = np.empty(lay.nbytes, np.uint8)
                reqs.append(RowRequest(lay, 0, lay.rows, memoryview(buf)))
                outs[(n, direct)] = buf
            ts.reader.read_rows(reqs, direct=direct)
        for n in ts:
            assert np.array_equal(outs[(n, True)], outs[(n, False)]), n
        # read past the page cache: with its pages dropped first, the parts' files stay out
        lay = ts.meta(name)
        assert isinstance(lay, QuantizedLayout)
        files = [Path(url) / key for _, part in lay.parts for key in part.object_keys()]
        for direct in (False, True):
            drop_page_cache(files)
            ts.reader.read_rows([RowRequest(lay, 0, lay.rows,
                                            memoryview(np.empty(lay.nbytes, np.uint8)))],
                                direct=direct)
            cached = resident_bytes(files)
            if cached is not None and takes_o_direct(url):
                assert (cached == 0) == direct, (direct, cached)
    f = Path(url) / name / "scales" / "c" / "0" / "0"
    raw = bytearray(f.read_bytes())
    raw[3] ^= 0x01
    f.write_bytes(bytes(raw))
    with bigstore.open(url) as ts, pytest.raises(ChecksumError, match=rf"{name}/scales"):
        lay = ts.meta(name)
        ts.reader.read_rows([RowRequest(lay, 0, lay.rows, memoryview(np.empty(lay.nbytes,
                                                                             np.uint8)))],
                            direct=True)
    f.write_bytes(bytes(raw[:-7]))
    with bigstore.open(url) as ts, pytest.raises(BigstoreError, match=rf"{name}/scales"):
        lay = ts.meta(name)
        ts.reader.read_rows([RowRequest(lay, 0, lay.rows, memoryview(np.empty(lay.nbytes,
                                                                             np.uint8)))],
                            direct=True)


def test_convert_cli_quantize_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from safetensors.torch import save_file

    w = _weights(torch.bfloat16)
    save_file(w, str(tmp_path / "m.safetensors"))
    rc = cli(["convert", str(tmp_path / "m.safetensors"), str(tmp_path / "q"), "--quantize",
              "int4", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["quantized"] == 2
    with bigstore.open(str(tmp_path / "q")) as ts:
        assert {n for n in ts if ts.quantization(n)} == set(QUANTIZED)
        with pytest.raises(MissingTensorError):
            ts.meta(f"{QUANTIZED[0]}/packed")  # parts are not tensors of their own


# -- offload ----------------------------------------------------------------------------------
D, V, L = 64, 50, 4


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(D, 2 * D)
        self.fc2 = nn.Linear(2 * D, D)
        self.norm = nn.LayerNorm(D)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(torch.relu(self.fc1(self.norm(h))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x)
        for b in self.blocks:
            h = b(h)
        return self.head(h)


@pytest.fixture(scope="module", params=["int8", "int4"])
def qnet(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> tuple[str, Net]:
    """A quantized store, and the resident model loaded from that same store."""
    torch.manual_seed(0)
    src = Net().bfloat16().eval()
    url = str(tmp_path_factory.mktemp("qnet") / "net")
    bigstore.quantize(unique_state_dict(src), url, request.param, 16,
                      include=("blocks.*.fc*.weight",))
    resident = Net().bfloat16().eval()
    missing, unexpected = resident.load_state_dict(bigstore.load(url), strict=False)
    assert missing == ["head.weight"] and not unexpected  # tied to emb.weight
    with bigstore.open(url) as ts:
        assert sum(1 for n in ts if ts.quantization(n)) == 2 * L
    return url, resident


@pytest.mark.parametrize("drop_cache", [False, True])
@pytest.mark.parametrize("budget_units", [1, 2, 100])
def test_offload_of_a_quantized_store_equals_the_resident_model(
        qnet: tuple[str, Net], budget_units: int, drop_cache: bool) -> None:
    url, resident = qnet
    with skeleton():
        sk = Net().bfloat16().eval()
    with offload(sk, url, device="cpu", budget="1GiB") as probe:
        sizes = sorted((st.nbytes for st in probe.pager.units), reverse=True)
        fixed = probe.pager.fixed_bytes
    budget = fixed + sum(sizes[:budget_units]) + sizes[0]
    g = torch.Generator().manual_seed(1)
    inputs: list[Any] = [torch.randint(0, V, (2, n), generator=g) for n in (5, 1, 3)]
    # drop_cache: the quantized parts are read past the page cache (O_DIRECT) here
    with offload(sk, url, device="cpu", budget=budget, prefetch=2, drop_cache=drop_cache) as m, \
            torch.no_grad():
        for x in inputs:
            assert torch.equal(m(x), resident(x))
        assert m.stats.peak_resident_bytes <= budget
        if budget_units == 1:
            assert m.stats.evictions > 0


def test_cpu_offload_reuses_decoded_buffers_but_never_under_a_holder(
        qnet: tuple[str, Net]) -> None:
    # the decoded units' buffers come back on later fills, except one a caller still holds
    url, resident = qnet
    with skeleton():
        sk = Net().bfloat16().eval()
    with offload(sk, url, device="cpu", budget="1GiB") as probe:
        sizes = sorted((st.nbytes for st in probe.pager.units), reverse=True)
        budget = probe.pager.fixed_bytes + 2 * sizes[0]
    held: list[torch.Tensor] = []
    sk.blocks[0].register_forward_pre_hook(
        lambda mod, _a: held.append(mod.fc1.weight.data) if not held else None)
    x = torch.randint(0, V, (2, 4), generator=torch.Generator().manual_seed(2))
    with offload(sk, url, device="cpu", budget=budget, prefetch=1, host_budget=0) as m, \
            torch.no_grad():
        for _ in range(4):
            assert torch.equal(m(x), resident(x))
        filler = m.pager.filler
        assert isinstance(filler, CpuFiller)
        pool = filler.buffers
        if pool.enabled:
            assert pool.hits > 0
        assert m.stats.evictions > 0
    block = resident.blocks[0]
    assert isinstance(block, Block)
    assert torch.equal(held[0], block.fc1.weight)  # never overwritten


@pytest.mark.gpu
def test_cuda_load_moves_the_parts_and_dequantizes_there(
        odd: tuple[str, dict[str, torch.Tensor]]) -> None:
    url, _ = odd
    cpu = bigstore.load(url)
    gpu = bigstore.load(url, device="cuda")
    for name, t in cpu.items():
        assert gpu[name].device.type == "cuda"
        assert _bits(gpu[name].cpu()) == _bits(t), name
    parts = bigstore.load(url, device="cuda", dequantize=False)
    p = parts["conv.weight"]
    assert isinstance(p, bigstore.PackedTensor) and p.packed.device.type == "cuda"
    assert _bits(p.dequantize().cpu()) == _bits(cpu["conv.weight"])


@pytest.mark.gpu
@pytest.mark.parametrize("host", ["0", "1GiB"])
def test_cuda_offload_of_a_quantized_store_decodes_on_the_device(
        qnet: tuple[str, Net], host: str) -> None:
    url, resident = qnet
    resident = resident.cuda()
    with skeleton():
        sk = Net().bfloat16().eval()
    with offload(sk, url, device="cuda", budget="1GiB") as probe:
        sizes = sorted((st.nbytes for st in probe.pager.units), reverse=True)
        fixed = probe.pager.fixed_bytes
    budget = fixed + 2 * sizes[0]
    g = torch.Generator().manual_seed(1)
    inputs = [torch.randint(0, V, (2, n), generator=g).cuda() for n in (5, 1, 3)]
    with offload(sk, url, device="cuda", budget=budget, host_budget=host, prefetch=2) as m, \
            torch.no_grad():
        for i, x in enumerate(inputs):
            assert torch.equal(m(x), resident(x))
            if i and host != "0":  # the packed parts are what the host tier keeps
                assert m.last_pass.storage == 0 and m.last_pass.host > 0
        assert m.stats.evictions > 0
        if host != "0":
            kept = sum(st.host.nbytes for st in m.pager.units if st.host is not None)
            assert kept < sum(st.nbytes for st in m.pager.units if st.host is not None)


def test_pass_threads_rule() -> None:
    from bigstore.weights.offload import pass_threads

    # auto: only passes that decode, the cores minus the decoders' share, never more than torch
    assert pass_threads(None, True, cores=2, torch_threads=2, decode_threads=4) == 1
    assert pass_threads(None, False, cores=2, torch_threads=2, decode_threads=4) is None
    assert pass_threads(None, True, cores=16, torch_threads=8, decode_threads=4) is None
    assert pass_threads(None, True, cores=16, torch_threads=16, decode_threads=4) == 12
    assert pass_threads(None, True, cores=1, torch_threads=1, decode_threads=4) is None
    assert pass_threads(0, True, cores=2, torch_threads=2, decode_threads=4) is None
    assert pass_threads(3, False, cores=2, torch_threads=2, decode_threads=4) == 3
    with pytest.raises(bigstore.BigstoreError, match="compute_threads"):
        bigstore.OffloadConfig(compute_threads=-1)


def test_fill_jobs_rule() -> None:
    from types import SimpleNamespace

    from bigstore.weights._pager import PagerStats
    from bigstore.weights.offload import FILL_BOUND, FillJobs

    stats = PagerStats()
    pager: Any = SimpleNamespace(stats=stats, schedule=SimpleNamespace(provisional=False))
    rule = FillJobs(cores=8)
    assert rule.next(6, pager, decoding=True) == 2  # the cores torch leaves
    assert rule.next(8, pager, decoding=True) == 1
    assert rule.next(6, pager, decoding=False) is None  # no decoding: the pool as ever
    # the first passes (order unknown, loads on demand) may wait as much as they like
    stats.passes, stats.last_pass_s, stats.last_pass_waited_s = 1, 1.0, 0.9
    assert rule.next(6, pager, decoding=True) == 2
    stats.passes, stats.demand_loads = 3, 4  # a unit loaded on demand: not a steady pass
    assert rule.next(6, pager, decoding=True) == 2
    stats.last_pass_waited_s = FILL_BOUND * 0.9  # steady, and not bound by its fills
    assert rule.next(6, pager, decoding=True) == 2
    stats.last_pass_waited_s = FILL_BOUND  # steady and bound by its fills: the pool, for good
    assert rule.next(6, pager, decoding=True) is None
    stats.last_pass_waited_s = 0.0
    assert rule.next(6, pager, decoding=True) is None


def test_compute_threads_hold_during_a_pass_and_are_restored(qnet: tuple[str, Net]) -> None:
    url, resident = qnet
    with skeleton():
        sk = Net().bfloat16().eval()
    seen: list[int] = []
    sk.blocks[0].register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    x = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(3))
    with offload(sk, url, device="cpu", budget="1GiB", compute_threads=want) as m, \
            torch.no_grad():
        assert torch.equal(m(x), resident(x))
        assert seen == [want] and torch.get_num_threads() == before
        with pytest.raises(IndexError):
            m(torch.full((1, 2), V + 5))  # a pass that raises restores them too
        assert torch.get_num_threads() == before


def test_auto_compute_threads_only_for_passes_that_decode(
        qnet: tuple[str, Net], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bigstore.weights.offload as off

    url, resident = qnet
    raw = tmp_path / "raw"
    bigstore.save(bigstore.load(url), raw)  # the same values, stored plainly (mapped)
    monkeypatch.setattr(off, "_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    with skeleton():
        sk = Net().bfloat16().eval()
    with offload(sk, url, device="cpu", budget="1GiB") as probe:
        sizes = sorted((st.nbytes for st in probe.pager.units), reverse=True)
        budget = probe.pager.fixed_bytes + 2 * sizes[0]  # units come and go every pass
    try:
        x = torch.randint(0, V, (2, 3), generator=torch.Generator().manual_seed(4))
        for store, host, want in ((url, "0", [1, 1]), (raw, "0", [2, 2]),
                                  (url, "1GiB", [1, 2])):  # kept units decode no more
            with skeleton():
                sk = Net().bfloat16().eval()
            seen: list[int] = []
            jobs: list[int | None] = []
            sk.blocks[0].register_forward_pre_hook(
                lambda *_, s=seen: s.append(torch.get_num_threads()))
            with offload(sk, store, device="cpu", budget=budget, host_budget=host) as m, \
                    torch.no_grad():
                filler = m.filler
                assert isinstance(filler, CpuFiller)
                sk.blocks[0].register_forward_pre_hook(
                    lambda *_, f=filler, j=jobs: j.append(f.decode_jobs))
                for _ in range(2):
                    assert torch.equal(m(x), resident(x))
                assert 0 <= m.stats.last_pass_waited_s <= m.stats.last_pass_s
                assert m.stats.waited_s >= m.stats.last_pass_waited_s
            assert seen == want, (store, host, seen)
            # a decoding pass's fills run one job at a time: the core torch left them
            assert jobs == [1 if t == 1 else None for t in want], (store, host, jobs)
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
