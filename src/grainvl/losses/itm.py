"""Image–text matching (ITM) with in-batch hard negatives, as X-VLM/X²-VLM's ``get_matching_loss``.

For every text one negative image, and for every image one negative text, is drawn from the
softmaxed **rank-local** ITC similarities (the official code does not gather here). The fusion
encoder then scores ``B`` positive and ``2B`` negative pairs and a 2-way head is trained with
labels ``[1]*B + [0]*2B``. The model code builds the pairs with :func:`itm_pairs` and feeds the
fused ``[CLS]`` logits to :func:`itm_loss`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F

from grainvl.models.layers import SharedTokens, select_vision_rows
from grainvl.models.xvlm import XVLM

# Added to every softmax weight before masking so that no row is all zero even when the softmax
# underflows (official value).
WEIGHT_FLOOR = 1e-5

# Task-level distillation runs a student and a teacher on one batch; the teacher must score the pairs the
# student drew (EfficientVLM's KL on ITM logits compares the same pairs). A tape records the student's draws
# and replays them, in order, to the teacher's forward. (mode, [(neg_image, neg_text), ...]) or None.
_NEGATIVES_TAPE: ContextVar[tuple[str, list[tuple[torch.Tensor, torch.Tensor]]] | None] = ContextVar(
    "itm_negatives_tape", default=None
)


@contextmanager
def negatives_tape(mode: str, tape: list[tuple[torch.Tensor, torch.Tensor]]) -> Iterator[None]:
    """Inside the block, :func:`hard_negative_itm_loss` appends its draws to ``tape`` (``"record"``) or takes
    them from its front instead of drawing (``"replay"``)."""
    if mode not in ("record", "replay"):
        raise ValueError(f"negatives_tape mode must be 'record' or 'replay', got {mode!r}")
    token = _NEGATIVES_TAPE.set((mode, tape))
    try:
        yield
    finally:
        _NEGATIVES_TAPE.reset(token)


def _draw_negatives(sim_i2t: torch.Tensor, idx: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sample_hard_negatives`, or the recorded draw when a replay tape is active."""
    tape = _NEGATIVES_TAPE.get()
    if tape is not None and tape[0] == "replay":
        if not tape[1]:
            raise RuntimeError("the negatives tape is empty: the replayed forward draws more than the recorded one")
        return tape[1].pop(0)
    drawn = sample_hard_negatives(sim_i2t, sim_i2t.t(), idx)
    if tape is not None:
        tape[1].append(drawn)
    return drawn


