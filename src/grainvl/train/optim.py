"""AdamW with the X-VLM / X²-VLM parameter grouping, and the warm-up + decay learning-rate schedules.

Official behaviour reproduced here (X²-VLM ``optim/create_optimizer.py`` and ``scheduler.py``):

* **No weight decay** for every parameter whose name *contains* one of ``bias``, ``LayerNorm.bias``,
  ``LayerNorm.weight``, ``norm.bias``, ``norm.weight``, ``norm1.*``, ``norm2.*`` (a substring test, so
  ``relative_position_bias_table`` and ``fc_norm.weight`` are excluded too). We add the names the model
  lists in ``no_weight_decay()`` (the official grouping ignores that method; BEiT-style models list
  their position tables there). Other 1-D tensors (the ITC ``temp``, BEiT's layer-scale ``gamma_1``)
  keep weight decay, as in the official code; ``exclude_1d=True`` excludes them timm-style.
* **Per-tower learning rates** (``vision_lr``/``text_lr``/``cross_lr``) win over the multiplier: a
  parameter under an ``lr_overrides`` prefix gets that lr even when it is newly initialised.
* **``lr_mult``** (2 in every X²-VLM config) multiplies the lr of newly initialised parameters, which
  the official model lists in ``model.init_params`` (exact names).
* **AdamW** with ``betas=(0.9, 0.98)``, ``eps=1e-8``. The official optimizer is the (now removed)
  ``transformers.optimization.AdamW``; ``torch.optim.AdamW`` differs only in second-order terms: it
  applies the decoupled decay before the Adam update instead of after it (a difference of
  ``lr²·wd·update``), and adds ``eps`` after bias-correcting the second moment instead of before
  (``eps`` vs ``eps/sqrt(1-β₂ᵗ)``, which matters only in the first few hundred steps when
  ``sqrt(v)`` is ~1e-8).
* **Linear schedule**: ``lr·t/warmup`` for ``t < warmup``, then ``lr·(total−t)/(total−warmup)``,
  floored at 0; a float ``warmup_steps`` in [0, 1) is a fraction of ``total_steps``. Like the official
  code the scheduler starts at multiplier 0, so with warm-up the very first optimizer step uses lr 0.

Speed (issue 20): ``OptimConfig.implementation`` picks torch's AdamW kernel. ``"fused"`` (default) updates
every parameter of a group in one fused C++ pass, in place; ``"loop"`` is torch's per-tensor Python loop
(torch's own CPU default, about a sixth of an x2vlm-base step); ``"foreach"`` batches the loop into
multi-tensor ops but materialises temporaries the size of all parameters, which costs memory on CPU. All three
apply the same formula; ``tests/test_pretrain_speed_paths.py`` checks losses and weights agree to 1e-6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

# Substrings of parameter names that never get weight decay (official X²-VLM ``create_optimizer``).
OFFICIAL_NO_DECAY = (
    "bias",
    "LayerNorm.bias",
    "LayerNorm.weight",
    "norm.bias",
    "norm.weight",
    "norm1.bias",
    "norm1.weight",
    "norm2.bias",
    "norm2.weight",
)

AdamWImplementation = Literal["fused", "foreach", "loop"]
ADAMW_IMPLEMENTATIONS = ("fused", "foreach", "loop")


@dataclass
class OptimConfig:
    """AdamW settings; the defaults are X²-VLM base pre-training (``configs/pretrain/x2vlm_base_4m.yaml``)."""

    lr: float = 1e-4
    weight_decay: float = 0.01
    lr_mult: float = 2.0
    """Multiplier for newly initialised parameters (``lr_mult_params``)."""
    lr_mult_params: list[str] | None = None
    """Name prefixes that get ``lr * lr_mult``; None uses the model's ``init_params`` when it has one."""
    lr_overrides: dict[str, float] = field(default_factory=dict)
    """Name prefix → lr, e.g. ``{"vision_encoder.": 2e-5, "text_encoder.": 4e-5}``; first match wins."""
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-8
    exclude_1d: bool = False
    """Also exclude every tensor with fewer than 2 dims from weight decay (timm rule; not official)."""
    implementation: AdamWImplementation = "fused"
    """torch AdamW kernel: ``fused`` (one in-place pass per group), ``foreach`` or ``loop`` (see module docstring)."""


@dataclass
class SchedConfig:
    """Learning-rate schedule: ``kind`` in ``linear`` | ``cosine`` | ``constant``, each after a linear warm-up.

    ``warmup_steps`` is a step count (int) or a fraction of ``total_steps`` (float in [0, 1)).
    """

    kind: str = "linear"
    warmup_steps: int | float = 0
    total_steps: int = 1000


# ---------------------------------------------------------------------------------------------- groups
def _no_weight_decay_names(model: nn.Module) -> set[str]:
    method = getattr(model, "no_weight_decay", None)
    return set(method()) if callable(method) else set()


