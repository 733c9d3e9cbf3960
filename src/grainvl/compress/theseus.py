"""Progressive module replacing (BERT-of-Theseus, Xu et al., EMNLP 2020, arXiv 2002.02925).

A fine-tuned *predecessor* stack of ``P`` layers is split into ``S`` modules of ``r = P / S``
consecutive layers; each module ``i`` gets one *successor* layer ``scc_i``. In training every forward
pass draws, independently per module and once per batch, ``r_i ~ Bernoulli(p)`` and runs
``scc_i`` when ``r_i = 1`` and the ``r`` predecessor layers otherwise:
``y_{i+1} = r_i · scc_i(y_i) + (1 − r_i) · prd_i(y_i)``. In evaluation only the successors run.
The loss is the task loss alone (no distillation term) and only successor parameters are optimised;
embeddings, heads and the predecessor stay frozen at the fine-tuned values (official optimizer,
confirmed in the authors' issue #9).

What follows the official ``JetRunner/BERT-of-Theseus`` code (compression.md §C):

* successor init: ``scc_layer = deepcopy(layer[0 .. S-1])``, the **first** S predecessor layers
  (``run_glue.py``), not every other one;
* schedulers (``step()`` after each optimizer step): constant ``p`` switched to 1 after
  ``replacing_steps`` steps ("successor fine-tuning"), and the linear curriculum
  ``p(t) = min(1, k·t + b)``; a rate outside (0, 1] is refused, as ``set_replacing_rate`` does.

Our extension: an X²-VLM text stack has two segments, the text-only layers ``[0, fusion_start)`` and
the fusion layers (with cross-attention) ``[fusion_start, N)``; each segment is compressed on its own
(grouping never mixes a text and a fusion layer), and successor fusion layers are copied from the
first fusion layers, so they start with trained cross-attention. :func:`compact_successor` then
builds a plain, smaller :class:`BertEncoderModel` (the official ``convert_to_hf_ckpt.py``).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.models.text import BertEncoder, BertEncoderModel, LayerHeadMasks, LayerStack, LayerStep
from grainvl.models.xvlm import XVLM


@dataclass(frozen=True)
class Segment:
    """Predecessor layers ``[start, stop)`` replaced by ``successors`` layers (``stop − start`` divisible by it)."""

    start: int
    stop: int
    successors: int

    @property
    def ratio(self) -> int:
        return (self.stop - self.start) // self.successors


def make_segments(
    num_layers: int, fusion_start: int, text_successors: int | None, fusion_successors: int | None
) -> list[Segment]:
    """Text segment ``[0, fusion_start)`` and fusion segment ``[fusion_start, num_layers)``; None keeps a
    segment uncompressed (ratio 1: each layer is its own successor, which still trains)."""
    segments = []
    for start, stop, wanted in ((0, fusion_start, text_successors), (fusion_start, num_layers, fusion_successors)):
        size = stop - start
        if size == 0:
            if wanted:
                raise ValueError(f"cannot make {wanted} successor layers: the segment [{start}, {stop}) is empty")
            continue
        count = size if wanted is None else wanted
        if count < 1 or size % count:
            raise ValueError(
                f"{size} predecessor layers [{start}, {stop}) cannot be split into {count} equal modules "
                "(BERT-of-Theseus needs the successor count to divide the predecessor count)"
            )
        segments.append(Segment(start, stop, count))
    return segments


class TheseusEncoder(LayerStack):
    """Drop-in replacement of a :class:`BertEncoder`: frozen predecessor ``layer`` + trainable ``scc_layer``.

    ``forward`` is :class:`LayerStack`'s, as for :class:`BertEncoder`; ``layers`` is a range of *predecessor*
    indices (from :meth:`BertEncoderModel.layer_range`), so the text, fusion and multimodal modes still work.
    """

    checkpointable = False

    def __init__(self, predecessor: BertEncoder, segments: Sequence[Segment]) -> None:
        super().__init__()
        self.layer = predecessor.layer
        self.segments = list(segments)
        # (predecessor layers of module i, its successor index); successor init = first layers of its segment.
        self.modules_map: list[tuple[range, int]] = []
        self.sources: list[int] = []
        for segment in self.segments:
            for i in range(segment.successors):
                first = segment.start + i * segment.ratio
                self.modules_map.append((range(first, first + segment.ratio), len(self.sources)))
                self.sources.append(segment.start + i)
        self.scc_layer = nn.ModuleList(copy.deepcopy(self.layer[s]) for s in self.sources)
        self.grad_checkpointing = False  # BertEncoder's attribute; ignored here (checkpointable = False)
        self.replacing_rate = 1.0

    def set_replacing_rate(self, replacing_rate: float) -> None:
        """The Bernoulli probability of running a successor module in training; must lie in (0, 1]."""
        if not 0.0 < replacing_rate <= 1.0:
            raise ValueError(f"replacing rate must be in (0, 1], got {replacing_rate}")
        self.replacing_rate = float(replacing_rate)

    def _plan(self, layers: range) -> list[nn.Module]:
        """The layer modules to run for predecessor range ``layers``: sampled in training, successors in eval."""
        plan: list[nn.Module] = []
        wanted = set(layers)
        for block, successor in self.modules_map:
            inside = [i in wanted for i in block]
            if not any(inside):
                continue
            if not all(inside):
                raise ValueError(f"layer range {layers} cuts through the Theseus module of layers {list(block)}")
            # Eval: successors only. Training: one draw per module per forward (per batch), as the
            # official ``bernoulli.sample()``.
            if not self.training or torch.rand(()) < self.replacing_rate:
                plan.append(self.scc_layer[successor])
            else:
                plan.extend(self.layer[i] for i in block)
        return plan

    def _steps(
        self, layers: range, head_mask: LayerHeadMasks | None, cross_head_mask: LayerHeadMasks | None
    ) -> list[LayerStep]:
        if head_mask is not None or cross_head_mask is not None:
            raise ValueError("head masks are not supported while modules are being replaced (prune after compacting)")
        return [(layer, None, None) for layer in self._plan(layers)]


# ------------------------------------------------------------------------------------------ schedulers
class ConstantReplacementScheduler:
    """Fixed ``p``; after ``replacing_steps`` optimizer steps, ``p := 1`` (successor fine-tuning). Official."""

    def __init__(self, encoder: TheseusEncoder, replacing_rate: float, replacing_steps: int | None = None) -> None:
        self.encoder = encoder
        self.replacing_rate = replacing_rate
        self.replacing_steps = replacing_steps
        self.step_counter = 0
        encoder.set_replacing_rate(replacing_rate)

    def step(self) -> float:
        """Call after each optimizer step; -> the rate now in force."""
        self.step_counter += 1
        if self.replacing_steps is not None and self.step_counter >= self.replacing_steps:
            self.replacing_rate = 1.0
            self.encoder.set_replacing_rate(1.0)
        return self.replacing_rate


class LinearReplacementScheduler:
    """Curriculum ``p(t) = min(1, k·t + b)`` with ``t`` the number of optimizer steps taken. Official."""

    def __init__(self, encoder: TheseusEncoder, base_replacing_rate: float, k: float) -> None:
        if k < 0:
            raise ValueError(f"the linear scheduler's slope k must be >= 0, got {k}")
        self.encoder = encoder
        self.base_replacing_rate = base_replacing_rate
        self.k = k
        self.step_counter = 0
        encoder.set_replacing_rate(base_replacing_rate)

    def rate(self, step: int) -> float:
        return min(1.0, self.k * step + self.base_replacing_rate)

    def step(self) -> float:
        self.step_counter += 1
        current = self.rate(self.step_counter)
        self.encoder.set_replacing_rate(current)
        return current


Scheduler = ConstantReplacementScheduler | LinearReplacementScheduler


@dataclass
class TheseusConfig:
    """Replacement plan and schedule. Official README examples: constant p = 0.5 switched to 1 after
    2500 steps; linear b = 0.3, k = 0.0006 (MRPC); lr 2e-5, batch 32."""

    text_successors: int | None = None  # successor layers for the text segment (None: keep its depth)
    fusion_successors: int | None = None  # ... for the fusion segment (X²-VLM)
    scheduler: str = "linear"  # "constant" or "linear"
    replacing_rate: float = 0.3  # constant p, or the linear scheduler's b
    replacing_steps: int | None = None  # constant: steps until p := 1 (None: never)
    linear_k: float = 0.0006
    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-5
    weight_decay: float = 0.01
    warmup: float = 0.0  # the official run uses no warm-up
    seed: int = 0

    def __post_init__(self) -> None:
        if self.scheduler not in ("constant", "linear"):
            raise ValueError(f"scheduler must be 'constant' or 'linear', got {self.scheduler!r}")
        if not 0.0 < self.replacing_rate <= 1.0:
            raise ValueError(f"replacing_rate must be in (0, 1], got {self.replacing_rate}")


def make_scheduler(encoder: TheseusEncoder, cfg: TheseusConfig) -> Scheduler:
    if cfg.scheduler == "constant":
        return ConstantReplacementScheduler(encoder, cfg.replacing_rate, cfg.replacing_steps)
    return LinearReplacementScheduler(encoder, cfg.replacing_rate, cfg.linear_k)


# ------------------------------------------------------------------------------------------ install / compact
def install_theseus(
    tower: BertEncoderModel, text_successors: int | None = None, fusion_successors: int | None = None
) -> TheseusEncoder:
    """Swap ``tower.encoder`` for a :class:`TheseusEncoder` (in place) and freeze everything of ``tower``
    except the successor layers. -> the new encoder (give it to a scheduler)."""
    if isinstance(tower.encoder, TheseusEncoder):
        raise ValueError("this tower already has a Theseus encoder")
    config = tower.config
    segments = make_segments(config.num_layers, tower.fusion_start, text_successors, fusion_successors)
    encoder = TheseusEncoder(tower.encoder, segments)
    tower.encoder = encoder
    for name, param in tower.named_parameters():
        param.requires_grad_(name.startswith("encoder.scc_layer."))
    return encoder


def successor_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters the official optimizer trains: those of every ``scc_layer`` inside ``module``."""
    return [p for name, p in module.named_parameters() if ".scc_layer." in f".{name}"]


