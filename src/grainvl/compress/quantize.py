"""Dynamic int8 quantisation of ``nn.Linear`` layers on CPU (Q8BERT-style post-training quantisation).

``torch.ao.quantization.quantize_dynamic`` replaces every ``nn.Linear`` with a ``DynamicQuantizedLinear``:
weights are stored as int8 with one per-tensor affine scale (computed from the weight's min/max), and
activations are quantised on the fly per batch, so no calibration data is needed. Embeddings,
LayerNorms, convolutions and the attention softmax stay fp32. It runs on CPU only (fbgemm/x86 or
qnnpack kernels), which is where the latency gain is measured.

Storage: a quantised module holds packed ``torch.ScriptObject`` weights, which safetensors cannot
store, and its state dict differs from the fp32 model's. Because dynamic quantisation is a
*deterministic function of the fp32 weights*, a quantised model is stored as **the fp32 weights in
the model's ordinary folder + a ``quantize.json`` flag** (``{"method": "dynamic-int8", ...}``);
:func:`load_with_quantization` loads the fp32 model and re-applies the same quantisation, which
rebuilds bit-identical int8 weights (tested). The *reported* size is the serialised size of the
quantised state dict (:func:`serialized_size`), i.e. what shipping the int8 model would cost.
"""

from __future__ import annotations

import copy
import io
import json
import statistics
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
from torch.ao.quantization import quantize_dynamic

from grainvl.bench.efficiency import time_calls
from grainvl.models.factory import QUANTIZE_FLAG_FILE
from grainvl.models.layers import Attention
from grainvl.utils.fileio import write_json

QUANTIZE_FILE = QUANTIZE_FLAG_FILE  # defined with the resolver, which reports the flag
METHOD = "dynamic-int8"

M = TypeVar("M", bound=nn.Module)


@contextmanager
def _quiet_torch_ao() -> Iterator[None]:
    """torch >= 2.9 warns that eager-mode ``torch.ao.quantization`` moves to torchao; it still works."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantiz.*deprecated.*", category=UserWarning)
        yield


def quantize_dynamic_int8(model: M, skip: tuple[str, ...] = ()) -> M:
    """A CPU copy of ``model`` in eval mode with every ``nn.Linear`` dynamically quantised to int8.

    ``skip``: module-name prefixes left in fp32 (e.g. a tiny classifier head). The input model is
    untouched. Raises when no quantised engine is available on this machine.
    """
    engines = torch.backends.quantized.supported_engines
    if not any(e in engines for e in ("x86", "fbgemm", "qnnpack")):
        raise RuntimeError(f"no int8 CPU kernels in this torch build (engines: {engines})")
    fp32 = copy.deepcopy(model).to("cpu").eval()
    skip = skip + tuple(direct_weight_linears(fp32)) + tuple(tied_linears(fp32))
    names = {
        name
        for name, module in fp32.named_modules()
        if isinstance(module, nn.Linear) and not any(name.startswith(prefix) for prefix in skip)
    }
    if not names:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layers to quantise")
    with _quiet_torch_ao():
        return quantize_dynamic(fp32, qconfig_spec=names, dtype=torch.qint8)  # type: ignore[return-value]


def direct_weight_linears(model: nn.Module) -> list[str]:
    """Linears whose *weight tensor* the model reads directly, which a quantised module cannot serve.

    The ViT attention (:class:`grainvl.models.layers.Attention`) computes ``F.linear(x, qkv.weight,
    fused_bias)`` so that BEiT's separate q/v biases work; a ``DynamicQuantizedLinear`` has no weight
    tensor, so these fused q/k/v projections stay fp32 (about a quarter of each ViT block's linear
    weights; the output projection and the MLP are quantised).
    """

    return [f"{name}.qkv" if name else "qkv" for name, module in model.named_modules() if isinstance(module, Attention)]


def tied_linears(model: nn.Module) -> list[str]:
    """Linears whose weight is shared with another module (X²-VLM's MLM decoder = the word embeddings).

    Quantising one would store a second, int8 copy of the shared table next to the fp32 embedding
    (the model would grow) and untie the two, so tied projections stay fp32.
    """
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter):
            owners.setdefault(weight.data_ptr(), []).append(name)
    return sorted(
        name
        for names in owners.values()
        if len(names) > 1
        for name in names
        if isinstance(model.get_submodule(name), nn.Linear)
    )


def count_quantized_linears(model: nn.Module) -> int:
    """Number of dynamically quantised linear layers in ``model``."""

    return sum(isinstance(m, DynamicLinear) for m in model.modules())


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())`` (packed int8 weights included), written in memory."""
    buffer = io.BytesIO()
    with _quiet_torch_ao():
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def median_latency_ms(run: Callable[[], Any], warmup: int = 2, repeats: int = 10) -> float:
    """Median wall time of ``run()`` in milliseconds under ``torch.inference_mode`` (the benchmark's timer)."""
    with torch.inference_mode():
        return statistics.median(time_calls(run, repeats, warmup))


@dataclass
class QuantizeReport:
    """fp32 vs int8: serialised bytes, median latency (ms) of one call, and a score when one was given."""

    size_fp32_bytes: int
    size_int8_bytes: int
    latency_fp32_ms: float
    latency_int8_ms: float
    quantized_linears: int
    score_fp32: float | None = None
    score_int8: float | None = None

    @property
    def size_ratio(self) -> float:
        return self.size_int8_bytes / self.size_fp32_bytes

    @property
    def speedup(self) -> float:
        return self.latency_fp32_ms / self.latency_int8_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "size_ratio": self.size_ratio, "speedup": self.speedup}


