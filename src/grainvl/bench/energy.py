"""Green accounting: parameters, FLOPs, energy (kWh), CO₂-eq and hardware tags for every run.

What is measured and what is estimated (Green Deep Learning survey, arXiv 2111.05193; our notes
``research/transfer_persona_green.md`` §C):

* **Parameters**: unique tensors, tied weights counted once.
* **FLOPs**: ``torch.utils.flop_counter.FlopCounterMode`` counts matmuls, convolutions and attention
  from shapes (one multiply-add = 2 FLOPs); element-wise ops, norms and softmax count 0. A training
  step costs about **3× the forward** (backward ≈ 2× forward, Kaplan et al.); :data:`TRAIN_FLOPS_FACTOR`.
* **Energy**: codecarbon's ``OfflineEmissionsTracker`` (bundled per-country carbon intensity, no
  network). It *measures* CPU energy only when RAPL counters are readable and GPU energy through
  NVML; otherwise (VMs, containers, this machine) the CPU figure is an *estimate*: a TDP guessed from
  the CPU model (~4 W per thread when unknown) scaled by load, and RAM is always a power model
  (≥ 10 W on x86). :attr:`EnergyReport.method` says which, in words, for every report.
* If codecarbon cannot be imported or fails (its tracker swallows its own exceptions and then
  returns nothing), :class:`EnergyTracker` falls back to a documented estimate instead of crashing:
  ``4 W × process CPU-seconds + 10 W × wall time``, × PUE, × the country's bundled carbon intensity
  (475 g/kWh world average when even that table is missing). ``method`` then starts with
  ``"fallback estimate"`` and gives the reason.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

TRAIN_FLOPS_FACTOR = 3.0
"""Training FLOPs ≈ 3 × forward FLOPs (forward + backward for activations and weights)."""
FALLBACK_WATTS_PER_THREAD = 4.0
"""Fallback CPU power per busy thread (W); codecarbon's figure for a CPU it cannot identify."""
FALLBACK_RAM_WATTS = 10.0
"""Fallback RAM power (W); codecarbon v3's minimum for x86 machines."""
WORLD_CARBON_INTENSITY = 475.0
"""World average g CO₂-eq per kWh (codecarbon's fallback) when no country table is available."""
J_PER_KWH = 3.6e6