def with_successors_in_graph(loss: Tensor, successors: list[nn.Parameter]) -> Tensor:
    """``loss``, plus a zero term over the successors when no successor took part in it.

    Why: when every module draws its (frozen) predecessor, nothing in the loss needs a gradient and
    ``backward()`` would raise; the official code steps on zero successor gradients, which this does too.
    """
    if loss.requires_grad or not successors:
        return loss
    return loss + 0.0 * sum(p.sum() for p in successors)


def _pick(values: list[int] | None, indices: list[int]) -> list[int] | None:
    return None if values is None else [values[i] for i in indices]


def successor_config(tower: BertEncoderModel) -> Any:
    """The :class:`TextConfig` of the compacted successor stack (per-layer shapes follow the init sources)."""
    encoder = tower.encoder
    if not isinstance(encoder, TheseusEncoder):
        raise ValueError("the tower has no Theseus encoder (install_theseus first)")
    config = tower.config
    text = sum(s.successors for s in encoder.segments if s.start < tower.fusion_start)
    return dataclasses.replace(
        config,
        num_layers=len(encoder.sources),
        fusion_start=text,
        layer_heads=_pick(config.layer_heads, encoder.sources),
        layer_cross_heads=_pick(config.layer_cross_heads, encoder.sources),
        layer_intermediate=_pick(config.layer_intermediate, encoder.sources),
    )


