"""Inference back-ends for an XVLM's three towers: eager PyTorch, ``torch.compile`` and ONNX Runtime (issue 20 §4).

The towers are :mod:`grainvl.models.export`'s wrappers, the pieces a service deploys separately:

* image: ``image (B, 3, R, R) -> (image_embeds (B, 1+N, Dv), image_feat (B, E))``;
* text: ``(text_ids (B, L), text_atts (B, L)) -> (text_embeds (B, L, H), text_feat (B, E))``;
* fusion: ``(text_embeds, text_atts, image_embeds, image_atts) -> (fused (B, L, H), itm_logits (B, 2))``.

:func:`load_towers` returns them for one back-end as plain callables with the eager signatures:
``"eager"`` runs the wrappers as they are, ``"compile"`` runs them through ``torch.compile`` (inductor;
compiled at the first call of each input shape), ``"onnx"`` exports them with
:func:`~grainvl.models.export.export_onnx` (which checks onnxruntime against PyTorch to
:data:`~grainvl.models.export.TOLERANCE`) and runs the graphs on onnxruntime's CPU execution provider.

:func:`route_towers` makes a model's ``encode_image`` / ``encode_text`` / ``fuse`` go through such
towers for the length of a ``with`` block. Every X-VLM task's inference (retrieval, VQA, grounding, ...)
calls exactly these three methods, so a task's own ``latency_call`` measures the back-end unchanged; what
sits on top of the towers (ITC projections, the ITM and box heads, VQA's answer decoder) stays eager.
``grainvl bench --latency-backend`` uses it; ``benchmarks/bench_inference.py`` compares the back-ends.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from grainvl.models.export import FusionTower, ImageTower, TextTower, export_onnx, feeds_for
from grainvl.models.xvlm import XVLM

Backend = Literal["eager", "compile", "onnx"]
BACKENDS: tuple[Backend, ...] = get_args(Backend)
AUTO = "auto"
"""``grainvl bench``'s default latency back-end: :func:`auto_backend` picks one per model."""

ImageFn = Callable[[Tensor], tuple[Tensor, Tensor]]
TextFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
FusionFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
_ROUTED = ("encode_image", "encode_text", "fuse")  # the XVLM methods route_towers replaces
ONNX_TOWERS = ("image_encoder", "text_encoder", "fusion")  # export_onnx's graph names, in Towers' order


@dataclass
class Towers:
    """The image, text and fusion forwards of one model under one back-end (signatures as the eager wrappers).

    ``prepare_s``: wall seconds :func:`load_towers` took (the ONNX export, its onnxruntime check and the
    sessions; for ``compile`` only the wrapping: inductor compiles at the first call of each shape).
    """

    backend: Backend
    image: ImageFn
    text: TextFn
    fusion: FusionFn
    prepare_s: float = 0.0


def check_backend(name: str) -> Backend:
    """``name`` as a :data:`Backend`, or a ``ValueError`` naming the choices."""
    if name not in BACKENDS:
        raise ValueError(f"unknown inference backend {name!r}; choose from {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]  # checked against BACKENDS just above


def auto_backend(model: nn.Module | None, precision: str = "fp32") -> Backend:
    """``onnx`` for an X-VLM on the CPU in fp32 without int8 layers, else ``eager``.

    Why onnx: at batch 1 on the CPU, onnxruntime ran the retrieval, VQA and grounding forwards of
    xvlm-small 2.2-2.5x faster than eager, torch.compile 1.1-1.2x, all three within 1e-4 of eager
    (``benchmarks/bench_inference.py``, docs/interop.md). The graphs are fp32 on onnxruntime's CPU
    provider, and dynamically quantised linears do not export, so anything else stays eager.
    """
    if not isinstance(model, XVLM) or precision != "fp32":
        return "eager"
    if next(model.parameters()).device.type != "cpu":
        return "eager"
    quantized = any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())
    return "eager" if quantized else "onnx"


def load_towers(
    model: XVLM, backend: str, compile_mode: str | None = None, onnx_dir: str | Path | None = None
) -> Towers:
    """The three towers of ``model`` (put in eval mode) for ``backend``.

    ``compile_mode``: ``torch.compile``'s ``mode`` (``None``: inductor's default; e.g.
    ``"max-autotune-no-cudagraphs"``). ``onnx_dir``: where the ONNX graphs are kept (``None``: a
    temporary folder, deleted once the sessions have loaded them). The ``onnx`` back-end needs the model
    on the CPU (its graphs run on onnxruntime's CPU execution provider) and raises ``RuntimeError`` when
    an exported graph differs from PyTorch by more than :data:`~grainvl.models.export.TOLERANCE`.
    """
    backend = check_backend(backend)
    model.eval()
    start = time.perf_counter()
    if backend == "onnx":
        image, text, fusion = _onnx_towers(model, onnx_dir)
    else:
        wrappers = _wrappers(model)
        if backend == "compile":
            wrappers = tuple(torch.compile(w, mode=compile_mode) for w in wrappers)  # type: ignore[assignment]
        image, text, fusion = (_no_grad(w) for w in wrappers)
    return Towers(backend, image, text, fusion, prepare_s=time.perf_counter() - start)


