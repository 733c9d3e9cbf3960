"""The text-encoder pre-training Task (MLM, or TACO = MLM + token alignment) and its data pieces:
documents cut into fixed-length blocks (:func:`chunk_corpus`) and a collate that masks them
(:class:`MaskingCollate`). The end-to-end job is :mod:`grainvl.recipes.pretrain_text`."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.data.masking import TextMaskingGenerator, pad_masks
from grainvl.losses.mlm import IGNORE_INDEX, gather_labelled, mlm_loss
from grainvl.losses.taco import taco_loss
from grainvl.models.text import (
    BertEncoderModel,
    MLMHead,
)
from grainvl.utils.distributed import to_global_mean


class TextPretrainTask(nn.Module):
    """Encoder + MLM head (+ TACO): ``forward(batch) -> ({"mlm_loss", ["taco_loss"]}, metrics)``.

    ``batch``: ``input_ids`` (B, L), ``attention_mask`` (B, L), ``masked_pos`` (B, M) and
    ``masked_labels`` (B, M) (−100 on padding entries). Under DDP the MLM and TACO losses and the
    MLM accuracy are shares of the means over the global batch's tokens (``global_mean=True``): their
    rank averages, which the training loop logs, are the global means.
    """

    def __init__(self, encoder: BertEncoderModel, head: MLMHead, objective: str, taco: TacoSettings) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.objective = objective
        self.taco = taco

    def forward(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float]]:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        # Blocks without padding need no attention mask (and SDPA is faster without one).
        mask = None if bool(attention_mask.all()) else attention_mask
        states = self.encoder.forward_intermediates(input_ids, mask)  # [embedding output, layer 1, ..., layer N]
        embeddings, hidden = states[0], states[-1]  # (B, L, H) each
        rows, labels = gather_labelled(hidden, batch["masked_pos"], batch["masked_labels"])  # (N, H), (N,)
        logits = self.head(rows)  # (N, V): the real masked tokens only
        losses = {"mlm_loss": mlm_loss(logits, labels, global_mean=True)}
        hits = (logits.detach().argmax(-1) == labels).float()  # (N,)
        accuracy = hits.mean() if len(hits) else hits.new_zeros(())
        metrics = {"mlm_acc": float(to_global_mean(accuracy, len(hits)))}
        if self.objective == "taco":
            anchors = self._anchor_mask(batch, hidden.shape[:2])
            tc = taco_loss(
                hidden,
                embeddings,
                mask,
                temperature=self.taco.temperature,
                num_negatives=self.taco.num_negatives,
                window_size=self.taco.window_size,
                anchor_mask=anchors,
                global_mean=True,
            )
            losses["taco_loss"] = self.taco.weight * tc
        return losses, metrics

    def _anchor_mask(self, batch: dict[str, Tensor], shape: torch.Size) -> Tensor | None:
        """(B, L) anchors for ``taco.positions`` "masked"/"unmasked" (the official variants); None = all."""
        if self.taco.positions == "all":
            return None
        masked = torch.zeros(shape, dtype=torch.bool, device=batch["input_ids"].device)
        real = batch["masked_labels"] != IGNORE_INDEX  # padding entries point at position 0: leave them out
        rows = torch.arange(shape[0], device=masked.device)[:, None].expand_as(real)
        masked[rows[real], batch["masked_pos"][real]] = True
        return masked if self.taco.positions == "masked" else ~masked


# ---------------------------------------------------------------------------------------------- data
def chunk_corpus(documents: list[str], tokenizer: Any, seq_len: int) -> list[Tensor]:
    """``[CLS] doc [SEP]`` token ids of every document, concatenated and cut into (seq_len,) blocks."""
    encoded = tokenizer(documents, add_special_tokens=True, verbose=False)["input_ids"]
    flat = [token for ids in encoded for token in ids]
    blocks = len(flat) // seq_len
    if blocks == 0:
        raise ValueError(f"the corpus has {len(flat)} tokens, fewer than one block of seq_len={seq_len}")
    stacked = torch.tensor(flat[: blocks * seq_len], dtype=torch.long).view(blocks, seq_len)
    return list(stacked)


class MaskingCollate:
    """Blocks -> an MLM batch, masks drawn from Python's global RNG (saved in checkpoints: exact resume)."""

    def __init__(self, tokenizer: Any, seq_len: int, mask_prob: float) -> None:
        self.max_masks = max(1, round(seq_len * mask_prob))
        # The module-level ``random`` functions are bound methods of this instance; using it keeps the
        # masks in the RNG stream that the training loop checkpoints and restores.
        global_rng = random._inst  # type: ignore[attr-defined]
        self.masker = TextMaskingGenerator(
            tokenizer, mask_prob, self.max_masks, skipgram_prb=0.0, mask_whole_word=False, rng=global_rng
        )

    def __call__(self, blocks: list[Tensor]) -> dict[str, Tensor]:
        ids, positions, labels = [], [], []
        for block in blocks:
            masked_ids, pos, lab = self.masker(block.tolist())
            pos, lab = pad_masks(pos, lab, self.max_masks)
            ids.append(masked_ids)
            positions.append(pos)
            labels.append(lab)
        input_ids = torch.tensor(ids, dtype=torch.long)  # (B, L)
        return {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "masked_pos": torch.tensor(positions, dtype=torch.long),  # (B, M)
            "masked_labels": torch.tensor(labels, dtype=torch.long),  # (B, M)
        }


@dataclass
class TacoSettings:
    weight: float = 1.0  # official --infonce_weight
    temperature: float = 0.07
    num_negatives: int = 50
    window_size: int = 5  # positives at offsets ±1..±(window_size // 2)
    positions: str = "all"  # anchors: all tokens (official default), only MLM-masked, or only unmasked ones
