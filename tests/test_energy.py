"""Green accounting: parameter counts with tied weights, FLOPs against the analytic count, energy reports."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from grainvl.bench import energy
from grainvl.bench.energy import EnergyTracker, count_flops, count_parameters, flops_per_sample, hardware_tags


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 10, dim: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.decoder = nn.Linear(dim, vocab, bias=False)
        self.decoder.weight = self.embed.weight  # tied: one tensor, two names


def test_count_parameters_counts_tied_weights_once() -> None:
    model = TiedLM()
    assert count_parameters(model) == 10 * 4 + 2 * 4  # embedding once + LayerNorm weight and bias
    model.norm.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 40


def test_count_parameters_counts_distinct_parameters_sharing_memory_once() -> None:
    base = nn.Parameter(torch.randn(3, 5))
    module = nn.Module()
    module.a = base
    module.b = nn.Parameter(base.data)  # another Parameter object over the same memory
    module.c = nn.Parameter(torch.randn(2))
    assert count_parameters(module) == 15 + 2


def test_flops_of_linear_equal_two_b_in_out() -> None:
    batch, d_in, d_out = 3, 8, 5
    layer = nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in)
    assert count_flops(layer, x) == 2 * batch * d_in * d_out
    assert flops_per_sample(layer, x) == 2 * d_in * d_out
    assert flops_per_sample(lambda b: layer(b["x"]), {"x": x}) == 2 * d_in * d_out
    assert flops_per_sample(layer, x, batch_size=1) == 2 * batch * d_in * d_out


def test_count_flops_includes_backward_when_called_inside() -> None:
    layer = nn.Linear(8, 5, bias=False)
    x = torch.randn(3, 8)  # no grad for x: backward computes only the weight gradient (one more matmul)

    def step(inp: torch.Tensor) -> None:
        layer(inp).sum().backward()

    assert count_flops(step, x, no_grad=False) == 2 * (2 * 3 * 8 * 5)


def _busy(seconds: float) -> None:
    a = torch.randn(256, 256)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a = torch.tanh(a @ a)


def test_energy_tracker_reports_positive_energy_offline_and_says_how(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[object] = []

    def no_network(self: socket.socket, address: object) -> None:
        attempts.append(address)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    with EnergyTracker(country_iso_code="FRA", measure_power_secs=1) as tracker:
        _busy(0.5)
    report = tracker.report
    assert report is not None
    assert attempts == []
    assert report.energy_kWh > 0 and report.co2_g > 0
    assert report.energy_kWh == pytest.approx(report.cpu_energy_kWh + report.ram_energy_kWh + report.gpu_energy_kWh)
    assert report.duration_s >= 0.5
    assert report.method.startswith("codecarbon")
    assert "RAM estimated" in report.method
    if not Path("/sys/class/powercap").exists():  # no RAPL counters: the CPU figure must say it is an estimate
        assert "CPU estimated" in report.method
    assert report.carbon_intensity_g_per_kWh == pytest.approx(56.0, abs=1.0)  # France in codecarbon's table


def test_energy_tracker_fallback_is_a_documented_estimate() -> None:
    with EnergyTracker(country_iso_code="FRA", use_codecarbon=False) as tracker:
        _busy(0.2)
    report = tracker.report
    assert report is not None
    assert report.method.startswith("fallback estimate (codecarbon disabled)")
    assert report.ram_energy_kWh == pytest.approx(10.0 * report.duration_s / 3.6e6)
    assert report.cpu_energy_kWh > 0
    assert report.co2_g == pytest.approx(report.energy_kWh * report.carbon_intensity_g_per_kWh)


def test_energy_tracker_falls_back_when_codecarbon_fails_silently(monkeypatch: pytest.MonkeyPatch) -> None:
    class BrokenTracker:  # like OfflineEmissionsTracker after a swallowed exception in start()
        _start_time = None

        def __init__(self, **kwargs: object) -> None:
            pass

        def start(self) -> None:
            pass

    import codecarbon

    monkeypatch.setattr(codecarbon, "OfflineEmissionsTracker", BrokenTracker)
    with EnergyTracker() as tracker:
        _busy(0.05)
    assert tracker.report is not None
    assert tracker.report.method.startswith("fallback estimate (codecarbon tracker did not start)")
    assert tracker.report.energy_kWh > 0


def test_country_carbon_intensity_unknown_country_uses_world_average() -> None:
    assert energy._country_carbon_intensity("XXX") == (energy.WORLD_CARBON_INTENSITY, "world average")


def test_hardware_tags() -> None:
    tags = hardware_tags(precision="bf16")
    assert tags["torch"] == torch.__version__
    assert tags["precision"] == "bf16"
    assert tags["cpu_threads"] >= 1
    assert (tags["gpu_name"] is None) == (not torch.cuda.is_available())
    assert tags["cpu_model"] in tags["hardware"]
    assert tags["commit"] is None or len(tags["commit"]) == 40