def _unrouted_view(model: XVLM) -> XVLM:
    """``model`` with its own methods: a shallow copy sharing every parameter and sub-module.

    :func:`route_towers` replaces methods on ``model`` only, so towers built on the view never call
    themselves back through a routed method (and an export traces the model's own layers).
    """
    view = copy.copy(model)  # shallow: the same _modules / _parameters dicts, its own instance attributes
    for name in _ROUTED:
        vars(view).pop(name, None)  # a copy taken while ``model`` is routed must still be un-routed
    return view


def _wrappers(model: XVLM) -> tuple[nn.Module, nn.Module, nn.Module]:
    """export.py's tower wrappers around the un-routed view of ``model``, in eval mode."""
    view = _unrouted_view(model)
    return ImageTower(view).eval(), TextTower(view).eval(), FusionTower(view).eval()


def _no_grad(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` under ``torch.no_grad`` (inference; an ONNX session has no autograd either)."""

    def call(*inputs: Tensor) -> Any:
        with torch.no_grad():
            return fn(*inputs)

    return call


def _onnx_towers(model: XVLM, onnx_dir: str | Path | None) -> tuple[ImageFn, TextFn, FusionFn]:
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"the onnx backend runs on onnxruntime's CPU execution provider; the model is on {device}")
    with contextlib.ExitStack() as stack:
        folder = Path(onnx_dir) if onnx_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        out = folder if onnx_dir is not None else folder / "onnx"
        graphs = {r.tower: r for r in export_onnx(_unrouted_view(model), out)}
        # The sessions hold the graphs in memory, so a temporary folder can go once they exist.
        image, text, fusion = (_session_fn(graphs[t].path, graphs[t].inputs) for t in ONNX_TOWERS)
    return image, text, fusion


def _session_fn(path: Path, input_names: list[str]) -> Callable[..., tuple[Tensor, ...]]:
    """An onnxruntime CPU session as a function of the tower's inputs, in ``input_names``' order -> tensors."""
    # Imported here: onnxruntime is only needed by the onnx back-end.
    import onnxruntime as ort

    options = ort.SessionOptions()
    # As many threads as PyTorch uses, so the back-ends compare on the same cores (ORT's default is all cores).
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(*inputs: Tensor) -> tuple[Tensor, ...]:
        feeds = feeds_for(session, dict(zip(input_names, inputs, strict=True)))
        return tuple(torch.from_numpy(y) for y in session.run(None, feeds))

    return run


@contextlib.contextmanager
def route_towers(model: XVLM, towers: Towers) -> Iterator[XVLM]:
    """Inside the block, ``model.encode_image`` / ``encode_text`` / ``fuse`` run through ``towers``.

    Same signatures and outputs as the methods (``encode_image`` keeps its all-ones mask); everything
    else of the model stays eager. Instance attributes shadow the class methods and are removed on exit
    (also on an exception). Eager towers change nothing, so the eager path is exactly the model's own.
    A model is routed by one ``with`` block at a time.
    """
    if towers.backend == "eager":
        yield model
        return
    routed = [name for name in _ROUTED if name in vars(model)]
    if routed:
        raise RuntimeError(f"the model is already routed through other towers ({', '.join(routed)})")

    def encode_image(image: Tensor) -> tuple[Tensor, Tensor]:
        embeds = towers.image(image)[0]  # (B, 1+N, Dv)
        return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)

    def encode_text(text_ids: Tensor, text_atts: Tensor) -> Tensor:
        return towers.text(text_ids, text_atts)[0]  # (B, L, H)

    def fuse(text_embeds: Tensor, text_atts: Tensor, image_embeds: Tensor, image_atts: Tensor) -> Tensor:
        return towers.fusion(text_embeds, text_atts, image_embeds, image_atts)[0]  # (B, L, H)

    for name, fn in zip(_ROUTED, (encode_image, encode_text, fuse)):
        object.__setattr__(model, name, fn)  # a plain instance attribute: nn.Module registers nothing
    try:
        yield model
    finally:
        for name in _ROUTED:
            vars(model).pop(name, None)


def max_abs_diff(got: dict[str, Tensor], expected: dict[str, Tensor]) -> dict[str, float]:
    """Per output name: max |got - expected| (both dicts with the same keys and shapes)."""
    if set(got) != set(expected):
        raise ValueError(f"outputs differ: {sorted(got)} vs {sorted(expected)}")
    shapes = {k: (tuple(got[k].shape), tuple(expected[k].shape)) for k in expected}
    wrong = {k: s for k, s in shapes.items() if s[0] != s[1]}
    if wrong:  # broadcasting would hide a wrong shape
        raise ValueError(f"output shapes differ: {wrong}")
    return {k: float((got[k].float() - expected[k].float()).abs().max()) for k in expected}


__all__ = [
    "AUTO",
    "BACKENDS",
    "Backend",
    "Towers",
    "auto_backend",
    "check_backend",
    "load_towers",
    "max_abs_diff",
    "route_towers",
]