def _negative_weights(sim: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
    """softmax(sim) + 1e-5 over each row with the positives (``same``) zeroed. (B, B) → (B, B)."""
    if sim.shape[0] < 2:
        raise ValueError("ITM hard negatives need at least two samples per rank")
    probs = F.softmax(sim.float(), dim=1) + WEIGHT_FLOOR
    weights = probs.masked_fill(same, 0.0)
    empty = weights.sum(dim=1) == 0
    if empty.any():
        # Every sample shares this row's id (a tiny dataset wrapping into its next epoch can do that).
        # The official code would crash in multinomial; we fall back to excluding only the diagonal,
        # accepting a false negative in such degenerate batches rather than stopping the run.
        diagonal = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
        weights[empty] = probs[empty].masked_fill(diagonal[empty], 0.0)
    return weights


@torch.no_grad()
def sample_hard_negatives(
    sim_i2t: torch.Tensor,
    sim_t2i: torch.Tensor,
    idx: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one hard negative image per text and one hard negative text per image.

    Args:
        sim_i2t: (B, B) local similarities ``image_feat @ text_feat.T / temp`` (rows images).
        sim_t2i: (B, B) local similarities ``text_feat @ image_feat.T / temp`` (rows texts).
        idx: (B,) optional ids; entries with the same id count as positives and are never drawn.
            Without it only the diagonal is excluded.
        generator: optional torch.Generator (on the similarities' device) for reproducible draws.

    Returns:
        ``(neg_image_index, neg_text_index)``, both (B,) long: ``neg_image_index[b]`` is the negative
        image for text ``b`` (drawn from row ``b`` of ``sim_t2i``), ``neg_text_index[b]`` the negative
        text for image ``b`` (row ``b`` of ``sim_i2t``). Probabilities are proportional to
        ``softmax(sim) + 1e-5`` with positives zeroed (xvlm.md §2.2).
    """
    batch = sim_i2t.shape[0]
    if sim_i2t.shape != (batch, batch) or sim_t2i.shape != (batch, batch):
        raise ValueError(f"expected two (B, B) similarity matrices, got {sim_i2t.shape} and {sim_t2i.shape}")
    if idx is None:
        same = torch.eye(batch, dtype=torch.bool, device=sim_i2t.device)  # (B, B)
    else:
        same = idx.view(-1, 1) == idx.view(1, -1)  # (B, B)
    weights_i2t = _negative_weights(sim_i2t, same)
    weights_t2i = _negative_weights(sim_t2i, same)
    # One multinomial call per matrix draws one sample per row, like the official per-row loop.
    neg_image_index = torch.multinomial(weights_t2i, 1, generator=generator).squeeze(1)  # (B,)
    neg_text_index = torch.multinomial(weights_i2t, 1, generator=generator).squeeze(1)  # (B,)
    return neg_image_index, neg_text_index


def itm_pairs(neg_image_index: torch.Tensor, neg_text_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(text, image) index pairs for the ``3B`` fusion forwards, in the official order.

    Rows ``0..B-1``: positives ``(b, b)``; ``B..2B-1``: ``(b, neg_image_index[b])`` (each text with its
    hard negative image); ``2B..3B-1``: ``(neg_text_index[b], b)`` (each image with its hard negative
    text). Returns ``(text_index, image_index)``, both (3B,) long, for indexing text and image
    sequences (and their attention masks).
    """
    arange = torch.arange(neg_image_index.shape[0], device=neg_image_index.device)  # (B,)
    text_index = torch.cat([arange, arange, neg_text_index])  # (3B,)
    image_index = torch.cat([arange, neg_image_index, arange])  # (3B,)
    return text_index, image_index


def itm_labels(batch: int, device: torch.device | None = None) -> torch.Tensor:
    """(3B,) long labels ``[1]*B + [0]*2B`` matching :func:`itm_pairs` (class 1 = match)."""
    labels = torch.zeros(3 * batch, dtype=torch.long, device=device)
    labels[:batch] = 1
    return labels


def itm_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the ITM head's (3B, 2) logits over pairs ordered as :func:`itm_pairs`."""
    if logits.dim() != 2 or logits.shape[1] != 2 or logits.shape[0] % 3 != 0:
        raise ValueError(f"expected (3B, 2) ITM logits, got {tuple(logits.shape)}")
    return F.cross_entropy(logits, itm_labels(logits.shape[0] // 3, logits.device))


def hard_negative_itm_loss(
    model: XVLM,
    vis: torch.Tensor | SharedTokens,
    vis_atts: torch.Tensor,
    text: torch.Tensor,
    text_atts: torch.Tensor,
    vis_feat: torch.Tensor,
    text_feat: torch.Tensor,
    idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """ITM on ``B`` positives and ``2B`` hard negatives mined from rank-local ITC similarities.

    vis (B, 1+N, D) / vis_atts (B, 1+N), text (B, L, H) / text_atts (B, L), feats (B, E); ``idx`` as
    :func:`sample_hard_negatives`. The pairs go through the fusion encoder in :func:`itm_pairs` order, their
    vision rows as :class:`SharedTokens` when ``model.share_vision_rows`` (each image projected once).
    """
    with torch.no_grad():
        sim_i2t = vis_feat @ text_feat.t() / model.temp  # (B, B), local only (as the official code)
        neg_image, neg_text = _draw_negatives(sim_i2t, idx)
    text_index, image_index = itm_pairs(neg_image, neg_text)  # (3B,), (3B,)
    pair_vis = select_vision_rows(vis, image_index, share=model.share_vision_rows)
    # index_select rather than text[text_index]: the same rows, but its backward sums the copies' gradients with
    # index_add, where advanced indexing's index_put(accumulate=True) took 5x longer on CPU (16.6 vs 3.1 ms for
    # 144 rows of 100x384 gathered from 12).
    fused = model.fuse(text.index_select(0, text_index), text_atts[text_index], pair_vis, vis_atts[image_index])
    return itm_loss(model.itm_logits(fused))
