"""Modal-adaptive structured pruning: one hard-concrete L0 engine for EfficientVLM and CoFiPruning.

Pieces (compression.md §0, §A.4, §D):

* :class:`HardConcreteMask`: learnable ``log α`` of shape ``(rows, units)`` (Louizos et al. 2018,
  β = 2/3, stretch limits γ = -0.1, ζ = 1.1). Training draws fresh samples ``z`` every forward
  (shared over the batch); evaluation uses the deterministic masks of CoFi/EfficientVLM.
* :class:`ModalPruner`: the mask groups of an X²-VLM (attention heads of the vision, text and
  fusion self-/cross-attention blocks, FFN neurons of each tower, optionally whole attention/FFN
  sub-layers as in CoFi), each unit priced by the **exact** number of parameters removing it
  removes; the expected size from the keep probabilities; the Lagrangian
  ``λ1(ŝ − t) + λ2(ŝ − t)²`` with gradient *ascent* on λ; the sparsity warm-up on a global step
  counter that never restarts (the official per-epoch restart is a bug, §A.4 quirk 1).
* Masks reach the model through forward hooks on the output projections and FFN activations, so
  the model code is untouched and a hooked model computes exactly what :mod:`.shrink` later builds.

Modalities: ``vision`` (ViT blocks), ``text`` (text-only BERT layers), ``fusion`` (BERT layers with
cross-attention: their self-attention, cross-attention and FFN), ``decoder`` (the VQA answer decoder, when
one is given: self-attention heads, cross-attention heads over the question states, FFN neurons; the
official ``VQAL0Module``'s ``decoder_head_loga`` / ``decoder_int_loga``). EfficientVLM constrains the union
with one target, so the optimiser decides how much each modality loses; ``per_modality`` targets
(its unused ``modal_l0_module.py``) are an option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.models.decoder import TextDecoder
from grainvl.models.text import TextConfig
from grainvl.models.xvlm import XVLM

LIMIT_A = -0.1  # γ: left end of the stretched interval
LIMIT_B = 1.1  # ζ: right end
TEMPERATURE = 2.0 / 3.0  # β
EPS = 1e-6
LOG_ALPHA_MIN, LOG_ALPHA_MAX = math.log(1e-2), math.log(1e2)  # CoFi's clamp after every step
MAGICAL_NUMBER = 0.8  # CoFi/EfficientVLM ranking score σ(log α / β · 0.8) for deterministic masks
# "decoder" (the VQA answer decoder) has mask sites only when a decoder is given (``ModalPruner(..., decoder=)``).
MODALITIES = ("vision", "text", "fusion", "decoder")
# Short runs (see :func:`short_run_reg_lr`): the log α distance Adam must be able to cover over the prune steps.
# A head starts at the clamp ln 100 ≈ 4.6 (q ≈ 0.998) and an FFN neuron at 0 (q ≈ 0.83); a unit is half kept at
# log α ≈ −1.6. 4 lets any FFN neuron go well past that point (q ≈ 0.08) and the game decide the rest; on
# xvlm-tiny with the Lagrangian alone, 16-100 steps then end at 0.42-0.57 expected sparsity for a 0.5 target,
# while 5 and 6 overshoot further (up to 0.73 and 0.86 at 100 steps): λ moves by about reg_lr per step too.
LOG_ALPHA_TRAVEL = 4.0
# With the penalty alone (``PruneConfig.linear_term=False``) nothing winds up, so log α may travel further and
# the game still settles on the target: stage 2 on xvlm-tiny (retrieval KD + penalty, 0.5 target) ended at
# expected 0.52 / 0.50 / 0.50 after 30 / 60 / 120 steps with travel 8 (0.49 with 12), where the paper's game
# ended at 0.43 (travel 4) or overshot to 0.81 (travel 8) after 60.
SHORT_RUN_PENALTY_TRAVEL = 8.0
# Below this many prune steps ``lagrangian: auto`` uses the penalty even where the paper's reg lr is already large
# enough to travel (NLVR2's 0.1): the paper's game then winds up λ1 and overshoots (stage 2 on NLVR2 from the task
# teacher, xvlm-small, 100 steps at 0.1: 0.448 for a 0.3 target). The game settles in paper-length runs (the
# Lagrangian alone on xvlm-tiny at 0.01: 0.50 of 0.5 after 1,000 steps).
PAPER_GAME_MIN_STEPS = 1000

# The paper's per-task stage-2 settings (EfficientVLM configs/x-vlm-small-ft/*.yaml, compression.md §A.4):
# target sparsity, lr of the model, lr of log α and λ (``reg_learning_rate``), epochs. The Lagrangian
# warm-up is one epoch everywhere.
PAPER_TASK_DEFAULTS: dict[str, dict[str, float]] = {
    "retrieval": {"target_sparsity": 0.25, "lr": 3e-5, "reg_lr": 0.01, "epochs": 10},
    "vqa": {"target_sparsity": 0.35, "lr": 5e-5, "reg_lr": 0.01, "epochs": 20},
    "nlvr": {"target_sparsity": 0.25, "lr": 3e-5, "reg_lr": 0.1, "epochs": 10},
    "captioning": {"target_sparsity": 0.25, "lr": 1e-5, "reg_lr": 0.01, "epochs": 10},
}


# ----------------------------------------------------------------------------------------- hard concrete
def keep_probability(log_alpha: Tensor, beta: float = TEMPERATURE) -> Tensor:
    """``P(z > 0) = σ(log α − β·ln(−γ/ζ))``: the L0 "norm" contribution of each unit (same shape)."""
    return torch.sigmoid(log_alpha - beta * math.log(-LIMIT_A / LIMIT_B))


def sample_hard_concrete(log_alpha: Tensor, beta: float = TEMPERATURE) -> Tensor:
    """One reparameterised sample ``z ∈ [0, 1]`` per unit: stretched, clamped binary concrete."""
    u = torch.empty_like(log_alpha).uniform_(EPS, 1.0 - EPS)
    s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + log_alpha) / beta)
    return (s * (LIMIT_B - LIMIT_A) + LIMIT_A).clamp(0.0, 1.0)


def deterministic_mask(log_alpha: Tensor, beta: float = TEMPERATURE, soft: bool = False) -> Tensor:
    """Evaluation masks, row by row (CoFi ``_deterministic_z``).

    Each row of ``(rows, units)`` zeroes its ``round(units − Σ q)`` lowest-scoring units (score
    ``σ(log α / β · 0.8)``). EfficientVLM sets the others to exactly 1 (``soft=False``, default);
    CoFi keeps the soft score (``soft=True``), which :mod:`.shrink` folds into the weights.
    """
    rows = log_alpha.detach().reshape(-1, log_alpha.shape[-1]) if log_alpha.dim() else log_alpha.detach()[None, None]
    out = torch.empty_like(rows)
    for r, row in enumerate(rows):
        n_zero = round(row.numel() - float(keep_probability(row, beta).sum()))
        score = torch.sigmoid(row / beta * MAGICAL_NUMBER)
        mask = score.clone() if soft else torch.ones_like(row)
        if n_zero > 0:
            mask[torch.topk(score, k=min(n_zero, row.numel()), largest=False).indices] = 0.0
        out[r] = mask
    return out.reshape(log_alpha.shape)


class HardConcreteMask(nn.Module):
    """``log_alpha`` ``(rows, units)``; ``forward()`` -> a sample (training) or the deterministic mask (eval)."""

    def __init__(self, rows: int, units: int, init_mean: float, init_std: float = 0.01) -> None:
        super().__init__()
        self.log_alpha = nn.Parameter(torch.empty(rows, units).normal_(init_mean, init_std))
        self.soft_eval = False

    def keep_probability(self) -> Tensor:
        return keep_probability(self.log_alpha)

    def forward(self) -> Tensor:
        if self.training:
            return sample_hard_concrete(self.log_alpha)
        return deterministic_mask(self.log_alpha, soft=self.soft_eval)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clamp ``log α`` into ``[ln 0.01, ln 100]`` (CoFi/EfficientVLM, after each optimizer step)."""
        self.log_alpha.clamp_(LOG_ALPHA_MIN, LOG_ALPHA_MAX)