def successor_state_dict(state: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Drop ``{prefix}encoder.layer.*`` (predecessor) and rename ``{prefix}encoder.scc_layer.i`` to
    ``{prefix}encoder.layer.i``; other keys pass through (``convert_to_hf_ckpt.py``)."""
    old, new = f"{prefix}encoder.layer.", f"{prefix}encoder.scc_layer."
    out = {}
    for key, value in state.items():
        if key.startswith(old):
            continue
        out[f"{prefix}encoder.layer." + key[len(new) :] if key.startswith(new) else key] = value
    return out


def compact_successor(tower: BertEncoderModel) -> BertEncoderModel:
    """A plain :class:`BertEncoderModel` holding only the embeddings and the successor layers."""
    small = BertEncoderModel(successor_config(tower))
    small.load_state_dict(successor_state_dict(tower.state_dict()))
    return small.train(tower.training)


def install_theseus_xvlm(
    model: XVLM, text_successors: int | None = None, fusion_successors: int | None = None
) -> TheseusEncoder:
    """Theseus on an X²-VLM's BERT stack (text and/or fusion layers); freezes every other parameter of
    the model (vision tower, projections, heads), as the official optimizer only holds successors."""
    if model.config.text.layout != "single":
        raise ValueError("Theseus supports the X²-VLM 'single' layout (text + fusion layers in one BERT stack)")
    encoder = install_theseus(model.bert, text_successors, fusion_successors)
    for name, param in model.named_parameters():
        param.requires_grad_(".scc_layer." in name)
    return encoder


def compact_xvlm(model: XVLM) -> XVLM:
    """An :class:`XVLM` whose text stack is the successor stack; loads with ``from_pretrained`` after saving."""

    text = successor_config(model.bert)
    # Weights come from ``model``: never re-load pretrained towers while building (as from_pretrained).
    vision = dataclasses.replace(model.config.vision, pretrained=False)
    config = dataclasses.replace(model.config, text=text, vision=vision, text_init=None)
    small = XVLM(config)
    prefix = "text_encoder.bert."
    state = successor_state_dict(model.state_dict(), prefix)
    missing, unexpected = small.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith(("predictions.decoder.weight", "predictions.decoder.bias"))]
    if missing or unexpected:
        raise ValueError(f"compacting failed: missing {missing[:5]}, unexpected {list(unexpected)[:5]}")
    return small.train(model.training)


__all__ = [
    "ConstantReplacementScheduler",
    "LinearReplacementScheduler",
    "Segment",
    "TheseusConfig",
    "TheseusEncoder",
    "compact_successor",
    "compact_xvlm",
    "install_theseus",
    "install_theseus_xvlm",
    "make_scheduler",
    "make_segments",
    "successor_config",
    "successor_parameters",
    "successor_state_dict",
]
