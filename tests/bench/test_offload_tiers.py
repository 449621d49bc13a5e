"""bench offload passes the host-RAM budget and reports where each pass's bytes came from."""

from __future__ import annotations

from bigstore.bench.offload import OffloadOptions, offload_features, run_offload


def test_host_tier_counters_are_reported() -> None:
    assert offload_features() == {"host_budget": True, "residency": True}
    opts = OffloadOptions(runs=2, budgets=("30%",), host_budgets=("64MiB", "0"), cold=False)
    report = run_offload("memory://tiers-some", synthetic=8 << 20, options=opts)
    rows = {r.name: r for r in report.rows if r.name.startswith("bigstore offload")}
    kept = rows["bigstore offload, host 64MiB"]
    assert kept.params["host_budget_bytes"] == 64 << 20
    for s in kept.samples:  # after the first pass every streamed unit comes from host RAM
        assert s.metrics["pass_storage_bytes"] == 0.0
        assert s.metrics["pass_host_bytes"] > 0
        assert s.metrics["residency_storage_bytes"] == 0.0
    off = rows["bigstore offload, host 0"]
    for s in off.samples:  # no host tier: the streamed units are read again on every pass
        assert s.metrics["pass_host_bytes"] == 0.0
        assert s.metrics["pass_storage_bytes"] > 0
