"""DaVinci pre-training as a Task: PLM and PIM on image–caption pairs, PLM on a text corpus (A.3).

Streams (both :class:`~grainvl.data.iterators.ShardedStream`, so a resume is exact):

* :class:`PairDataset` reads the X-VLM image–caption lines (the world's ``annotations/pretrain/{split}/
  image_text.jsonl``) through :class:`~grainvl.data.pretrain.ImageTextDataset`: one caption sampled,
  the "pretrain" crop and flip, pixels kept in [0, 1] (the stem and the image tokenizer both take that
  range), the caption cleaned by ``pre_caption`` (30 words). Its ``collate`` draws the PLM split of
  each caption and the batch's PIM prefix rows from the batch's own ``random.Random`` (keyed by the
  stream position), and tokenises prefix, suffix and full caption.
* :class:`TextPrefixStream`: documents of a text corpus (the world's English text, the paper's C4
  stream), split the same way with up to 96 prefix words.

:class:`DaVinciPretrainTask` owns the model and the frozen image tokenizer (kept in eval mode, no
gradient) and returns ``plm_loss``, ``pim_loss`` and ``text_loss`` (each times its weight), so the loop
logs every objective. The image codes are computed in the Task from the very pixels the encoder sees.
Every loss is a mean over a per-rank varying number of tokens (text lengths; each rank draws its own
prefix rows, as the official per-process ``randint``), so each goes through ``to_global_mean``.
"""

from __future__ import annotations

import random
import threading
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from grainvl.data.iterators import Pick, ShardedStream
from grainvl.data.masking import IGNORE_INDEX
from grainvl.data.pretrain import ImageTextDataset, Sample
from grainvl.errors import DataError
from grainvl.losses.prefix_lm import (
    MAX_PREFIX_WORDS,
    TEXT_MAX_PREFIX_WORDS,
    pim_prefix_rows,
    pim_target,
    plm_split,
    prefix_lm_loss,
    shift_targets,
)
from grainvl.models.davinci import STRIDE, DaVinci
from grainvl.models.vq import VQTokenizer
from grainvl.utils.distributed import to_global_mean


# ---------------------------------------------------------------------------------------------- options
@dataclass
class DaVinciObjectives:
    """Loss weights (official ``loss_pair_alpha``, ``loss_image_generation_alpha``, ``c4_alpha``: 1/1/1) and splits."""

    plm: float = 1.0
    pim: float = 1.0
    text: float = 1.0
    image_prefix_prob: float = 1.0
    """Probability that a PIM batch has an image prefix (then ``randint(0, max_prefix_rows + 1)`` rows)."""
    max_prefix_rows: int = 14  # official 16 * randint(0, 15): 0-14 rows of a 16-row grid
    prefix_mode: str = "random"
    """``random`` (the prefix is real) or ``released`` (the released config's bug: never a prefix)."""
    restrict_image_targets: bool = False
    """PIM softmax over the image codes only (pitfall A.8.1); official: the whole joint vocabulary."""
    max_prefix_words: int = MAX_PREFIX_WORDS
    text_max_prefix_words: int = TEXT_MAX_PREFIX_WORDS

    def __post_init__(self) -> None:
        if min(self.plm, self.pim, self.text) < 0 or max(self.plm, self.pim, self.text) <= 0:
            raise ValueError("objective weights plm, pim, text must be >= 0 and not all 0")
        pim_prefix_rows(random.Random(0), 2, self.image_prefix_prob, self.max_prefix_rows, self.prefix_mode)