# ---------------------------------------------------------------------------------------------- params / FLOPs
def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements, each tensor counted once even when tied (shared) between modules."""
    seen: set[tuple[Any, ...]] = set()
    total = 0
    for param in model.parameters():  # already de-duplicates the same Parameter object
        if trainable_only and not param.requires_grad:
            continue
        # Distinct Parameter objects can still view the same memory; count each view once.
        key = (param.device, param.untyped_storage().data_ptr(), param.storage_offset(), tuple(param.shape))
        if param.numel() and key in seen:
            continue
        seen.add(key)
        total += param.numel()
    if not trainable_only:
        total += _int8_linear_elements(model)
    return total


def _dynamic_linear_type() -> type | None:
    try:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    except ImportError:  # a torch build without the quantized modules
        return None
    return DynamicLinear


def _int8_linear_elements(model: nn.Module) -> int:
    """Weight + bias elements of dynamically quantised linears: their packed int8 weights are no Parameters."""
    kind = _dynamic_linear_type()
    if kind is None:
        return 0
    return sum(m.in_features * m.out_features + m.out_features for m in model.modules() if isinstance(m, kind))


def count_flops(fn: Callable[..., Any], *args: Any, no_grad: bool = True, **kwargs: Any) -> int:
    """FLOPs of one call ``fn(*args, **kwargs)`` (forward only under ``no_grad``; add backward by calling it inside)."""
    counter = FlopCounterMode(display=False)
    int8 = [0]  # FlopCounterMode does not see quantized::linear_dynamic: count int8 linears by hook (2·in·out/row)
    kind = _dynamic_linear_type()

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        if kind is not None and isinstance(module, kind) and inputs and isinstance(inputs[0], torch.Tensor):
            int8[0] += 2 * (inputs[0].numel() // module.in_features) * module.in_features * module.out_features

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        with counter, torch.set_grad_enabled(not no_grad):
            fn(*args, **kwargs)
    finally:
        handle.remove()
    return int(counter.get_total_flops()) + int8[0]


def _leading_dim(value: Any) -> int | None:
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return int(value.shape[0])
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _leading_dim(item)
            if found is not None:
                return found
    return None


def flops_per_sample(fn: Callable[..., Any], *args: Any, batch_size: int | None = None, **kwargs: Any) -> float:
    """Forward FLOPs per sample: :func:`count_flops` divided by the batch size.

    ``batch_size`` defaults to the leading dimension of the first tensor found in ``args`` (dicts and
    lists are searched in order). Training FLOPs per sample ≈ :data:`TRAIN_FLOPS_FACTOR` × this.
    """
    size = batch_size if batch_size is not None else _leading_dim(list(args)) or 1
    return count_flops(fn, *args, **kwargs) / size


# ---------------------------------------------------------------------------------------------- energy
@dataclass
class EnergyReport:
    """Energy and emissions of one tracked span. Energies in kWh, ``co2_g`` in grams CO₂-eq."""

    duration_s: float
    energy_kWh: float
    co2_g: float
    cpu_energy_kWh: float
    ram_energy_kWh: float
    gpu_energy_kWh: float
    method: str
    """How the numbers were obtained: which parts are measured (RAPL/NVML) and which are estimates."""
    carbon_intensity_g_per_kWh: float | None = None
    country_iso_code: str | None = None
    pue: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _country_carbon_intensity(country_iso_code: str) -> tuple[float, str]:
    """g CO₂-eq/kWh for a country from codecarbon's bundled table, else the world average."""
    try:
        table_path = importlib.resources.files("codecarbon") / "data/private_infra/global_energy_mix.json"
        table = json.loads(table_path.read_text(encoding="utf-8"))
        value = table[country_iso_code]["carbon_intensity"]
        if value is not None:
            return float(value), f"codecarbon table, {country_iso_code} {table[country_iso_code].get('year', '')}"
    except (ImportError, FileNotFoundError, KeyError, ValueError, TypeError):
        pass
    return WORLD_CARBON_INTENSITY, "world average"


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def _describe_codecarbon(tracker: Any, data: Any) -> str:
    """Honest words for what codecarbon measured vs estimated, read from its hardware objects."""
    parts = []
    for hw in getattr(tracker, "_hardware", []):
        kind = type(hw).__name__
        if kind == "CPU":
            mode = getattr(hw, "_mode", "unknown")
            tdp = getattr(hw, "_tdp", None)
            if mode == "intel_rapl":
                parts.append("CPU measured (RAPL package counters)")
            elif mode == "cpu_load":
                parts.append(f"CPU estimated (no power counters: TDP {tdp} W × load model 0.1+0.9·load³)")
            elif mode == "constant":
                parts.append(f"CPU estimated (no power counters: constant 50% of TDP {tdp} W)")
            else:
                parts.append(f"CPU measured ({mode})")
        elif kind == "RAM":
            forced = getattr(hw, "_force_ram_power", None)
            how = "given" if forced is not None else "power model from installed RAM"
            parts.append(f"RAM estimated ({data.ram_power:.1f} W, {how})")
        elif kind == "GPU":
            parts.append(f"GPU measured (NVML energy counter, {data.gpu_count}× {data.gpu_model})")
        else:
            parts.append(f"{kind} ({hw.description() if hasattr(hw, 'description') else 'unknown'})")
    version = getattr(data, "codecarbon_version", "?")
    return f"codecarbon {version} offline ({data.country_iso_code}, PUE {data.pue}): " + "; ".join(parts)