def short_run_reg_lr(reg_lr: float, steps: int, travel: float | None = LOG_ALPHA_TRAVEL) -> float:
    """The lr of log α and λ for a prune stage of ``steps`` steps: ``max(reg_lr, travel / steps)``.

    Why: Adam moves each ``log α`` by at most about its lr per step, whatever the size of the
    Lagrangian, so with the paper's 0.01 a head (clamped init 4.6) needs over 600 steps to reach
    q = 0.5 and an FFN neuron (init 0) over 160: 40 steps reach about 10 % of a 50 % target. The paper
    prunes for thousands of steps (10 epochs), where ``travel / steps`` is below 0.01 and its value is
    kept; a short run gets the lr that lets log α cover ``travel`` in the steps it has. Deviation from
    EfficientVLM/CoFi (fixed reg_learning_rate); ``travel=None`` turns it off.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return reg_lr if travel is None else max(reg_lr, travel / steps)


# ----------------------------------------------------------------------------------------- configuration
@dataclass
class PruneConfig:
    """What to prune and the constraint. Defaults: EfficientVLM (heads + FFN neurons, one shared target)."""

    target_sparsity: float = 0.25  # of the prunable parameters (paper: retrieval/NLVR/captioning 0.25, VQA 0.35)
    # e.g. {"vision": 0.4, "text": 0.2, "fusion": 0.3}: one λ pair each ("decoder": when ModalPruner is given one)
    per_modality: dict[str, float] | None = None
    warmup_steps: int = 100  # t = target · min(1, step / warmup_steps) (paper: one epoch)
    reg_lr: float = 0.01  # lr of log α and of λ (``reg_learning_rate``)
    droprate_init: float = 0.5  # FFN log α ~ N(ln((1-p)/p), 0.01); heads and layers start at N(10, 0.01)
    layers: bool = False  # CoFi's whole-sub-layer masks (head_layer_z, mlp_z) too
    modalities: tuple[str, ...] = MODALITIES  # towers to prune
    soft_eval: bool = False  # CoFi's soft kept scores at eval (False: EfficientVLM's binary masks)
    calibrate_tolerance: float | None = 0.01  # final masks within this of the target (None: never calibrate)
    # Our extension (not in EfficientVLM): MBConv expansion channels of an EfficientNet vision tower too.
    cnn_channels: bool = False
    # False: λ1 stays 0 and L = λ2·(ŝ − t)², a penalty that grows until it holds ŝ at t (see
    # SHORT_RUN_PENALTY_TRAVEL: what short runs use, since λ1 winds up there); True: the paper's λ1·gap + λ2·gap².
    linear_term: bool = True
    # lr of λ = reg_lr · lambda_lr_scale (CoFi/EfficientVLM: 1, one reg_learning_rate for both). Larger: a stiffer
    # penalty that reaches the target in short runs, at a cost in retention (CompressConfig.lambda_lr_scale).
    lambda_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_sparsity < 1.0:
            raise ValueError(f"target_sparsity must be in [0, 1), got {self.target_sparsity}")
        unknown = sorted(set(self.modalities) - set(MODALITIES)) + sorted(
            set(self.per_modality or {}) - set(MODALITIES)
        )
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; expected a subset of {MODALITIES}")
        for name, value in (self.per_modality or {}).items():
            if not 0.0 <= value < 1.0:
                raise ValueError(f"per_modality target for {name} must be in [0, 1), got {value}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.lambda_lr_scale <= 0:
            raise ValueError(f"lambda_lr_scale must be > 0, got {self.lambda_lr_scale}")


@dataclass
class MaskSite:
    """One mask group: where it acts and what each of its units costs.

    ``kind``: ``head`` (per attention head), ``ffn`` (per FFN neuron), ``channel`` (per MBConv
    expansion channel of an EfficientNet block), ``attn_layer`` / ``ffn_layer`` (one scalar per whole
    sub-layer, CoFi). ``modules[r]`` is the module of row ``r`` the hook sits on;
    ``unit_cost[r]`` the parameters one unit of row ``r`` owns; ``layer_of`` (layer masks only) names
    the head/ffn group the layer mask scales.
    """

    name: str
    modality: str
    kind: str
    modules: list[nn.Module]
    units: int
    unit_cost: list[float]
    head_dim: int = 0
    parent: str | None = None  # for a layer mask: the unit group it gates (its cost is that group's)


# ----------------------------------------------------------------------------------------- sites of an XVLM
def _layer_site(name: str, modality: str, kind: str, modules: list[nn.Module], parent: str) -> MaskSite:
    """A CoFi layer mask: one scalar per row gating the ``parent`` group; it owns no parameters of its own."""
    return MaskSite(name, modality, kind, modules, 1, [0.0] * len(modules), parent=parent)


def _vision_sites(model: XVLM, layers: bool) -> list[MaskSite]:
    tower = model.vision_encoder
    blocks = getattr(tower, "blocks", None)
    if blocks is None:
        raise ValueError(f"vision tower {type(tower).__name__} has no transformer blocks to prune")
    d = tower.width
    attn0 = blocks[0].attn
    heads, hd = attn0.num_heads, attn0.head_dim
    if any(b.attn.num_heads != heads or b.mlp.fc1.out_features != blocks[0].mlp.fc1.out_features for b in blocks):
        raise ValueError("the vision tower is already shrunk (uneven blocks); prune the unshrunk model")
    # One head: q/k/v rows (3·hd·d), their biases, its proj columns (d·hd), its relative position column.
    qkv_bias = 3 * hd if attn0.qkv.bias is not None else 2 * hd if hasattr(attn0, "q_bias") else 0
    rel = attn0.relative_position_bias_table.shape[0] if hasattr(attn0, "relative_position_bias_table") else 0
    head_cost = 4 * d * hd + qkv_bias + rel
    width = blocks[0].mlp.fc1.out_features
    ffn_cost = 2 * d + 1  # fc1 row + its bias + fc2 column
    sites = [
        MaskSite("vision_head", "vision", "head", [b.attn.proj for b in blocks], heads, [head_cost] * len(blocks), hd),
        MaskSite("vision_ffn", "vision", "ffn", [b.mlp.act for b in blocks], width, [ffn_cost] * len(blocks)),
    ]
    if layers:
        proj, fc2 = [b.attn.proj for b in blocks], [b.mlp.fc2 for b in blocks]
        sites.append(_layer_site("vision_attn_layer", "vision", "attn_layer", proj, "vision_head"))
        sites.append(_layer_site("vision_ffn_layer", "vision", "ffn_layer", fc2, "vision_ffn"))
    return sites


def _cnn_channel_sites(model: XVLM) -> list[MaskSite]:
    """MBConv expansion channels of an EfficientNet tower: one site per expanded width (our extension).

    The inverted-bottleneck hidden channels are the conv analogue of FFN neurons: removing channel c of
    a block removes its expand-conv row, its depthwise filter, its project-conv column and its two
    BatchNorm affine pairs. A :class:`MaskSite` has one ``units`` for all its rows, so blocks are grouped
    by expanded width (``vision_channel_<width>``); block 0 has no expand conv (ratio 1) and is skipped.
    """
    backbone = getattr(model.vision_encoder, "backbone", None)
    if backbone is None or not hasattr(backbone, "_blocks"):
        raise ValueError(f"vision tower {type(model.vision_encoder).__name__} has no MBConv blocks to prune")
    groups: dict[int, list[nn.Module]] = {}
    for block in backbone._blocks:
        if block._block_args.expand_ratio == 1:
            continue
        width = block._project_conv.in_channels
        if width != block._block_args.input_filters * block._block_args.expand_ratio:
            raise ValueError("the vision tower is already shrunk (narrowed MBConv blocks); prune the unshrunk model")
        groups.setdefault(width, []).append(block)
    sites = []
    for width, blocks in groups.items():
        # Per channel: expand-conv row (in_channels), depthwise k·k filter, project-conv column, bn0 + bn1 affine.
        costs = [
            float(b._expand_conv.in_channels + b._depthwise_conv.weight[0].numel() + b._project_conv.out_channels + 4)
            for b in blocks
        ]
        modules = [b._project_conv for b in blocks]
        sites.append(MaskSite(f"vision_channel_{width}", "vision", "channel", modules, width, costs))
    return sites


def _text_sites(model: XVLM, modality: str, layers: bool) -> list[MaskSite]:
    if model.config.text.layout != "single":
        raise ValueError("pruning supports the X²-VLM 'single' text layout (text + fusion layers in one BERT)")
    bert = model.bert
    cfg = bert.config
    indices = list(bert.layer_range("text")) if modality == "text" else list(range(bert.fusion_start, cfg.num_layers))
    stack = [bert.encoder.layer[i] for i in indices]
    return _bert_sites(stack, cfg, modality, layers, cross=modality == "fusion")


def _decoder_sites(decoder: TextDecoder, layers: bool) -> list[MaskSite]:
    """The VQA answer decoder (EfficientVLM ``VQAL0Module``): every layer is self-attention -> cross-attention
    to the question states (keys/values read width H) -> FFN; embeddings and the tied LM head are not pruned."""
    bert = decoder.bert
    if bert.fusion_start != 0:
        raise ValueError(f"a TextDecoder has cross-attention in every layer (fusion_start 0), got {bert.fusion_start}")
    return _bert_sites(list(bert.encoder.layer), bert.config, "decoder", layers, cross=True)


def _bert_sites(stack: list[nn.Module], cfg: TextConfig, modality: str, layers: bool, cross: bool) -> list[MaskSite]:
    """Mask groups ``{modality}_head``, [``{modality}_cross_head``], ``{modality}_ffn`` over the BERT layers
    ``stack`` (rows in stack order), plus the whole-sub-layer groups with ``layers``."""
    if not stack:
        return []
    if cfg.layer_heads is not None or cfg.layer_intermediate is not None or cfg.layer_cross_heads is not None:
        raise ValueError(f"the {modality} stack is already shrunk (per-layer shapes); prune the unshrunk model")
    d, hd, heads, width = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.intermediate_size
    self_cost = hd * (4 * d + 3)  # q/k/v rows with biases + output-dense columns
    cross_cost = hd * (2 * d + 2 * cfg.encoder_width + 3)  # keys/values read the encoder width (vision or H)
    ffn_cost = 2 * d + 1
    rows = len(stack)
    self_out = [lay.attention.output.dense for lay in stack]
    sites = [
        MaskSite(f"{modality}_head", modality, "head", self_out, heads, [self_cost] * rows, hd),
        MaskSite(f"{modality}_ffn", modality, "ffn", [lay.intermediate for lay in stack], width, [ffn_cost] * rows),
    ]
    cross_out = [lay.crossattention.output.dense for lay in stack] if cross else []
    if cross:
        sites.insert(1, MaskSite(f"{modality}_cross_head", modality, "head", cross_out, heads, [cross_cost] * rows, hd))
    if layers:
        sites.append(_layer_site(f"{modality}_attn_layer", modality, "attn_layer", self_out, f"{modality}_head"))
        if cross:
            name, parent = f"{modality}_cross_layer", f"{modality}_cross_head"
            sites.append(_layer_site(name, modality, "attn_layer", cross_out, parent))
        out = [lay.output.dense for lay in stack]
        sites.append(_layer_site(f"{modality}_ffn_layer", modality, "ffn_layer", out, f"{modality}_ffn"))
    return sites


def mask_sites(
    model: XVLM,
    modalities: tuple[str, ...] = MODALITIES,
    layers: bool = False,
    cnn_channels: bool = False,
    decoder: TextDecoder | None = None,
) -> list[MaskSite]:
    """The mask groups of ``model`` for ``modalities``, in a fixed order (vision, text, fusion, decoder).

    ``cnn_channels``: also the MBConv expansion channels of an EfficientNet vision tower (opt-in).
    ``decoder``: the VQA answer decoder (``VQAModule.text_decoder``), pruned as modality ``decoder`` when
    that is in ``modalities``; without one, ``decoder`` contributes nothing.
    """
    sites: list[MaskSite] = []
    # A CNN vision tower (EfficientNet-Lite0) has no heads or FFN to mask: by default only the text side
    # is pruned; with ``cnn_channels`` its MBConv expansion channels are masked too.
    if "vision" in modalities and hasattr(model.vision_encoder, "blocks"):
        sites += _vision_sites(model, layers)
    elif "vision" in modalities and cnn_channels and hasattr(model.vision_encoder, "backbone"):
        sites += _cnn_channel_sites(model)
    for modality in ("text", "fusion"):
        if modality in modalities:
            sites += _text_sites(model, modality, layers)
    if "decoder" in modalities and decoder is not None:
        sites += _decoder_sites(decoder, layers)
    return sites


# ----------------------------------------------------------------------------------------- hooks
def _head_pre_hook(pruner: Any, name: str, row: int, head_dim: int) -> Callable[..., Any]:
    """Scale each head's slice of the projection input ``(B, N, H·hd)`` by its mask."""

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        z = pruner.current.get(name)
        if z is None:
            return None
        x = args[0]  # (B, N, H·hd)
        heads = x.shape[-1] // head_dim
        scaled = (x.unflatten(-1, (heads, head_dim)) * z[row].to(x.dtype)[:, None]).flatten(-2)
        return (scaled, *args[1:])

    return hook


