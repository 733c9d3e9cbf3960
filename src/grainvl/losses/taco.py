"""TACO: the token-alignment contrastive objective (Fu et al. 2022, arXiv 2204.04163), added to MLM.

For token ``t`` of sequence ``i`` the *global semantics* is ``g = h_t − e_t``: the last-layer hidden
state minus the embedding-layer output (``hidden_states[0]``: word + position + segment embeddings
after LayerNorm and dropout). Each real token is an anchor once, with

* **one positive**: a token of the *same* sequence at offset ±1..±``window_size // 2`` (never the
  token itself), drawn uniformly; when that offset leaves the sequence, a uniformly drawn *other*
  position of the same sequence is used instead (the official "weak positive");
* **K negatives**: tokens drawn uniformly from the *other* sequences of the batch (any real position),
  drawn afresh every step;

and the InfoNCE loss ``−log softmax([cos(g, g⁺), cos(g, g⁻₁..K)] / τ)[0]`` with τ = 0.07. Positives
and negatives are detached (MoCo-style stop-gradient): the gradient reaches the model only through
the anchors. The loss is the mean over every valid anchor of the batch (the official
``CrossEntropyLoss`` over all ``B·L`` positions; its chunks have no padding, so that is also the
paper's ``(1/N)Σ_i (1/L)Σ_l``). ``L_TACO = L_MLM + L_TC``. Under DDP, ``global_mean=True`` makes it the mean
over every rank's anchors (:func:`grainvl.utils.distributed.to_global_mean`), as the MLM term; the
negatives stay those of the rank's own batch, as the official per-device batches.

Deviations from the official ``run_mlm_with_contrastive.py`` / ``sampler.py`` (all documented in
docs/taco.md): padding is supported (pads are never anchors, positives or negatives; the official
samplers assume fixed-length chunks without padding, and we reduce to them when there is none); the
anchor is computed out of place (the official in-place ``last_hiddens -= embeddings`` modifies the
MLM head's input and breaks autograd in fp32); the similarities are computed in fp32; sampling is
device-agnostic (the official labels tensor is created with ``.cuda()``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from grainvl.utils.distributed import to_global_mean

TAU = 0.07
NUM_NEGATIVES = 50
WINDOW_SIZE = 5  # positives at offsets ±1, ±2


def global_semantics(hidden: Tensor, embeddings: Tensor) -> Tensor:
    """``h − e`` per token: (B, L, H) last hidden states minus (B, L, H) embedding-layer output.

    Out of place on purpose: ``hidden`` is also the MLM head's input (see the module docstring).
    """
    if hidden.shape != embeddings.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and embeddings {tuple(embeddings.shape)} differ in shape")
    return hidden - embeddings


def sequence_lengths(attention_mask: Tensor | None, batch: int, seq_len: int, device: torch.device) -> Tensor:
    """(B,) number of real tokens per sequence; the mask must be right-padded (1…1 0…0)."""
    if attention_mask is None:
        return torch.full((batch,), seq_len, dtype=torch.long, device=device)
    if attention_mask.shape != (batch, seq_len):
        raise ValueError(f"attention_mask must be (B, L) = {(batch, seq_len)}, got {tuple(attention_mask.shape)}")
    lengths = attention_mask.long().sum(1)  # (B,)
    prefix = torch.arange(seq_len, device=device)[None, :] < lengths[:, None]  # (B, L)
    if not torch.equal(prefix, attention_mask.bool()):
        raise ValueError("attention_mask must be right-padded: real tokens first, then padding")
    return lengths


def sample_positive_index(
    lengths: Tensor, seq_len: int, window_size: int = WINDOW_SIZE, generator: torch.Generator | None = None
) -> Tensor:
    """(B, L) position of each anchor's positive within its own sequence.

    An offset is drawn uniformly from ``{−w..−1, 1..w}`` (``w = window_size // 2``); where
    ``t + offset`` falls outside ``[0, length)`` a uniform position of ``[0, length) \\ {t}`` is used.
    Entries of padding positions (and of sequences shorter than 2, which have no positive) are ``t``
    itself and must be masked out by the caller.
    """
    if window_size < 3 or window_size % 2 == 0:
        raise ValueError(f"window_size must be odd and >= 3 (offsets ±1..±w), got {window_size}")
    half = window_size // 2
    batch, device = lengths.shape[0], lengths.device
    position = torch.arange(seq_len, device=device).expand(batch, seq_len)  # (B, L)
    draw = torch.randint(window_size - 1, (batch, seq_len), generator=generator, device=device)  # 0..2w-1
    offset = torch.where(draw < half, draw - half, draw - half + 1)  # −w..−1, 1..w
    candidate = position + offset
    length = lengths[:, None]  # (B, 1)
    # Fallback: uniform over the other length − 1 positions, as (t + 1 + u) mod length.
    others = (length - 1).clamp(min=1)
    uniform = (torch.rand((batch, seq_len), generator=generator, device=device) * others).long()
    fallback = (position + 1 + uniform) % length.clamp(min=1)
    outside = (candidate < 0) | (candidate >= length)
    chosen = torch.where(outside, fallback, candidate)
    usable = (position < length) & (length >= 2)
    return torch.where(usable, chosen, position)


def sample_negative_index(
    lengths: Tensor, seq_len: int, num_negatives: int = NUM_NEGATIVES, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """(rows, cols), each (B, L, K): K tokens per anchor drawn uniformly from the *other* sequences.

    The row is uniform over the B − 1 other sequences (with replacement), the column uniform over
    that sequence's real tokens. Needs B >= 2 and every sequence non-empty.
    """
    batch, device = lengths.shape[0], lengths.device
    if batch < 2:
        raise ValueError("TACO draws negatives from other sequences of the batch: it needs a batch of >= 2")
    if num_negatives < 1:
        raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
    if bool((lengths < 1).any()):
        raise ValueError("every sequence needs at least one real token to serve as a negative")
    shape = (batch, seq_len, num_negatives)
    own_row = torch.arange(batch, device=device)[:, None, None]  # (B, 1, 1)
    rows = (own_row + 1 + torch.randint(batch - 1, shape, generator=generator, device=device)) % batch
    cols = (torch.rand(shape, generator=generator, device=device) * lengths[rows]).long()  # < length of its row
    return rows, cols


def info_nce(
    anchor: Tensor,
    positive: Tensor,
    negatives: Tensor,
    temperature: float,
    valid: Tensor | None,
    global_mean: bool = False,
) -> Tensor:
    """Mean InfoNCE over valid anchors, positive at logit index 0; positives/negatives are detached.

    Args:
        anchor: (B, L, H) anchors (the gradient flows through these only).
        positive: (B, L, H) one positive per anchor.
        negatives: (B, L, K, H) K negatives per anchor.
        temperature: τ; the cosine similarities are divided by it.
        valid: (B, L) bool, True where the anchor counts (None: all).
        global_mean: under a process group, this rank's share of the mean over every rank's anchors
            (a collective; see :func:`grainvl.utils.distributed.to_global_mean`).

    Returns:
        Scalar: mean over the valid anchors (0 with a zero gradient path when there is none).
    """
    a = F.normalize(anchor.float(), dim=-1)  # (B, L, H)
    p = F.normalize(positive.float(), dim=-1).detach()  # (B, L, H)
    n = F.normalize(negatives.float(), dim=-1).detach()  # (B, L, K, H)
    positive_logit = (a * p).sum(-1, keepdim=True)  # (B, L, 1)
    negative_logits = torch.einsum("blh,blkh->blk", a, n)  # (B, L, K)
    logits = torch.cat([positive_logit, negative_logits], dim=-1) / temperature  # (B, L, 1 + K)
    if valid is not None:
        logits = logits[valid]  # (N, 1 + K)
    logits = logits.reshape(-1, logits.shape[-1])  # (N, 1 + K)
    if logits.shape[0] == 0:
        loss = anchor.sum() * 0.0
    else:
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits, target)
    # A rank without anchors still joins the count's all-reduce (and contributes 0).
    return to_global_mean(loss, logits.shape[0]) if global_mean else loss


def taco_loss(
    hidden: Tensor,
    embeddings: Tensor,
    attention_mask: Tensor | None = None,
    temperature: float = TAU,
    num_negatives: int = NUM_NEGATIVES,
    window_size: int = WINDOW_SIZE,
    anchor_mask: Tensor | None = None,
    positive_index: Tensor | None = None,
    negative_index: tuple[Tensor, Tensor] | None = None,
    generator: torch.Generator | None = None,
    global_mean: bool = False,
) -> Tensor:
    """The token-alignment contrastive loss ``L_TC`` of one batch (see the module docstring).

    Args:
        hidden: (B, L, H) last-layer hidden states.
        embeddings: (B, L, H) embedding-layer output (``hidden_states[0]``).
        attention_mask: (B, L) 1 = real token, right-padded; None = no padding.
        temperature, num_negatives, window_size: τ = 0.07, K = 50 and W = 5 in the paper.
        anchor_mask: (B, L) bool restricting the anchors further (the official variants "TC only on
            masked positions" / "only on unmasked positions"); None = every real token (the default).
        positive_index: (B, L) explicit positive positions (tests); None = :func:`sample_positive_index`.
        negative_index: explicit ``(rows, cols)``, each (B, L, K); None = :func:`sample_negative_index`.
        generator: torch generator for the sampling (None: the global RNG of the tensors' device).
        global_mean: under a process group, this rank's share of the mean over every rank's anchors
            (a collective: every rank must call it); nothing changes without one.

    Returns:
        Scalar mean InfoNCE over the anchors (real tokens of sequences with >= 2 real tokens).
    """
    semantics = global_semantics(hidden, embeddings)  # (B, L, H)
    batch, seq_len, _ = semantics.shape
    lengths = sequence_lengths(attention_mask, batch, seq_len, semantics.device)  # (B,)
    if positive_index is None:
        positive_index = sample_positive_index(lengths, seq_len, window_size, generator)
    if negative_index is None:
        negative_index = sample_negative_index(lengths, seq_len, num_negatives, generator)
    targets = semantics.detach()  # stop-gradient for positives and negatives
    rows = torch.arange(batch, device=semantics.device)[:, None]  # (B, 1)
    positive = targets[rows, positive_index]  # (B, L, H)
    negative_rows, negative_cols = negative_index
    negatives = targets[negative_rows, negative_cols]  # (B, L, K, H)
    position = torch.arange(seq_len, device=semantics.device)[None, :]  # (1, L)
    valid = (position < lengths[:, None]) & (lengths[:, None] >= 2)  # (B, L)
    if anchor_mask is not None:
        valid = valid & anchor_mask.bool()
    return info_nce(semantics, positive, negatives, temperature, valid, global_mean)


__all__ = [
    "NUM_NEGATIVES",
    "TAU",
    "WINDOW_SIZE",
    "global_semantics",
    "info_nce",
    "sample_negative_index",
    "sample_positive_index",
    "sequence_lengths",
    "taco_loss",
]
