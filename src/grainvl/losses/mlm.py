"""Vision-conditioned masked language modelling (MLM), as X²-VLM's ``get_mlm_loss``.

The masked text runs through all text + fusion layers with cross-attention to the image (or region,
or video) sequence; only the hidden states at the masked positions go through the MLM head, which
saves the ``(B, L, V)`` vocabulary projection for the ``L − M`` unmasked tokens. Masked positions
come from :class:`grainvl.data.masking.TextMaskingGenerator`, padded with position 0 and label −100.

The official code projects all ``B · M`` gathered rows, padding included, and lets the −100 labels drop
the padding from the loss. :func:`gather_labelled` hands the head only the real masked tokens: the same
loss and gradients (the padding rows contribute exactly nothing), at about two thirds of the vocabulary
projection in the demo's batches (8 real masks of ``M = 12`` per caption, 6 per region text).

Under DDP the number of masked tokens differs per rank; ``mlm_loss(..., global_mean=True)`` (what the
pre-training Tasks use) weights each rank's mean by its share of the global token count, so the
averaged gradient is that of the mean over the whole global batch (:func:`grainvl.utils.distributed.to_global_mean`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from grainvl.data.masking import IGNORE_INDEX  # the one label that losses skip, defined where labels are made
from grainvl.utils.distributed import to_global_mean


def gather_masked(hidden: torch.Tensor, masked_pos: torch.Tensor) -> torch.Tensor:
    """Hidden states at the masked positions.

    Args:
        hidden: (B, L, H) fusion-encoder output.
        masked_pos: (B, M) long positions into ``L`` (padding entries point at 0 and are ignored by
            the loss through their −100 label).

    Returns:
        (B, M, H) with ``out[b, m] = hidden[b, masked_pos[b, m]]``.
    """
    if masked_pos.dim() != 2 or masked_pos.shape[0] != hidden.shape[0]:
        raise ValueError(f"masked_pos must be (B, M) with B={hidden.shape[0]}, got {tuple(masked_pos.shape)}")
    index = masked_pos.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])  # (B, M, H)
    return torch.gather(hidden, 1, index)


def gather_labelled(
    hidden: torch.Tensor, masked_pos: torch.Tensor, masked_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states and labels of the real masked tokens only (label != −100).

    Args:
        hidden: (B, L, H) fusion-encoder output.
        masked_pos: (B, M) long positions into ``L``, padded (any position) where ``masked_ids`` is −100.
        masked_ids: (B, M) original token ids at those positions, −100 for padding.

    Returns:
        ``(rows, labels)``: (N, H) and (N,), N = the number of real masked tokens, in the row-major
        order of ``(b, m)``, so :func:`mlm_loss` on ``(head(rows), labels)`` equals it on the padded
        ``(B, M, V)`` logits of :func:`gather_masked`.
    """
    if masked_pos.shape != masked_ids.shape:
        raise ValueError(f"masked_pos {tuple(masked_pos.shape)} and masked_ids {tuple(masked_ids.shape)} differ")
    real = masked_ids != IGNORE_INDEX  # (B, M)
    batch, length, width = hidden.shape
    rows = real.nonzero(as_tuple=True)[0]  # (N,) the text each real mask belongs to
    flat = rows * length + masked_pos[real]  # (N,) positions in the (B·L) flattened sequence
    # index_select: its backward (index_add_) is several times faster on CPU than advanced indexing's.
    return hidden.reshape(batch * length, width).index_select(0, flat), masked_ids[real]


def mlm_loss(logits: torch.Tensor, labels: torch.Tensor, global_mean: bool = False) -> torch.Tensor:
    """Cross-entropy over real masked tokens, ignoring label −100.

    Args:
        logits: (N, V) MLM-head logits of the real masked tokens (from :func:`gather_labelled`),
            (B, M, V) at the padded masked positions (from :func:`gather_masked`), or (B, L, V) over
            every position.
        labels: (N,), (B, M) or (B, L) original token ids at those positions, −100 where nothing is
            predicted (padding of ``masked_ids``).
        global_mean: under a process group, return this rank's share ``mean · n_r · W / N`` of the
            mean over every rank's ``N`` masked tokens (a collective: every rank must call it); its
            rank average, and DDP's averaged gradient, are the global-batch mean's. Without a
            process group it changes nothing.

    Returns:
        Scalar mean over the non-ignored tokens of the whole batch (0 with a zero gradient path
        when no token is masked, rather than NaN).
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    flat_logits = logits.reshape(-1, logits.shape[-1])  # (B·M, V)
    flat_labels = labels.reshape(-1)  # (B·M,)
    real = flat_labels != IGNORE_INDEX  # (B·M,)
    if real.any():
        loss = F.cross_entropy(flat_logits.float(), flat_labels, ignore_index=IGNORE_INDEX)
    else:
        loss = flat_logits.sum() * 0.0
    # A rank without masked tokens still joins the count's all-reduce (and contributes 0).
    return to_global_mean(loss, real.sum()) if global_mean else loss