def compare_quantized(
    fp32: nn.Module,
    int8: nn.Module,
    run: Callable[[nn.Module], Any],
    score: Callable[[nn.Module], float] | None = None,
    repeats: int = 10,
) -> QuantizeReport:
    """Measure both models side by side: ``run(model)`` is one inference call to time (e.g. a batch-1
    forward), ``score(model)`` an accuracy-like metric (higher is better). Timings alternate between the
    models so that machine load affects both alike."""
    fp32 = fp32.to("cpu").eval()
    int8.eval()
    fp32_times: list[float] = []
    int8_times: list[float] = []
    for _ in range(max(1, repeats // 5)):  # interleaved rounds of 5
        fp32_times.append(median_latency_ms(lambda: run(fp32), warmup=1, repeats=5))
        int8_times.append(median_latency_ms(lambda: run(int8), warmup=1, repeats=5))
    return QuantizeReport(
        size_fp32_bytes=serialized_size(fp32),
        size_int8_bytes=serialized_size(int8),
        latency_fp32_ms=statistics.median(fp32_times),
        latency_int8_ms=statistics.median(int8_times),
        quantized_linears=count_quantized_linears(int8),
        score_fp32=None if score is None else float(score(fp32)),
        score_int8=None if score is None else float(score(int8)),
    )


# ------------------------------------------------------------------------------------------- storage
def write_quantize_flag(folder: str | Path, skip: tuple[str, ...] = ()) -> Path:
    """Mark a saved fp32 model folder as "load me dynamically quantised" (``quantize.json``)."""

    path = Path(folder) / QUANTIZE_FILE
    write_json(path, {"method": METHOD, "dtype": "qint8", "modules": ["Linear"], "skip": list(skip)})
    return path


def read_quantize_flag(folder: str | Path) -> dict[str, Any] | None:
    """The folder's ``quantize.json`` or None; an unknown method is a ValueError (never silently fp32)."""
    path = Path(folder) / QUANTIZE_FILE
    if not path.is_file():
        return None
    spec = json.loads(path.read_text(encoding="utf-8"))
    if spec.get("method") != METHOD:
        raise ValueError(f"{path}: unknown quantisation method {spec.get('method')!r} (supported: {METHOD!r})")
    return spec


def load_with_quantization(folder: str | Path, loader: Callable[[Path], M]) -> M:
    """``loader(folder)`` (e.g. ``XVLM.from_pretrained``), then re-quantised when the folder is flagged."""
    folder = Path(folder)
    model = loader(folder)
    spec = read_quantize_flag(folder)
    if spec is None:
        return model
    return quantize_dynamic_int8(model, skip=tuple(spec.get("skip", ())))


def save_quantized_xvlm(model: nn.Module, folder: str | Path, tokenizer: Any = None) -> Path:
    """Save an fp32 :class:`~grainvl.models.xvlm.XVLM` with the int8 flag; reload with
    ``load_with_quantization(folder, XVLM.from_pretrained)``."""
    out = model.save_pretrained(folder, tokenizer=tokenizer)  # type: ignore[operator]
    write_quantize_flag(out)
    return Path(out)


__all__ = [
    "METHOD",
    "QUANTIZE_FILE",
    "QuantizeReport",
    "compare_quantized",
    "count_quantized_linears",
    "direct_weight_linears",
    "load_with_quantization",
    "median_latency_ms",
    "quantize_dynamic_int8",
    "read_quantize_flag",
    "save_quantized_xvlm",
    "serialized_size",
    "tied_linears",
    "write_quantize_flag",
]
