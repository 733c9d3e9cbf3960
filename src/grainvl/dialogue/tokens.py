"""Target token ids for the dialogue decoders: the packaged MiniLM WordPiece tokenizer over a compact vocabulary.

The decoders are small and trained from scratch on CPU, so their embedding tables and LM heads cover
only the WordPiece ids that occur in their target text (plus ``[PAD]``/``[UNK]``/``[CLS]``/``[SEP]``):
a few hundred rows on the world's dialogues instead of MiniLM's 30,522, which makes the output
softmax -- the dominant cost of a small decoder -- about 50x cheaper. Unseen WordPieces map to
``[UNK]``. The local ids are 0 ``[PAD]``, 1 ``[UNK]``, 2 ``[CLS]`` (begin), 3 ``[SEP]`` (end). Sources
are not tokenised: models read them as sentence vectors (:mod:`grainvl.dialogue.memory`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class DialogueVocab:
    """A tokenizer restricted to a compact vocabulary; ``len()`` is the models' embedding size."""

    def __init__(self, tokenizer: Any, token_ids: Iterable[int]) -> None:
        self.tokenizer = tokenizer
        specials = [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id]
        self.global_ids: list[int] = specials + sorted(set(token_ids) - set(specials))
        self._local = {g: i for i, g in enumerate(self.global_ids)}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def build(cls, tokenizer: Any, texts: Iterable[str]) -> DialogueVocab:
        """The vocabulary of every WordPiece in ``texts``."""
        ids: set[int] = set()
        for text in texts:
            ids.update(tokenizer(text, add_special_tokens=False)["input_ids"])
        return cls(tokenizer, ids)

    def __len__(self) -> int:
        return len(self.global_ids)

    def ids(self, text: str) -> list[int]:
        """Local ids of ``text`` without special tokens (cached: targets repeat)."""
        if text not in self._cache:
            pieces = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._cache[text] = [self._local.get(g, UNK) for g in pieces]
        return self._cache[text]

    def target(self, text: str, max_tokens: int) -> list[int]:
        """``[CLS] text [SEP]`` in at most ``max_tokens`` ids (a long text is cut on the right, EOS kept)."""
        return [BOS, *self.ids(text)[: max_tokens - 2], EOS]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of local ids (special tokens dropped; WordPieces joined as the tokenizer joins them)."""
        pieces = [self.global_ids[i] for i in ids if i > EOS]
        return self.tokenizer.decode(pieces, skip_special_tokens=True).strip()


def pad_batch(sequences: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Right-pad id lists -> ids (B, L) and mask (B, L) with 1 on real tokens."""
    length = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), length), PAD, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return ids.to(device), (ids != PAD).long().to(device)


__all__ = ["BOS", "EOS", "PAD", "UNK", "DialogueVocab", "pad_batch"]
