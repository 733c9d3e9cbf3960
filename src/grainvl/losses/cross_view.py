"""CCLM's cross-view objectives on parallel sentences (davinci_cclm_vlue.md B.3; xvlm.md §2.6, §7 item 14).

A translation pair (a, b) is two views of one meaning, aligned with the image–caption losses' machinery:

* **TTC** — :func:`ttc_loss`: the symmetric InfoNCE of :func:`grainvl.losses.itc.itc_loss` between the two
  sentences' ``[CLS]`` features, both through the *one* ``text_proj`` (no second projection), gathered
  across ranks like ITC.
* **TTM** — :func:`ttm_loss`: matching with hard negatives (one per sentence, drawn ∝ softmax of the
  rank-local similarities + 1e-5 with the positives zeroed, :func:`grainvl.losses.itm.sample_hard_negatives`).
  Sentence b's text-encoder states sit in the cross-attention slot where image tokens go, sentence a is the
  query side, and the shared ITM head scores the fused ``[CLS]``; labels ``[1]*B + [0]*2B``.
* **Conditional MLM** — :func:`conditional_mlm_loss`: sentence a masked (rate 0.4, 2–3-gram spans,
  :data:`grainvl.data.masking.CCLM_PARA_MASKING`), the text + fusion layers run with cross-attention to
  sentence b's *unmasked* text states, cross-entropy at the masked positions (``global_mean=True``, the DDP
  convention of :mod:`grainvl.losses.mlm`).

The cross-attention keys were built for the vision width: b's states fit only when the text width equals it
(:func:`check_text_pair_width`; the official code only runs the pair path in that case).
"""

from __future__ import annotations

import torch

from grainvl.losses.itc import itc_loss
from grainvl.losses.itm import hard_negative_itm_loss
from grainvl.losses.mlm import gather_labelled, mlm_loss
from grainvl.models.xvlm import XVLM


def check_text_pair_width(model: XVLM) -> None:
    """A ValueError unless sentence states (text width) fit the cross-attention keys (vision width)."""
    text_width, key_width = model.config.text.hidden_size, model.config.text.encoder_width
    if text_width != key_width:
        raise ValueError(
            f"{model.config.name}: parallel-text objectives put sentence b's text states (width {text_width}) "
            f"where image tokens go, but the cross-attention keys take the vision width {key_width}; "
            "use a model whose text and vision widths match (e.g. cclm-small) or turn parallel text off"
        )


def ttc_loss(feat_a: torch.Tensor, feat_b: torch.Tensor, temp: torch.Tensor, gather: bool = True) -> torch.Tensor:
    """Symmetric text–text contrastive loss ``(a→b + b→a) / 2`` over the global batch.

    feat_a, feat_b: (B, E) L2-normalised features of the two sentences from the shared ``text_proj``;
    row ``i`` of each is one pair. Every other sentence of the gathered batch is a negative.
    """
    return itc_loss(feat_a, feat_b, temp, idx=None, gather=gather)


def ttm_loss(
    model: XVLM,
    states_a: torch.Tensor,
    atts_a: torch.Tensor,
    states_b: torch.Tensor,
    atts_b: torch.Tensor,
    feat_a: torch.Tensor,
    feat_b: torch.Tensor,
    pair_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Text–text matching on ``B`` pairs and ``2B`` hard negatives through the shared ITM head.

    states_a (B, La, H) / atts_a (B, La): the query sentence; states_b (B, Lb, H) / atts_b (B, Lb): the
    sentence in the image slot; feats (B, E). ``pair_ids`` (B,): rows with equal ids (the same line drawn
    twice) are never negatives of each other.
    """
    return hard_negative_itm_loss(model, states_b, atts_b, states_a, atts_a, feat_b, feat_a, pair_ids)


def conditional_mlm_loss(
    model: XVLM,
    ids_masked_a: torch.Tensor,
    atts_a: torch.Tensor,
    states_b: torch.Tensor,
    atts_b: torch.Tensor,
    masked_pos: torch.Tensor,
    masked_ids: torch.Tensor,
) -> torch.Tensor:
    """MLM of sentence a given sentence b: ids_masked_a (B, La), masked_pos / masked_ids (B, M) (−100 padding);
    states_b (B, Lb, H) is b's unmasked text-encoder output, attended through the fusion layers."""
    hidden = model.encode_multimodal(ids_masked_a, atts_a, states_b, atts_b)  # (B, La, H)
    rows, labels = gather_labelled(hidden, masked_pos, masked_ids)  # (N, H), (N,): real masks only
    return mlm_loss(model.mlm_logits(rows), labels, global_mean=True)  # logits (N, V)


def cross_view_text_losses(model: XVLM, batch: dict[str, torch.Tensor], itm: bool = True) -> dict[str, torch.Tensor]:
    """``{"ttc", "ttm", "mlm"}`` of one parallel-text batch (the keys of ``data.parallel_text.collate_para``)."""
    atts_a, atts_b = batch["text_atts"], batch["text_atts_2"]
    states_a = model.encode_text(batch["text_ids"], atts_a)  # (B, La, H)
    states_b = model.encode_text(batch["text_ids_2"], atts_b)  # (B, Lb, H)
    feat_a, feat_b = model.text_feat(states_a), model.text_feat(states_b)  # (B, E) each, one projection
    out = {"ttc": ttc_loss(feat_a, feat_b, model.temp)}
    if itm:
        out["ttm"] = ttm_loss(model, states_a, atts_a, states_b, atts_b, feat_a, feat_b, batch.get("pair_ids"))
    out["mlm"] = conditional_mlm_loss(
        model, batch["text_ids_masked"], atts_a, states_b, atts_b, batch["masked_pos"], batch["masked_ids"]
    )
    return out
