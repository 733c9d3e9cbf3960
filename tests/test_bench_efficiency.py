"""Latency/throughput/memory/FLOPs measurement on a fake model (structure and invariants, never times)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grainvl.bench.efficiency import (
    LatencyStats,
    measure_efficiency,
    measure_latency,
    model_bytes,
    percentile,
    precision_context,
    time_calls,
    track_peak_memory,
)


class FakeModel(nn.Module):
    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_call(model: FakeModel, calls: list[int]):
    def factory(batch_size: int):
        x = torch.randn(batch_size, 16)

        def call() -> torch.Tensor:
            calls.append(batch_size)
            return model(x)

        return call

    return factory


def test_percentile_matches_numpy() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 50):
        values = rng.exponential(size=n).tolist()
        for q in (0, 10, 50, 90, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_stats_structure_and_call_counts() -> None:
    calls: list[int] = []
    stats = measure_latency(make_call(FakeModel(), calls)(1), warmup=3, repeats=12, budget_s=None)
    assert isinstance(stats, LatencyStats)
    assert len(calls) == 3 + 12  # warm-up calls run but are not timed
    assert stats.repeats == 12 and stats.warmup == 3 and stats.batch_size == 1
    assert 0 < stats.min_ms <= stats.p50_ms <= stats.p90_ms
    assert stats.min_ms <= stats.mean_ms


def test_budget_stops_early_but_keeps_min_repeats() -> None:
    calls: list[int] = []
    times = time_calls(make_call(FakeModel(), calls)(1), repeats=1000, warmup=0, budget_s=0.0, min_repeats=4)
    assert len(times) == 4 and len(calls) == 4


def test_measure_efficiency_report() -> None:
    model = FakeModel(width=32).eval()
    calls: list[int] = []
    report = measure_efficiency(make_call(model, calls), model, warmup=2, repeats=5, throughput_repeats=3)
    params = 16 * 32 + 32 + 32 * 4 + 4
    assert report.params_M == pytest.approx(params / 1e6)
    # Forward FLOPs of one sample through the two Linear layers: 2 per multiply-add.
    assert report.gflops == pytest.approx(2 * (16 * 32 + 32 * 4) / 1e9)
    assert report.latency_ms <= report.latency_p90_ms and report.latency_repeats == 5
    assert report.throughput > 0 and report.throughput_batch == 32
    assert 32 in calls and calls.count(32) == 1 + 3  # one warm-up + timed batch-32 calls
    assert report.peak_mem_MB is not None and report.peak_mem_MB >= model_bytes(model) / 2**20
    assert report.precision == "fp32" and report.device == "cpu"


def test_cpu_peak_memory_sees_a_large_temporary_allocation() -> None:
    with track_peak_memory(torch.device("cpu")) as small:
        torch.ones(16)
    with track_peak_memory(torch.device("cpu"), resident_bytes=1000) as large:
        block = torch.ones(64, 2**20 // 4)  # 64 MiB, touched so it is resident
        del block
    assert "CPU" in large.method
    assert large.peak_MB is not None and small.peak_MB is not None
    assert large.peak_MB >= 60  # the freed 64 MiB block still counts: it is a peak, not the final RSS
    assert small.peak_MB < large.peak_MB


def test_model_bytes_counts_tied_tensors_once() -> None:
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False))
    model[1].weight = model[0].weight
    assert model_bytes(model) == 10 * 4 * 4


def test_precision_context() -> None:
    cpu = torch.device("cpu")
    with precision_context("bf16", cpu):
        out = nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with precision_context("fp32", cpu):
        assert nn.Linear(4, 4)(torch.randn(2, 4)).dtype == torch.float32
    with pytest.raises(ValueError, match="fp16"):
        precision_context("fp16", cpu)
    with pytest.raises(ValueError, match="unknown precision"):
        precision_context("int3", cpu)