class EnergyTracker:
    """Context manager measuring the energy and CO₂ of the code inside it; ``.report`` after exit.

    >>> with EnergyTracker(country_iso_code="FRA") as tracker:
    ...     train()
    >>> tracker.report.energy_kWh, tracker.report.method

    Offline only (no geolocation, no API). ``tracking_mode="machine"`` charges the whole machine
    (right for one job per machine; codecarbon's "process" mode splits CPU/RAM by usage).
    ``output_dir`` additionally writes codecarbon's ``emissions.csv`` there.
    """

    def __init__(
        self,
        country_iso_code: str = "FRA",
        output_dir: str | Path | None = None,
        measure_power_secs: float = 15.0,
        tracking_mode: str = "machine",
        pue: float = 1.0,
        use_codecarbon: bool = True,
    ) -> None:
        self.country_iso_code = country_iso_code
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.measure_power_secs = measure_power_secs
        self.tracking_mode = tracking_mode
        self.pue = pue
        self.use_codecarbon = use_codecarbon
        self.report: EnergyReport | None = None
        self._tracker: Any = None
        self._failure: str | None = None if use_codecarbon else "codecarbon disabled"
        self._start_time = 0.0
        self._start_cpu = 0.0

    def start(self) -> EnergyTracker:
        self.report = None
        if self.use_codecarbon:
            self._tracker = self._start_codecarbon()
        # Start our clock after codecarbon's own start-up (hardware probing, ~1 s) so it is not charged.
        self._start_time = time.perf_counter()
        self._start_cpu = _cpu_seconds()
        return self

    def _start_codecarbon(self) -> Any:
        try:
            from codecarbon import OfflineEmissionsTracker
            from codecarbon.output_methods.base_output import OutputMethod
        except ImportError as error:
            self._failure = f"codecarbon not importable: {error}"
            return None
        logging.getLogger("codecarbon").setLevel(logging.ERROR)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)  # codecarbon silently fails on a missing dir
        tracker = OfflineEmissionsTracker(
            country_iso_code=self.country_iso_code,
            measure_power_secs=self.measure_power_secs,
            tracking_mode=self.tracking_mode,
            pue=self.pue,
            log_level="error",
            output_methods=[OutputMethod.CSV] if self.output_dir is not None else [],
            output_dir=str(self.output_dir) if self.output_dir is not None else ".",
        )
        tracker.start()  # wrapped in @suppress(Exception) upstream: a failure shows as no start time
        if getattr(tracker, "_start_time", None) is None:
            self._failure = "codecarbon tracker did not start"
            return None
        return tracker

    def stop(self) -> EnergyReport:
        duration = time.perf_counter() - self._start_time
        cpu_seconds = _cpu_seconds() - self._start_cpu
        data = None
        if self._tracker is not None:
            self._tracker.stop()
            data = getattr(self._tracker, "final_emissions_data", None)
            if data is None:
                self._failure = "codecarbon returned no data"
        if data is not None:
            self.report = EnergyReport(
                duration_s=duration,
                energy_kWh=float(data.energy_consumed),
                co2_g=float(data.emissions) * 1000.0,
                cpu_energy_kWh=float(data.cpu_energy),
                ram_energy_kWh=float(data.ram_energy),
                gpu_energy_kWh=float(data.gpu_energy),
                method=_describe_codecarbon(self._tracker, data),
                carbon_intensity_g_per_kWh=(
                    float(data.emissions) * 1000.0 / float(data.energy_consumed) if data.energy_consumed else None
                ),
                country_iso_code=self.country_iso_code,
                pue=self.pue,
            )
        else:
            self.report = self._fallback_report(duration, cpu_seconds)
        self._tracker = None
        return self.report

    def _fallback_report(self, duration: float, cpu_seconds: float) -> EnergyReport:
        """``4 W × CPU-seconds + 10 W × wall time`` (× PUE) and the bundled carbon intensity."""
        cpu_kwh = FALLBACK_WATTS_PER_THREAD * cpu_seconds * self.pue / J_PER_KWH
        ram_kwh = FALLBACK_RAM_WATTS * duration * self.pue / J_PER_KWH
        intensity, source = _country_carbon_intensity(self.country_iso_code)
        total = cpu_kwh + ram_kwh
        method = (
            f"fallback estimate ({self._failure}): CPU {FALLBACK_WATTS_PER_THREAD:g} W × "
            f"{cpu_seconds:.1f} process CPU-seconds, RAM {FALLBACK_RAM_WATTS:g} W × wall time, PUE {self.pue}, "
            f"{intensity:.0f} g/kWh ({source}); GPU not measured"
        )
        return EnergyReport(
            duration_s=duration,
            energy_kWh=total,
            co2_g=total * intensity,
            cpu_energy_kWh=cpu_kwh,
            ram_energy_kWh=ram_kwh,
            gpu_energy_kWh=0.0,
            method=method,
            carbon_intensity_g_per_kWh=intensity,
            country_iso_code=self.country_iso_code,
            pue=self.pue,
        )

    def __enter__(self) -> EnergyTracker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- hardware
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _git_commit() -> tuple[str | None, bool | None]:
    """(HEAD commit, working tree has uncommitted changes) of the repository holding this package."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=5, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return out.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def hardware_tags(precision: str = "fp32") -> dict[str, Any]:
    """CPU model and threads, GPU name/count, torch/python versions, precision and git commit.

    ``hardware`` is a one-line summary for the ``hardware`` field of results.jsonl.
    """
    cpu = _cpu_model()
    threads = os.cpu_count() or 1
    gpu_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpu = torch.cuda.get_device_name(0) if gpu_count else None
    commit, dirty = _git_commit()
    summary = f"{cpu} ({threads} threads)" + (f" + {gpu_count}× {gpu}" if gpu else "")
    return {
        "hardware": summary,
        "cpu_model": cpu,
        "cpu_threads": threads,
        "torch_threads": torch.get_num_threads(),
        "gpu_name": gpu,
        "gpu_count": gpu_count,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "precision": precision,
        "commit": commit,
        "commit_dirty": dirty,
    }