def _channel_pre_hook(pruner: Any, name: str, row: int) -> Callable[..., Any]:
    """Scale each expansion channel of the project-conv input ``(B, C, H, W)`` by its mask."""

    def hook(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        z = pruner.current.get(name)
        if z is None:
            return None
        x = args[0]  # (B, C, H, W)
        return (x * z[row].to(x.dtype)[None, :, None, None], *args[1:])

    return hook


def _output_hook(pruner: Any, name: str, row: int) -> Callable[..., Any]:
    """Scale a module's output: FFN activations ``(B, N, F)`` per neuron, or a whole sub-layer by a scalar."""

    def hook(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor | None:
        z = pruner.current.get(name)
        if z is None:
            return None
        return output * z[row].to(output.dtype)

    return hook


def _register_hooks(sites: list[MaskSite], holder: Any) -> list[Any]:
    """Hooks reading ``holder.current[group]`` (a ``(rows, units)`` tensor; a missing group = no masking)."""
    handles = []
    for site in sites:
        for row, module in enumerate(site.modules):
            if site.kind == "head":
                handles.append(module.register_forward_pre_hook(_head_pre_hook(holder, site.name, row, site.head_dim)))
            elif site.kind == "channel":
                handles.append(module.register_forward_pre_hook(_channel_pre_hook(holder, site.name, row)))
            else:
                handles.append(module.register_forward_hook(_output_hook(holder, site.name, row)))
    return handles


@contextmanager
def masks_applied(model: XVLM, masks: dict[str, Tensor], decoder: TextDecoder | None = None) -> Iterator[None]:
    """Run ``model`` (and ``decoder``, if given) under fixed ``masks`` (``{group: (rows, units)}``, e.g.
    ``final_masks()``) inside the block. ``decoder_*`` groups act only on a given ``decoder``."""
    modalities = tuple(m for m in MODALITIES if any(name.startswith(m + "_") for name in masks))
    cnn = any(name.startswith("vision_channel_") for name in masks)
    all_sites = mask_sites(model, modalities, layers=True, cnn_channels=cnn, decoder=decoder)
    sites = [s for s in all_sites if s.name in masks]
    holder = SimpleNamespace(current=dict(masks))
    handles = _register_hooks(sites, holder)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# ----------------------------------------------------------------------------------------- the pruner
class ModalPruner(nn.Module):
    """Hard-concrete masks over an :class:`XVLM`, the expected size and the Lagrangian (module docstring).

    Usage: ``pruner = ModalPruner(model, cfg)`` attaches the hooks; each training forward first calls
    :meth:`refresh` (new samples in training mode, deterministic masks in eval mode), then adds
    :meth:`lagrangian` to the loss; ``on_step(step)`` after each optimizer step advances the
    persistent global step counter.
    """

    def __init__(self, model: XVLM, cfg: PruneConfig | None = None, decoder: TextDecoder | None = None) -> None:
        """``decoder``: the VQA answer decoder (``VQAModule.text_decoder``) to prune with ``model``; its groups
        join the shared constraint and may have their own ``per_modality["decoder"]`` target."""
        super().__init__()
        self.cfg = cfg or PruneConfig()
        self.sites = mask_sites(model, self.cfg.modalities, self.cfg.layers, self.cfg.cnn_channels, decoder)
        if not self.sites:
            raise ValueError(f"nothing to prune in {self.cfg.modalities}")
        if "decoder" in (self.cfg.per_modality or {}) and not any(s.modality == "decoder" for s in self.sites):
            raise ValueError(
                "a per_modality target for 'decoder' needs the decoder: ModalPruner(model, cfg, decoder=...)"
            )
        ffn_init = math.log((1.0 - self.cfg.droprate_init) / self.cfg.droprate_init)
        self.masks = nn.ModuleDict()
        for site in self.sites:
            # CoFi/EfficientVLM: structures start kept; FFN neurons (and their conv analogue) at droprate_init.
            mean = ffn_init if site.kind in ("ffn", "channel") else 10.0
            self.masks[site.name] = HardConcreteMask(len(site.modules), site.units, mean)
            self.masks[site.name].soft_eval = self.cfg.soft_eval
        constraints = sorted(self.cfg.per_modality) if self.cfg.per_modality else ["all"]
        self.constraints = constraints
        # λ1, λ2 per constraint, initialised at 0 (CoFi); trained by ascent, see :meth:`lagrangian`.
        self.lambdas = nn.Parameter(torch.zeros(len(constraints), 2))
        self.register_buffer("global_step", torch.zeros((), dtype=torch.long))
        self.current: dict[str, Tensor] = {}
        self._handles: list[Any] = []
        # A frozen EfficientNet backbone runs under no_grad; its channel masks need the graph (see attach).
        has_channels = any(site.kind == "channel" for site in self.sites)
        # A plain list: an nn.Module attribute would register the tower as a submodule of the pruner.
        self._cnn_towers: list[nn.Module] = [model.vision_encoder] if has_channels else []
        self.attach()

    # -------------------------------------------------------------- hooks
    def attach(self) -> None:
        """Register the mask hooks on the model (idempotent)."""
        self.detach()
        self._handles = _register_hooks(self.sites, self)
        for tower in self._cnn_towers:
            # Why: with freeze_backbone the tower skips autograd, so log α of the channel masks would get
            # no gradient from the task loss (only from the Lagrangian); the weights themselves stay frozen.
            tower.mask_gradients = True

    def detach(self) -> None:
        """Remove every hook: the model runs unmasked again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for tower in getattr(self, "_cnn_towers", []):
            tower.mask_gradients = False

    def refresh(self) -> dict[str, Tensor]:
        """Clamp log α, then draw this step's masks (training) or fix the deterministic ones (eval)."""
        for mask in self.masks.values():
            mask.constrain_()
        self.current = {name: mask() for name, mask in self.masks.items()}
        return self.current

    def final_masks(self) -> dict[str, Tensor]:
        """The deterministic masks ``{group: (rows, units)}`` that :mod:`.shrink` turns into a smaller model."""
        for mask in self.masks.values():
            mask.constrain_()
        return {name: deterministic_mask(mask.log_alpha, soft=self.cfg.soft_eval) for name, mask in self.masks.items()}

    # -------------------------------------------------------------- size
    def _unit_terms(self, values: dict[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
        """(modality, kept parameters) per group: unit values × unit costs, times the layer mask if any."""
        layer_of = {site.parent: site.name for site in self.sites if site.parent}
        for site in self.sites:
            if site.parent is not None:
                continue
            v = values[site.name]  # (rows, units)
            if site.name in layer_of:
                v = v * values[layer_of[site.name]]  # (rows, 1): CoFi's q_layer · q_unit
            cost = torch.tensor(site.unit_cost, dtype=v.dtype, device=v.device)  # (rows,)
            yield site.modality, (v.sum(dim=-1) * cost).sum()

    def prunable_size(self, modality: str | None = None) -> float:
        """Parameters the masks can remove (all of them kept), optionally for one modality."""
        return float(
            sum(
                c * s.units
                for s in self.sites
                if s.parent is None
                for c in s.unit_cost
                if modality in (None, s.modality)
            )
        )

    def expected_size(self, modality: str | None = None) -> Tensor:
        """E[kept parameters] from the keep probabilities ``q`` (differentiable in log α)."""
        q = {name: mask.keep_probability() for name, mask in self.masks.items()}
        terms = [t for m, t in self._unit_terms(q) if modality in (None, m)]
        return torch.stack(terms).sum()

    def expected_sparsity(self, modality: str | None = None) -> Tensor:
        """ŝ = 1 − E[size] / prunable size (computed from log α only, never from samples, CoFi #31)."""
        return 1.0 - self.expected_size(modality) / self.prunable_size(modality)

    @torch.no_grad()
    def achieved_sparsity(self) -> dict[str, float]:
        """Sparsity of the deterministic masks, overall and per modality (what shrinking will remove)."""
        final = {name: (m != 0).to(m.dtype) for name, m in self.final_masks().items()}
        kept: dict[str, float] = {}
        for modality, term in self._unit_terms(final):
            kept[modality] = kept.get(modality, 0.0) + float(term)
        out = {m: 1.0 - kept[m] / self.prunable_size(m) for m in kept}
        out["all"] = 1.0 - sum(kept.values()) / self.prunable_size()
        return out

    @torch.no_grad()
    def calibrate_(self) -> dict[str, dict[str, float]]:
        """Shift the unit groups' log α of each constraint by one scalar δ so the final masks hit its target.

        A deviation from EfficientVLM/CoFi, which keep whatever sparsity the Lagrangian reached: with
        Adam on λ, λ1 and λ2 grow at the same rate while ŝ is below target, which puts the minimum of
        ``λ1·gap + λ2·gap²`` near gap = +0.5, so a run of tens or hundreds of steps ends at an arbitrary
        phase of an oscillation around the target. ``log α + δ`` keeps the learned ranking (within a
        row and across groups) and moves only the undecided units; a converged run (within
        ``cfg.calibrate_tolerance`` of the target) is left unchanged. δ is found by bisection on the
        achieved (deterministic-mask) sparsity, which is monotone in δ. Returns, per constraint, δ
        and the achieved sparsity before and after.
        """
        out: dict[str, dict[str, float]] = {}
        tolerance = self.cfg.calibrate_tolerance
        for constraint in self.constraints:
            target = self._final_target(constraint)
            before = self.achieved_sparsity().get(constraint)
            if before is None:  # a per-modality target on a tower without mask groups (a CNN)
                continue
            out[constraint] = {"delta": 0.0, "before": before, "after": before}
            if tolerance is None or abs(before - target) <= tolerance:
                continue
            # Unit groups only: whole-layer masks (CoFi) stay as the game left them.
            groups = [self.masks[s.name] for s in self.sites if s.parent is None and constraint in ("all", s.modality)]
            original = [g.log_alpha.detach().clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX).clone() for g in groups]

            # Sparsity falls as δ rises; δ = ±4·ln 100 pushes every unit to one end of the clamp.
            lo, hi = -4 * LOG_ALPHA_MAX, 4 * LOG_ALPHA_MAX
            best = (abs(before - target), 0.0, before)
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                value = self._shifted_sparsity(groups, original, constraint, mid)
                best = min(best, (abs(value - target), mid, value))
                if value > target:
                    lo = mid
                else:
                    hi = mid
            self._shifted_sparsity(groups, original, constraint, best[1])
            out[constraint] = {"delta": best[1], "before": before, "after": best[2]}
        return out

    @torch.no_grad()
    def _shifted_sparsity(
        self, groups: list[HardConcreteMask], original: list[Tensor], constraint: str, delta: float
    ) -> float:
        """Set ``log α = clamp(original + δ)`` on ``groups``; -> the achieved sparsity of ``constraint``."""
        for group, alpha in zip(groups, original):
            group.log_alpha.copy_((alpha + delta).clamp(LOG_ALPHA_MIN, LOG_ALPHA_MAX))
        return self.achieved_sparsity()[constraint]

    # -------------------------------------------------------------- constraint
    def _final_target(self, constraint: str = "all") -> float:
        return self.cfg.target_sparsity if constraint == "all" else self.cfg.per_modality[constraint]  # type: ignore[index]

    def target(self, constraint: str = "all") -> float:
        """t(step) = target · min(1, step / warmup): the ramp runs once over the whole run, never per epoch."""
        final = self._final_target(constraint)
        warmup = self.cfg.warmup_steps
        ramp = 1.0 if warmup == 0 else min(1.0, int(self.global_step) / warmup)
        return final * ramp

    def lagrangian(self) -> tuple[Tensor, dict[str, float]]:
        """``Σ_c λ1(ŝ_c − t_c) + λ2(ŝ_c − t_c)²`` and its metrics.

        The value is the Lagrangian term; its gradient is the usual one for log α but *negated* for
        λ, so one ordinary (descending) optimizer step moves λ up the Lagrangian: the min over
        (θ, log α), max over λ game of CoFi (whose λ optimizer has lr = −reg_lr).
        """
        total = self.lambdas.new_zeros(())
        metrics: dict[str, float] = {}
        for i, constraint in enumerate(self.constraints):
            modality = None if constraint == "all" else constraint
            s_hat = self.expected_sparsity(modality)
            t = self.target(constraint)
            gap = s_hat - t
            lam = self.lambdas[i]  # (2,)
            # The penalty mode (linear_term=False) drops λ1 from the value and from the ascent: λ1 stays 0.
            use = lam.new_tensor([1.0 if self.cfg.linear_term else 0.0, 1.0])
            frozen = lam.detach() * use
            delta = (lam - lam.detach()) * use  # == 0, carries the ascent gradient −(gap, gap²)
            value = frozen[0] * gap + frozen[1] * gap**2  # gradient to log α with the current λ
            ascent = delta[0] * gap.detach() + delta[1] * gap.detach() ** 2
            total = total + value - ascent
            metrics[f"prune/{constraint}_expected_sparsity"] = float(s_hat.detach())
            metrics[f"prune/{constraint}_target"] = t
            metrics[f"prune/{constraint}_lambda1"] = float(frozen[0])
            metrics[f"prune/{constraint}_lambda2"] = float(frozen[1])
        return total, metrics

    def on_step(self, step: int) -> None:
        """Record the loop's global step (continues across epochs and resumes; it is a saved buffer)."""
        self.global_step.fill_(step)

    def param_groups(self, reg_lr: float | None = None) -> list[dict[str, Any]]:
        """AdamW groups for log α (lr = reg_lr) and λ (reg_lr · ``lambda_lr_scale``), no weight decay
        (EfficientVLM ``create_L0_optimizer``)."""
        lr = self.cfg.reg_lr if reg_lr is None else reg_lr
        log_alphas = [(f"pruner.masks.{n}.log_alpha", m.log_alpha) for n, m in self.masks.items()]
        return [
            {
                "name": "l0/log_alpha",
                "params": log_alphas,
                "lr": lr,
                "weight_decay": 0.0,
                "lr_scale": 1.0,
                "constant_lr": True,
            },
            {
                "name": "l0/lambda",
                "params": [("pruner.lambdas", self.lambdas)],
                "lr": lr * self.cfg.lambda_lr_scale,
                "weight_decay": 0.0,
                "lr_scale": 1.0,
                "constant_lr": True,
            },
        ]

    def describe(self) -> dict[str, Any]:
        """Remaining units per group under the deterministic masks, for reports."""
        final = self.final_masks()
        return {name: [int((row != 0).sum()) for row in m] for name, m in final.items()}
