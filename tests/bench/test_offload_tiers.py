"""bench offload passes a host-RAM budget and reads per-pass residency counters only where the
running bigstore has them (the host tier is being added elsewhere): without them it says so;
with them (stood in for here by a thin wrapper over the real offload) it uses and reports them."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import bigstore
from bigstore.bench.offload import OffloadOptions, offload_features, run_offload

OPTS = OffloadOptions(runs=1, budgets=("60%",), host_budgets=("1MiB",), cold=False)


def test_without_a_host_tier_the_option_is_noted_not_passed() -> None:
    if "host_budget" in inspect.signature(bigstore.offload).parameters:
        pytest.skip("this bigstore has a host tier")
    report = run_offload("memory://tiers-none", synthetic=512 << 10, options=OPTS)
    assert report.settings["host_tier"] is False
    assert any("no host-RAM tier" in n for n in report.notes)
    assert not any("host_budget_bytes" in r.params for r in report.rows)


def test_host_budgets_and_residency_counters_when_present(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    real = bigstore.offload
    seen: list[int | None] = []

    def offload(model: Any, url: Any, *, host_budget: int | None = None, **kw: Any) -> Any:
        seen.append(host_budget)
        return real(model, url, **kw)

    def residency(self: Any) -> dict[str, int]:
        return {"bytes_from_storage": self.bytes_read, "bytes_from_host": 7,
                "resident_bytes": self.stats.resident_bytes}

    monkeypatch.setattr(bigstore, "offload", offload)
    monkeypatch.setattr(bigstore.OffloadedModel, "residency", residency, raising=False)
    assert offload_features() == {"host_budget": True, "residency": True}
    report = run_offload("memory://tiers-some", synthetic=512 << 10, options=OPTS)
    assert seen and all(h == 1 << 20 for h in seen)
    (row,) = [r for r in report.rows if r.name.startswith("bigstore offload")]
    assert row.name == "bigstore offload, host 1MiB" and row.params["host_budget_bytes"] == 1 << 20
    # per-pass deltas of the counters; levels for resident bytes
    assert row.samples[0].metrics["residency_bytes_from_host"] == 0.0
    assert row.samples[0].metrics["residency_bytes_from_storage"] == row.samples[0].nbytes
    assert "residency_resident_bytes" in row.samples[0].metrics
