"""CCLM pre-training as a Task: the X²-VLM image / region losses plus the parallel-text losses.

A batch holds one kind (the :class:`~grainvl.data.parallel_text.CrossViewSchedule` hands out one per
optimizer step): ``{"image": ...}`` → ITC + ITM + MLM on a multilingual caption (language drawn per
example), ``{"region": ...}`` → the region losses with box regression, both exactly
:class:`~grainvl.tasks.pretrain.PretrainTask`'s; ``{"para": ...}`` → TTC + TTM + conditional MLM
(:func:`grainvl.losses.cross_view.cross_view_text_losses`). Each data type's losses are multiplied by its
weight (X²-VLM's ``iter_perc``; all 1 in the official CCLM configs). Both layouts work: the single stack
(fusion layers of ``text_encoder.bert``) and the CrossViewLM layout (separate ``cross_encoder``), since
both go through :meth:`XVLM.fuse`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from grainvl.losses.cross_view import check_text_pair_width, cross_view_text_losses
from grainvl.models.xvlm import XVLM
from grainvl.tasks.pretrain import PretrainTask, PretrainWeights


@dataclass
class CrossViewWeights(PretrainWeights):
    """:class:`PretrainWeights` plus the parallel-text weight (X²-VLM's ``mtexts.iter_perc``)."""

    para: float = 1.0


class CrossViewTask(PretrainTask):
    """``forward({"image" | "region" | "para": batch}) -> (losses, metrics)``; see the module docstring."""

    def __init__(self, model: XVLM, weights: CrossViewWeights | None = None) -> None:
        weights = weights or CrossViewWeights()
        if weights.para > 0:
            check_text_pair_width(model)  # before step 1, not at the first parallel batch
        super().__init__(model, weights)
        self.weights: CrossViewWeights = weights

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses, metrics = super().forward(batch)
        if "para" in batch and self.weights.para > 0:
            terms = cross_view_text_losses(self.model, batch["para"], itm=self.weights.itm)
            losses.update({f"para_{name}_loss": self.weights.para * value for name, value in terms.items()})
        return losses, metrics
