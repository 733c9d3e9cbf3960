"""DaVinci's prefix objectives (davinci_cclm_vlue.md A.3): the splits, the teacher-forcing shift, the loss.

* **PLM** (prefix language modelling): a caption's words ``w`` are cut at ``k = min(randint(0, len(w)), 30)``
  with ``randint``'s upper bound excluded, so the suffix keeps at least one word and the prefix may be
  empty. The encoder sees the image and ``w[:k]``; the decoder generates ``w[k:]``. The text-only stream
  (the paper's C4) uses the same split with at most 96 prefix words.
* **PIM** (prefix image modelling): the encoder sees the top ``r`` patch rows of the image and the whole
  caption; the decoder generates ``[IMG_BOS] ++ codes of the remaining rows`` (joint ids: code + offset).
  :func:`pim_prefix_rows` draws ``r``: with probability ``image_prefix_prob`` ``r = randint(0, max_prefix_rows + 1)``
  (upper bound excluded), else 0. ``mode="released"`` reproduces the released config, whose rule
  ``current_epoch > max_prefix_image_epoch = -1`` is always true: ``r = 0`` every time (text-to-whole-image).
* **Shift**: a target ``[BOS] t1 … tn [EOS] pad…`` becomes decoder input ``target[:, :-1]`` and labels
  ``target[:, 1:]`` with padding -> ``IGNORE_INDEX`` (the shift ``BertLMHeadModel`` does inside).
* **Loss**: token cross-entropy over the **joint** vocabulary (official); ``allowed=(lo, hi)`` restricts the
  softmax to ids in ``[lo, hi)`` — e.g. image targets to the image codes (pitfall A.8.1, off by default).

Every random draw comes from a ``random.Random`` the caller owns, so a batch is the same on resume.
"""

from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import Tensor

from grainvl.data.masking import IGNORE_INDEX

MAX_PREFIX_WORDS = 30  # captions (official: min(randint(0, len(w)), 30))
TEXT_MAX_PREFIX_WORDS = 96  # the C4 stream (official enc_max_words)
PREFIX_MODES = ("random", "released")


def plm_split(text: str, rng: random.Random, max_prefix_words: int = MAX_PREFIX_WORDS) -> tuple[str, str]:
    """``(prefix, suffix)`` of ``text`` cut at a random word boundary (see the module docstring).

    An empty text (no words) is a ValueError: there is no suffix to generate.
    """
    words = text.split()
    if not words:
        raise ValueError("empty text: nothing to split into a prefix and a suffix")
    k = min(rng.randrange(0, len(words)), max_prefix_words)  # randrange excludes len(w): suffix >= 1 word
    return " ".join(words[:k]), " ".join(words[k:])


def pim_prefix_rows(
    rng: random.Random, grid_rows: int, image_prefix_prob: float, max_prefix_rows: int, mode: str = "random"
) -> int:
    """Patch rows of the image prefix for one batch.

    ``mode="random"``: a Bernoulli(``image_prefix_prob``) draw (``rng.random()``); when it fires,
    ``rng.randrange(0, m + 1)`` with ``m = min(max_prefix_rows, grid_rows - 1)`` (at least one row is left
    to generate), else 0. ``mode="released"``: always 0 and no draw (the released config's behaviour).
    """
    if mode not in PREFIX_MODES:
        raise ValueError(f"prefix mode must be one of {PREFIX_MODES}, got {mode!r}")
    if not 0.0 <= image_prefix_prob <= 1.0 or max_prefix_rows < 0 or grid_rows < 1:
        raise ValueError("image_prefix_prob must be in [0, 1], max_prefix_rows >= 0 and grid_rows >= 1")
    if mode == "released" or rng.random() >= image_prefix_prob:
        return 0
    return rng.randrange(0, min(max_prefix_rows, grid_rows - 1) + 1)


def pim_target(codes: Tensor, prefix_rows: int, offset: int, img_bos_id: int) -> Tensor:
    """PIM decoder target: codes (B, G, W) -> ``[IMG_BOS] ++ (codes[:, r:] raster + offset)``, (B, 1+(G-r)·W)."""
    if not 0 <= prefix_rows < codes.shape[1]:
        raise ValueError(f"prefix_rows {prefix_rows} must leave at least one of {codes.shape[1]} rows to generate")
    suffix = codes[:, prefix_rows:].flatten(1) + offset  # (B, (G-r)·W)
    bos = suffix.new_full((codes.shape[0], 1), img_bos_id)
    return torch.cat([bos, suffix], dim=1)


def shift_targets(target_ids: Tensor, target_atts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher forcing: target (B, L) with mask (B, L) -> (decoder input (B, L-1), its mask, labels (B, L-1)).

    Labels are the next tokens, ``IGNORE_INDEX`` where the next token is padding.
    """
    labels = target_ids[:, 1:].masked_fill(target_atts[:, 1:] == 0, IGNORE_INDEX)
    return target_ids[:, :-1], target_atts[:, :-1], labels


def prefix_lm_loss(logits: Tensor, labels: Tensor, allowed: tuple[int, int] | None = None) -> Tensor:
    """Mean cross-entropy of logits (B, L, V) against labels (B, L) over labelled positions.

    ``allowed=(lo, hi)``: the softmax runs over ids ``[lo, hi)`` only (labels must lie there). With no
    labelled position the loss is a 0 that still depends on ``logits`` (every DDP rank gets a gradient).
    """
    logits = logits.float()
    if allowed is not None:
        lo, hi = allowed
        outside = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
        outside[lo:hi] = False
        logits = logits.masked_fill(outside, float("-inf"))
    real = labels != IGNORE_INDEX
    if not bool(real.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[real], labels[real])  # (T, V) vs (T,)


__all__ = [
    "MAX_PREFIX_WORDS",
    "PREFIX_MODES",
    "TEXT_MAX_PREFIX_WORDS",
    "pim_prefix_rows",
    "pim_target",
    "plm_split",
    "prefix_lm_loss",
    "shift_targets",
]
