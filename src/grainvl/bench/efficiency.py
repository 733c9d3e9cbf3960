"""Inference efficiency of one model on one task: latency, throughput, peak memory and FLOPs per sample.

The protocol follows VLUE (arXiv 2205.15237, our notes ``research/davinci_cclm_vlue.md`` §C.4): the
main number is the wall-clock time of **one inference at batch size 1** through the whole pipeline,
measured after warm-up calls and reported as the median (p50) and the 90th percentile (p90) over
many calls. Throughput is measured at batch 32. Every measurement synchronises CUDA before reading
the clock, so queued GPU work is not mistaken for finished work.

What ``peak_mem_MB`` means (measured during the batch-32 throughput run, the largest working set):

* **CUDA**: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: weights +
  activations + workspace held by PyTorch's allocator (not the allocator's cached-but-free blocks).
* **CPU**: the bytes of the model's parameters and buffers **plus the peak growth of the process's
  resident set (RSS) during the run**. On Linux the kernel's peak-RSS counter (``VmHWM``) is reset by
  writing ``5`` to ``/proc/self/clear_refs`` right before the run and read after it; the growth is
  ``VmHWM - VmRSS(before)``. Where that file cannot be written, a thread samples the RSS every
  millisecond instead (can miss a peak shorter than that). Memory the allocator kept from earlier
  calls and reuses is already resident and so not counted as growth; the number is thus a lower
  bound of the working set and comparable between models measured the same way, not with GPU
  numbers. :attr:`EfficiencyReport.peak_mem_method` says which way was used.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from grainvl.bench.energy import count_parameters, flops_per_sample

MiB = 2**20
PRECISIONS = ("fp32", "bf16", "fp16")


# ---------------------------------------------------------------------------------------------- statistics
def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between order statistics (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass
class LatencyStats:
    """Per-call wall-clock times in milliseconds of ``repeats`` calls measured after ``warmup`` calls."""

    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    repeats: int
    warmup: int
    batch_size: int

    @classmethod
    def from_times(cls, times_ms: list[float], warmup: int, batch_size: int) -> LatencyStats:
        return cls(
            p50_ms=percentile(times_ms, 50),
            p90_ms=percentile(times_ms, 90),
            mean_ms=sum(times_ms) / len(times_ms),
            min_ms=min(times_ms),
            repeats=len(times_ms),
            warmup=warmup,
            batch_size=batch_size,
        )


# ---------------------------------------------------------------------------------------------- timing
def _synchronize(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(
    fn: Callable[[], Any],
    repeats: int,
    warmup: int,
    device: torch.device | None = None,
    budget_s: float | None = None,
    min_repeats: int = 5,
) -> list[float]:
    """Milliseconds of each of up to ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    ``budget_s`` stops early (after at least ``min_repeats`` timed calls) once the timed calls have
    taken that long, so a large model on a small CPU does not run for minutes.
    """
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        _synchronize(device)
        times: list[float] = []
        spent = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            _synchronize(device)
            elapsed = time.perf_counter() - start
            times.append(1000.0 * elapsed)
            spent += elapsed
            if budget_s is not None and spent >= budget_s and len(times) >= min_repeats:
                break
    return times


def measure_latency(
    fn: Callable[[], Any],
    warmup: int = 10,
    repeats: int = 50,
    batch_size: int = 1,
    device: torch.device | None = None,
    budget_s: float | None = 30.0,
) -> LatencyStats:
    """p50/p90 latency of ``fn`` (one inference of ``batch_size`` samples) after ``warmup`` calls."""
    times = time_calls(fn, repeats, warmup, device, budget_s)
    return LatencyStats.from_times(times, warmup, batch_size)


# ---------------------------------------------------------------------------------------------- memory
def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_kib("VmHWM") is not None


def _current_rss_bytes() -> int | None:
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except (ImportError, OSError):
        return None


class _RssSampler(threading.Thread):
    """Polls the RSS every ``interval_s`` and keeps the maximum (fallback when VmHWM cannot be reset)."""

    def __init__(self, interval_s: float = 0.001) -> None:
        super().__init__(daemon=True)
        self.interval_s = interval_s
        self.peak = _current_rss_bytes() or 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, _current_rss_bytes() or 0)
            self._stop_event.wait(self.interval_s)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, _current_rss_bytes() or 0)
        return self.peak


@dataclass
class PeakMemory:
    """Result of :func:`track_peak_memory`: bytes at the peak and how they were obtained."""

    peak_bytes: int | None = None
    method: str = "not measured"

    @property
    def peak_MB(self) -> float | None:
        return self.peak_bytes / MiB if self.peak_bytes is not None else None


def model_bytes(model: nn.Module) -> int:
    """Bytes of the parameters and buffers of ``model`` (tied tensors once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for tensor in [*model.parameters(), *model.buffers()]:
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total


@contextlib.contextmanager
def track_peak_memory(device: torch.device, resident_bytes: int = 0) -> Iterator[PeakMemory]:
    """Peak memory of the code inside the ``with`` block (see the module docstring for the definitions).

    ``resident_bytes`` (CPU only) is added to the RSS growth: pass :func:`model_bytes` so the CPU
    figure counts the weights like the CUDA allocator figure does.
    """
    result = PeakMemory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.peak_bytes = int(torch.cuda.max_memory_allocated(device))
        result.method = "CUDA max_memory_allocated (weights + activations)"
        return
    baseline = _current_rss_bytes()
    if baseline is not None and _reset_peak_rss():
        yield result
        peak = (_proc_status_kib("VmHWM") or 0) * 1024
        how = "VmHWM reset through /proc/self/clear_refs"
    elif baseline is not None:
        sampler = _RssSampler()
        sampler.start()
        try:
            yield result
        finally:
            peak = sampler.stop()
        how = "RSS sampled every 1 ms"
    else:
        yield result
        return
    result.peak_bytes = resident_bytes + max(0, peak - baseline)
    result.method = f"CPU: weights + peak RSS growth ({how})"


# ---------------------------------------------------------------------------------------------- precision
def precision_context(precision: str, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` for ``bf16``/``fp16`` on ``device``; a no-op context for ``fp32``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------- one report
@dataclass
class EfficiencyReport:
    """Inference cost of one (model, task). Units: M parameters, GFLOPs per sample, ms, samples/s, MiB."""

    params_M: float
    gflops: float
    latency_ms: float
    latency_p90_ms: float
    latency_repeats: int
    throughput: float
    throughput_batch: int
    peak_mem_MB: float | None
    peak_mem_method: str
    precision: str
    device: str
    torch_threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_efficiency(
    make_call: Callable[[int], Callable[[], Any]],
    model: nn.Module,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    latency_batch: int = 1,
    throughput_batch: int = 32,
    warmup: int = 10,
    repeats: int = 50,
    throughput_repeats: int = 5,
    budget_s: float = 30.0,
) -> EfficiencyReport:
    """Measure one model on one task.

    ``make_call(batch_size)`` returns a zero-argument callable running ONE inference over
    ``batch_size`` real samples (a task's ``latency_call``); ``model`` is the module it runs (for the
    parameter count and the weights' bytes). FLOPs are counted on the batch-``latency_batch`` call.
    """
    device = torch.device(device)
    with precision_context(precision, device):
        single = make_call(latency_batch)
        with torch.no_grad():
            gflops = flops_per_sample(single, batch_size=latency_batch) / 1e9
        latency = measure_latency(single, warmup, repeats, latency_batch, device, budget_s)
        del single
        batched = make_call(throughput_batch)
        with track_peak_memory(device, resident_bytes=model_bytes(model)) as memory:
            times = time_calls(batched, throughput_repeats, 1, device, budget_s, min_repeats=1)
    throughput = throughput_batch * len(times) / (sum(times) / 1000.0)
    return EfficiencyReport(
        params_M=count_parameters(model) / 1e6,
        gflops=gflops,
        latency_ms=latency.p50_ms,
        latency_p90_ms=latency.p90_ms,
        latency_repeats=latency.repeats,
        throughput=throughput,
        throughput_batch=throughput_batch,
        peak_mem_MB=memory.peak_MB,
        peak_mem_method=memory.method,
        precision=precision,
        device=str(device),
        torch_threads=torch.get_num_threads(),
    )