def _is_no_decay(name: str, param: torch.Tensor, model_names: set[str], exclude_1d: bool) -> bool:
    if any(token in name for token in OFFICIAL_NO_DECAY):
        return True
    # ``no_weight_decay()`` may return full names or names relative to a sub-module ("pos_embed").
    if name in model_names or any(name.endswith("." + n) for n in model_names):
        return True
    return exclude_1d and param.ndim < 2


def param_groups(
    model: nn.Module,
    weight_decay: float,
    lr: float,
    lr_overrides: dict[str, float] | None = None,
    lr_mult_params: list[str] | None = None,
    lr_mult: float = 1.0,
    exclude_1d: bool = False,
) -> list[dict[str, Any]]:
    """Split the trainable parameters into AdamW groups by (lr source, decay / no decay).

    Each group holds ``params`` as ``(name, tensor)`` pairs (so the optimizer records
    ``param_names``), plus ``lr``, ``weight_decay``, ``name`` (e.g. ``"vision_encoder./no_decay"``,
    ``"lr_mult/decay"``, ``"base/decay"``) and ``lr_scale`` (group lr / base lr). Frozen parameters
    are left out; tied parameters appear once (``named_parameters`` de-duplicates them). Empty groups
    are dropped.
    """
    overrides = dict(lr_overrides or {})
    if lr_mult_params is None:
        lr_mult_params = list(getattr(model, "init_params", []) or [])
    model_no_decay = _no_weight_decay_names(model)
    groups: dict[str, dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights (a teacher, a frozen tower)
        source, group_lr = "base", lr
        prefix = next((p for p in overrides if name.startswith(p)), None)
        if prefix is not None:
            source, group_lr = prefix, overrides[prefix]
        elif any(name.startswith(p) for p in lr_mult_params):
            source, group_lr = "lr_mult", lr * lr_mult
        decay = not _is_no_decay(name, param, model_no_decay, exclude_1d)
        key = f"{source}/{'decay' if decay else 'no_decay'}"
        if key not in groups:
            groups[key] = {
                "name": key,
                "params": [],
                "lr": group_lr,
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": group_lr / lr if lr else 1.0,
            }
        groups[key]["params"].append((name, param))
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over :func:`param_groups` with the official betas/eps and ``cfg.implementation``."""
    groups = param_groups(
        model,
        weight_decay=cfg.weight_decay,
        lr=cfg.lr,
        lr_overrides=cfg.lr_overrides,
        lr_mult_params=cfg.lr_mult_params,
        lr_mult=cfg.lr_mult,
        exclude_1d=cfg.exclude_1d,
    )
    if not groups:
        raise ValueError(f"{type(model).__name__} has no trainable parameters to optimise")
    return torch.optim.AdamW(
        groups,
        lr=cfg.lr,
        betas=tuple(cfg.betas),
        eps=cfg.eps,
        weight_decay=cfg.weight_decay,
        **adamw_kernel_flags(cfg.implementation),
    )


def adamw_kernel_flags(implementation: str) -> dict[str, bool]:
    """``fused`` / ``foreach`` keyword arguments of ``torch.optim.AdamW`` for an :data:`AdamWImplementation`.

    Both are passed explicitly: left at None, torch picks the loop on CPU tensors whatever the speed.
    """
    if implementation not in ADAMW_IMPLEMENTATIONS:
        raise ValueError(f"optim.implementation must be one of {ADAMW_IMPLEMENTATIONS}, got {implementation!r}")
    return {"fused": implementation == "fused", "foreach": implementation == "foreach"}


# ---------------------------------------------------------------------------------------------- schedule
def resolve_warmup(warmup_steps: int | float, total_steps: int) -> int:
    """A warm-up step count from an int, or from a float fraction in [0, 1) of ``total_steps`` (official rule)."""
    if isinstance(warmup_steps, float) and not warmup_steps.is_integer():
        if not 0.0 <= warmup_steps < 1.0:
            raise ValueError(f"fractional warmup_steps must be in [0, 1), got {warmup_steps}")
        return int(total_steps * warmup_steps)
    steps = int(warmup_steps)
    if steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return steps


def lr_multiplier(kind: str, step: int, warmup: int, total: int) -> float:
    """The schedule's multiplier of the base lr after ``step`` scheduler steps."""
    if step < warmup:
        return step / max(1, warmup)
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "linear":
        return max(0.0, 1.0 - progress)  # == (total - step) / (total - warmup), the official formula
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ValueError(f"unknown schedule kind {kind!r}; expected linear, cosine or constant")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SchedConfig) -> LambdaLR:
    """A ``LambdaLR`` that scales every group's lr by :func:`lr_multiplier`; step it once per optimizer step."""
    if cfg.total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {cfg.total_steps}")
    warmup = resolve_warmup(cfg.warmup_steps, cfg.total_steps)
    lr_multiplier(cfg.kind, warmup, warmup, cfg.total_steps)  # reject an unknown kind now, not at step 1

    def multiplier(step: int) -> float:
        return lr_multiplier(cfg.kind, step, warmup, cfg.total_steps)

    return LambdaLR(optimizer, multiplier)
