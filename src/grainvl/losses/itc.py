"""Image–text contrastive loss (ITC) over the global batch, as X-VLM/X²-VLM's ``get_contrastive_loss``.

No queue and no momentum encoder: negatives are the other samples of the batch gathered from every
rank. Each rank computes the loss over the *full* gathered ``(N, N)`` logit matrix (``N = Σ_r B_r``)
exactly like the official code, and :func:`~grainvl.utils.distributed.all_gather_with_grad` sums the
feature gradients over ranks, so DDP on ``W`` ranks gives the same gradients as one process on the
concatenated batch (the official gather is off by a factor ``W`` there; see ``train/distributed.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grainvl.utils.distributed import all_gather_no_grad, all_gather_with_grad

TEMP_MIN = 0.001
TEMP_MAX = 0.5


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    temp: torch.Tensor,
    idx: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE ``(i2t + t2i) / 2`` with features gathered across ranks.

    Args:
        image_feat: (B, D) L2-normalised image (or region / video) features of this rank.
        text_feat: (B, D) L2-normalised text features, row ``b`` paired with ``image_feat[b]``.
        temp: scalar temperature tensor (learnable; clamp it with :func:`clamp_temperature_`).
        idx: (B,) optional integer ids (e.g. image ids in retrieval fine-tuning). Pairs with equal ids
            are all positives: the target of row ``i`` is ``pos[i] / pos[i].sum()`` with
            ``pos = idx_all[:, None] == idx_all[None, :]`` (soft targets, both directions).
        gather: gather across ranks (a no-op in a single process); False keeps the loss rank-local.

    Returns:
        Scalar loss, identical on every rank.
    """
    if image_feat.shape != text_feat.shape or image_feat.dim() != 2:
        raise ValueError(f"expected two (B, D) tensors of equal shape, got {image_feat.shape} and {text_feat.shape}")
    if gather:
        image_all = all_gather_with_grad(image_feat)  # (N, D)
        text_all = all_gather_with_grad(text_feat)  # (N, D)
    else:
        image_all, text_all = image_feat, text_feat
    logits = image_all @ text_all.t() / temp  # (N, N): rows images, columns texts
    if idx is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss_i2t = F.cross_entropy(logits, labels)
        loss_t2i = F.cross_entropy(logits.t(), labels)
    else:
        if idx.shape != (image_feat.shape[0],):
            raise ValueError(f"idx must have shape ({image_feat.shape[0]},), got {tuple(idx.shape)}")
        idx_all = all_gather_no_grad(idx) if gather else idx  # (N,)
        positives = (idx_all[:, None] == idx_all[None, :]).to(logits.dtype)  # (N, N), symmetric
        targets = positives / positives.sum(dim=1, keepdim=True)
        loss_i2t = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
        loss_t2i = -(F.log_softmax(logits.t(), dim=1) * targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


@torch.no_grad()
def clamp_temperature_(temp: torch.Tensor, min_value: float = TEMP_MIN, max_value: float = TEMP_MAX) -> torch.Tensor:
    """Clamp the learnable temperature in place (the official code does it before every step)."""
    return temp.clamp_(min_value, max_value)
