"""Caption cleaning and MLM masking as X²-VLM's pre-training data pipeline does it (xvlm.md §2.3).

* :func:`pre_caption` — the official caption normalisation (lower-case, punctuation to spaces, word
  truncation); :func:`pre_question` — the official VQA question normalisation. The format validators
  reject texts these clean to nothing, so a bad text fails when its file is read, not at a sample.
* :class:`TextMaskingGenerator` — chooses the tokens that the vision-conditioned MLM predicts:
  ``n = min(max_masks, max(1, round(len · mask_prob)))`` positions (``len`` counts ``[CLS]`` and
  ``[SEP]``), n-gram spans with probability ``skipgram_prb``, whole-word expansion over WordPiece
  ``##`` continuations, then 80% ``[MASK]`` / 10% random token / 10% unchanged.
* :func:`pad_masks` — fixed-length ``masked_pos`` (padded with 0) and labels (padded with −100).
* :class:`MaskingOptions` — the masking settings of one text kind: :data:`XVLM_MASKING` (X²-VLM captions),
  :data:`CCLM_CAPTION_MASKING` and :data:`CCLM_PARA_MASKING` (CCLM's captions and parallel sentences,
  davinci_cclm_vlue.md B.3: rate 0.4, at most 12 / 20 masks, 2–3-gram spans with p = 0.2, no whole-word
  expansion because the official CCLM datasets pass ``mask_whole_word=False``, ``[CLS]`` never masked).

All randomness comes from the given :class:`random.Random`; the same seed gives the same masks.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

IGNORE_INDEX = -100

_PUNCTUATION = re.compile(r"([,.'!?\"()*#:;~])")
_WHITESPACE_RUN = re.compile(r"\s{2,}")


def pre_caption(text: str, max_words: int) -> str:
    """Normalise a caption exactly like the official ``pre_caption``.

    Lower-case; replace each of ``,.'!?"()*#:;~`` and then ``-`` and ``/`` by a space; ``<person>`` →
    ``person``; collapse runs of two or more whitespace characters into one space (a single tab or
    newline is kept, as in the official regex); strip spaces; keep the first ``max_words``
    space-separated words. Raises ValueError when nothing is left.
    """
    caption = _PUNCTUATION.sub(" ", text.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    caption = _WHITESPACE_RUN.sub(" ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    if len(words) > max_words:
        caption = " ".join(words[:max_words])
    if not caption:
        raise ValueError(f"pre_caption yields an empty text (raw: {text!r})")
    return caption


_QUESTION_PUNCTUATION = re.compile(r"([.!\"()*#:;~])")


def pre_question(question: str, max_words: int) -> str:
    """The official ``pre_question``: lower-case, delete ``.!"()*#:;~``, ``-`` and ``/`` to spaces, cut words.

    Unlike captions, ``?``, ``,`` and ``'`` stay (the tokenizer splits them off). Raises ValueError when
    nothing is left.
    """
    text = _QUESTION_PUNCTUATION.sub("", question.lower()).replace("-", " ").replace("/", " ").rstrip(" ")
    words = text.split(" ")
    if len(words) > max_words:
        text = " ".join(words[:max_words])
    if not text.strip():
        raise ValueError(f"pre_question yields an empty question (raw: {question!r})")
    return text


@dataclass(frozen=True)
class MaskingOptions:
    """The masking settings of one kind of text (the keyword arguments of :class:`TextMaskingGenerator`)."""

    mask_prob: float
    max_masks: int
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    mask_whole_word: bool = True


XVLM_MASKING = MaskingOptions(mask_prob=0.5, max_masks=12)
# CCLM (official ``pretrain_dataset_multilingual.py``): captions max_tokens 40, parallel text max_tokens 64.
CCLM_CAPTION_MASKING = MaskingOptions(mask_prob=0.4, max_masks=12, mask_whole_word=False)
CCLM_PARA_MASKING = MaskingOptions(mask_prob=0.4, max_masks=20, mask_whole_word=False)


class TextMaskingGenerator:
    """Pick and corrupt the MLM positions of one tokenised caption.

    Args:
        tokenizer: a Hugging Face tokenizer with ``mask_token_id`` (``cls_token_id`` and
            ``pad_token_id`` are used when present).
        mask_prob: fraction of the sequence (``[CLS]`` and ``[SEP]`` included) to predict.
        max_masks: upper bound on the number of predicted positions.
        skipgram_prb: probability that a chosen start position opens an n-gram span.
        skipgram_size: spans have 2..``skipgram_size`` tokens.
        mask_whole_word: extend every span to whole words (WordPiece ``##`` pieces). Vocabularies
            without ``##`` pieces (SentencePiece/Unigram) are unaffected, so no switch is needed;
            the official code turns the option off for any encoder path other than
            ``bert-{base,large}-uncased``, including BERT-vocabulary models such as MiniLM.
        rng: source of randomness (a fresh unseeded one when None).

    Deviations from the official ``TextMaskingGenerator``: the 10% random replacements are drawn
    from the vocabulary *without* special tokens (the official draws any id, ``[PAD]`` and ``[CLS]``
    included), and positions are returned sorted (the official returns set order).
    """

    def __init__(
        self,
        tokenizer: Any,
        mask_prob: float = 0.5,
        max_masks: int = 12,
        skipgram_prb: float = 0.2,
        skipgram_size: int = 3,
        mask_whole_word: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        if tokenizer.mask_token_id is None:
            raise ValueError("the tokenizer has no mask token; MLM masking needs one")
        if not 0.0 < mask_prob <= 1.0:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        if max_masks < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        self.mask_prob = mask_prob
        self.max_masks = max_masks
        self.skipgram_prb = skipgram_prb
        self.skipgram_size = skipgram_size
        self.mask_whole_word = mask_whole_word
        self.rng = rng if rng is not None else random.Random()
        self.cls_id: int | None = tokenizer.cls_token_id
        self.pad_id: int | None = tokenizer.pad_token_id
        self.mask_id: int = tokenizer.mask_token_id
        vocab_size = len(tokenizer)
        special = set(tokenizer.all_special_ids)
        self.random_ids = [i for i in range(vocab_size) if i not in special]
        pieces = tokenizer.convert_ids_to_tokens(list(range(vocab_size)))
        # Ids of WordPiece continuation pieces ("##ing"): they belong to the word on their left.
        self.continuation_ids = frozenset(i for i, piece in enumerate(pieces) if piece and piece.startswith("##"))

    @classmethod
    def from_options(
        cls, tokenizer: Any, options: MaskingOptions, rng: random.Random | None = None
    ) -> TextMaskingGenerator:
        """A generator with one kind's settings (:data:`XVLM_MASKING`, :data:`CCLM_PARA_MASKING`, ...)."""
        return cls(tokenizer, rng=rng, **asdict(options))

    def __call__(self, input_ids: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        """Mask one sequence ``[CLS] tokens [SEP] [PAD]...``.

        Returns:
            ``(masked_ids, masked_pos, masked_labels)``: the corrupted copy of ``input_ids`` (same
            length, padding untouched), the sorted predicted positions and the original ids there.
        """
        ids = list(input_ids)
        length = self._unpadded_length(ids)
        n_pred = min(self.max_masks, max(1, round(length * self.mask_prob)))
        positions = self._choose_positions(ids, length, n_pred)
        labels = [ids[p] for p in positions]
        for pos in positions:
            if self.rng.random() < 0.8:  # 80%: [MASK]
                ids[pos] = self.mask_id
            elif self.rng.random() < 0.5:  # 10%: a random (non-special) token
                ids[pos] = self.rng.choice(self.random_ids)
            # remaining 10%: unchanged, but still predicted
        return ids, positions, labels

    def _unpadded_length(self, ids: list[int]) -> int:
        """Length without trailing padding; padding is never a candidate."""
        length = len(ids)
        if self.pad_id is not None:
            while length > 0 and ids[length - 1] == self.pad_id:
                length -= 1
        return length

    def _choose_positions(self, ids: list[int], length: int, n_pred: int) -> list[int]:
        """The official candidate loop: shuffled starts, n-gram spans, whole-word expansion."""
        # [CLS] is never a candidate, but the final [SEP] is: the official code masks it too
        # (xvlm.md §2.3, quirk kept so pre-training sees the same targets).
        first = 1 if length > 0 and ids[0] == self.cls_id else 0
        candidates = list(range(first, length))
        self.rng.shuffle(candidates)
        chosen: set[int] = set()
        for pos in candidates:
            if len(chosen) >= n_pred:
                break
            if pos in chosen:
                continue
            span = 1
            if self.skipgram_prb > 0 and self.skipgram_size >= 2 and self.rng.random() < self.skipgram_prb:
                span = self.rng.randint(2, self.skipgram_size)
            start, stop = pos, pos + span
            if self.mask_whole_word:
                start, stop = self._expand_whole_word(ids, length, start, stop)
            for p in range(start, stop):
                # A span stops at the sequence end or at position 0 (the official ``0 < mp`` check).
                if not 1 <= p < length:
                    break
                chosen.add(p)
        positions = sorted(chosen)
        if len(positions) > n_pred:  # spans can overshoot n_pred; keep a random subset
            self.rng.shuffle(positions)
            positions = sorted(positions[:n_pred])
        return positions

    def _expand_whole_word(self, ids: list[int], length: int, start: int, stop: int) -> tuple[int, int]:
        """Move ``start`` back to its word's first piece and ``stop`` past the last piece's word."""
        while start >= 0 and ids[start] in self.continuation_ids:
            start -= 1
        while stop < length and ids[stop] in self.continuation_ids:
            stop += 1
        return start, stop


def pad_masks(masked_pos: Sequence[int], masked_labels: Sequence[int], max_masks: int) -> tuple[list[int], list[int]]:
    """Pad to ``max_masks`` entries: positions with 0, labels with −100 (ignored by the loss)."""
    if len(masked_pos) != len(masked_labels):
        raise ValueError(f"{len(masked_pos)} positions but {len(masked_labels)} labels")
    if len(masked_pos) > max_masks:
        raise ValueError(f"{len(masked_pos)} masked positions exceed max_masks={max_masks}")
    n_pad = max_masks - len(masked_pos)
    return list(masked_pos) + [0] * n_pad, list(masked_labels) + [IGNORE_INDEX] * n_pad