# ---------------------------------------------------------------------------------------------- text
class TextEncoder:
    """``[CLS] word pieces[:max_tokens-2] [SEP]``; an empty text gives ``[CLS] [SEP]`` (an empty PLM prefix)."""

    def __init__(self, tokenizer: Any, max_tokens: int) -> None:
        if max_tokens < 3:
            raise ValueError(f"max_tokens must be >= 3, got {max_tokens}")
        self.tokenizer, self.max_tokens = tokenizer, max_tokens
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        self._lock = threading.Lock()  # a Hugging Face tokenizer is not documented as thread-safe

    def ids(self, text: str) -> list[int]:
        with self._lock:
            pieces = self.tokenizer.encode(text, add_special_tokens=False) if text else []
        return [self.cls_id, *pieces[: self.max_tokens - 2], self.sep_id]

    def batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> ids (B, L) padded to the longest, mask (B, L)."""
        rows = [self.ids(t) for t in texts]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        atts = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)], atts[i, : len(row)] = torch.tensor(row), 1
        return ids, atts


def split_batch(texts: Sequence[str], rng: random.Random, encoder: TextEncoder, max_words: int) -> dict[str, Any]:
    """PLM split of every text (in order, from ``rng``) -> prefix / suffix ids and masks."""
    splits = [plm_split(t, rng, max_words) for t in texts]
    prefix_ids, prefix_atts = encoder.batch([p for p, _ in splits])
    suffix_ids, suffix_atts = encoder.batch([s for _, s in splits])
    return {"prefix_ids": prefix_ids, "prefix_atts": prefix_atts, "suffix_ids": suffix_ids, "suffix_atts": suffix_atts}


# ---------------------------------------------------------------------------------------------- pair stream
class PairDataset(ImageTextDataset):
    """Image–caption lines -> DaVinci pair batches (see the module docstring).

    Build it with a ``PretrainDataConfig`` whose ``mean``/``std`` are 0/1 (pixels in [0, 1]) and
    ``max_words`` 30; then :meth:`configure` the text encoder, the objectives and the grid.
    """

    kind = "davinci_pair"

    def configure(self, text: TextEncoder, objectives: DaVinciObjectives, grid_rows: int) -> PairDataset:
        self.text_encoder, self.objectives, self.grid_rows = text, objectives, grid_rows
        return self

    def collate(self, samples: list[Sample], rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        """``image`` (B, 3, R, R) in [0, 1], PLM ``prefix_*``/``suffix_*``, full ``caption_*``, ``prefix_rows`` ()."""
        rng = rng or random.Random(0)
        captions = [s["text"].caption for s in samples]
        batch = split_batch(captions, rng, self.text_encoder, self.objectives.max_prefix_words)
        batch["caption_ids"], batch["caption_atts"] = self.text_encoder.batch(captions)
        obj = self.objectives
        rows = pim_prefix_rows(rng, self.grid_rows, obj.image_prefix_prob, obj.max_prefix_rows, obj.prefix_mode)
        batch["prefix_rows"] = torch.tensor(rows)
        batch["image"] = torch.stack([s["image"] for s in samples])  # (B, 3, R, R)
        return batch


# ---------------------------------------------------------------------------------------------- text stream
class TextPrefixStream(ShardedStream):
    """Endless PLM batches of corpus documents (the C4 stream): ``prefix_*`` and ``suffix_*`` ids and masks.

    Epoch ``e`` visits a permutation seeded by ``(seed, e)``; the split draws come from a ``random.Random``
    keyed by ``(seed, rank, epoch, position)`` of the batch, so a resumed run gets the same batches.
    """

    name = "text stream"

    def __init__(
        self,
        documents: Sequence[str],
        batch_size: int,
        encoder: TextEncoder,
        max_prefix_words: int = TEXT_MAX_PREFIX_WORDS,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(documents), batch_size, seed, rank, world_size, drop_last=False)
        self.documents, self.encoder, self.max_prefix_words = list(documents), encoder, max_prefix_words

    def identity(self) -> dict[str, int]:
        return {**super().identity(), "num_documents": self.num_items}

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng(
            np.random.SeedSequence([self.seed, zlib.crc32(b"davinci_text"), epoch])
        ).permutation(self.num_items)

    def make_batch(self, picks: list[Pick]) -> dict[str, torch.Tensor]:
        rng = random.Random(f"grainvl:davinci:text:{self.seed}:{self.rank}:{self.epoch}:{self.position}")
        texts = [self.documents[index] for index, _ in picks]
        return split_batch(texts, rng, self.encoder, self.max_prefix_words)


def check_documents(documents: Sequence[str], source: str) -> list[str]:
    """Corpus documents with at least one word; an empty one is a DataError naming its index (never skipped)."""
    for index, doc in enumerate(documents):
        if not doc.split():
            raise DataError(source, f"document {index}", "empty text: PLM needs at least one word")
    return list(documents)


# ---------------------------------------------------------------------------------------------- task
class DaVinciPretrainTask(nn.Module):
    """``forward(batch)`` on ``{"pair": ..., "text": ...}`` -> ``({plm,pim,text}_loss, metrics)``."""

    def __init__(self, model: DaVinci, image_tokenizer: VQTokenizer, objectives: DaVinciObjectives) -> None:
        super().__init__()
        if image_tokenizer.codebook_size != model.config.codebook_size or image_tokenizer.stride != STRIDE:
            raise ValueError(
                f"the image tokenizer has {image_tokenizer.codebook_size} codes at stride {image_tokenizer.stride}; "
                f"the model expects {model.config.codebook_size} at stride {STRIDE}"
            )
        self.model, self.objectives = model, objectives
        self.image_tokenizer = image_tokenizer.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> DaVinciPretrainTask:
        super().train(mode)
        self.image_tokenizer.eval()  # frozen: its EMA codebook updates run only in training mode
        return self

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        obj, losses, metrics = self.objectives, {}, {}
        pair = batch.get("pair")
        if pair is not None and obj.plm > 0:
            losses["plm_loss"] = obj.plm * self._prefix_lm(pair, pair["image"])
        if pair is not None and obj.pim > 0:
            losses["pim_loss"] = obj.pim * self._prefix_image(pair)
            metrics["prefix_rows"] = float(pair["prefix_rows"])
        if "text" in batch and obj.text > 0:
            losses["text_loss"] = obj.text * self._prefix_lm(batch["text"], None)
        return losses, metrics

    def _prefix_lm(self, b: dict[str, torch.Tensor], images: torch.Tensor | None) -> torch.Tensor:
        """PLM: encoder (image, prefix) -> decoder generates the suffix ([CLS] s1..sn [SEP])."""
        states, atts = self.model.encode(images, b["prefix_ids"], b["prefix_atts"])  # (B, T, H)
        dec_ids, dec_atts, labels = shift_targets(b["suffix_ids"], b["suffix_atts"])  # (B, L-1) each
        loss = prefix_lm_loss(self.model.decode(dec_ids, dec_atts, states, atts), labels)
        return to_global_mean(loss, (labels != IGNORE_INDEX).sum())  # token counts differ per rank

    def _prefix_image(self, b: dict[str, torch.Tensor]) -> torch.Tensor:
        """PIM: encoder (top r rows, caption) -> decoder generates [IMG_BOS] + the codes of the other rows."""
        cfg, images, rows = self.model.config, b["image"], int(b["prefix_rows"])
        with torch.no_grad():
            codes = self.image_tokenizer.encode(images)  # (B, G, G)
        states, atts = self.model.encode(images[:, :, : rows * STRIDE], b["caption_ids"], b["caption_atts"])
        target = pim_target(codes, rows, cfg.image_code_offset, cfg.img_bos_id)  # (B, 1 + (G-r)·G)
        dec_ids, dec_atts, labels = shift_targets(target, torch.ones_like(target))
        allowed = (cfg.image_code_offset, cfg.img_bos_id) if self.objectives.restrict_image_targets else None
        loss = prefix_lm_loss(self.model.decode(dec_ids, dec_atts, states, atts), labels, allowed)
        return to_global_mean(loss, labels.numel())  # each rank draws its own r, so its code count differs


__all__ = [
    "DaVinciObjectives",
    "DaVinciPretrainTask",
    "PairDataset",
    "TextEncoder",
    "TextPrefixStream",
    "check_documents",
    "split_batch",
]
