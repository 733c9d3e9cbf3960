"""Caption cleaning and MLM masking (official X²-VLM rules) with the packaged MiniLM WordPiece vocab."""

from __future__ import annotations

import random

import pytest

from grainvl.data.masking import TextMaskingGenerator, pad_masks, pre_caption
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path

SENTENCES = [
    "a man riding a skateboard down a snowy street",
    "two dogs playing with a frisbee on the grass",
    "an unbelievably large xylophone next to a red chair",
    "the snowboarder jumps",
    "a cat",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(packaged_minilm_path())


def _encode(tokenizer, text: str, max_tokens: int = 0) -> list[int]:
    ids = tokenizer(text)["input_ids"]  # [CLS] ... [SEP]
    return ids + [tokenizer.pad_token_id] * max(0, max_tokens - len(ids))


# ---------------------------------------------------------------------------------------------
# pre_caption


def test_pre_caption_official_rules() -> None:
    raw = "A man's <person> riding-a bike/road!!  Now (really)."
    assert pre_caption(raw, 50) == "a man s person riding a bike road now really"
    assert pre_caption(raw, 5) == "a man s person riding"
    assert pre_caption("  Hello,   World  ", 10) == "hello world"
    assert pre_caption("Q: #1 ~fine~; ok?", 10) == "q 1 fine ok"
    # The official regex only collapses runs of two or more whitespace characters.
    assert pre_caption("a\tb", 10) == "a\tb"


def test_pre_caption_empty_raises() -> None:
    with pytest.raises(ValueError, match="empty"):
        pre_caption("?!... ;", 10)


# ---------------------------------------------------------------------------------------------
# TextMaskingGenerator


@pytest.mark.parametrize("mask_prob,max_masks", [(0.5, 12), (0.25, 3), (0.15, 1)])
def test_number_of_masks_follows_official_formula(tokenizer, mask_prob: float, max_masks: int) -> None:
    gen = TextMaskingGenerator(tokenizer, mask_prob=mask_prob, max_masks=max_masks, rng=random.Random(0))
    for text in SENTENCES:
        ids = _encode(tokenizer, text, max_tokens=24)
        length = len(tokenizer(text)["input_ids"])  # [CLS] and [SEP] count
        expected = min(max_masks, max(1, round(length * mask_prob)))  # Python round, as the official
        for _ in range(20):
            _, pos, labels = gen(ids)
            assert len(pos) == len(labels) == expected


def test_never_masks_cls_or_padding_and_labels_match(tokenizer) -> None:
    gen = TextMaskingGenerator(tokenizer, rng=random.Random(1))
    seen_sep = False
    for _ in range(200):
        for text in SENTENCES:
            ids = _encode(tokenizer, text, max_tokens=20)
            length = len(tokenizer(text)["input_ids"])
            masked, pos, labels = gen(ids)
            assert len(masked) == len(ids)
            assert pos == sorted(set(pos))
            assert all(1 <= p < length for p in pos)  # never [CLS] (0), never padding
            assert masked[0] == tokenizer.cls_token_id and masked[length:] == ids[length:]
            assert labels == [ids[p] for p in pos]
            assert all(masked[i] == ids[i] for i in range(len(ids)) if i not in pos)
            seen_sep |= (length - 1) in pos
    assert seen_sep  # the official quirk: the final [SEP] can be a target


def test_replacement_proportions_80_10_10(tokenizer) -> None:
    gen = TextMaskingGenerator(tokenizer, mask_prob=0.5, max_masks=12, rng=random.Random(2))
    special = set(tokenizer.all_special_ids)
    counts = {"mask": 0, "random": 0, "same": 0}
    for _ in range(600):
        for text in SENTENCES:
            ids = _encode(tokenizer, text)
            masked, pos, _ = gen(ids)
            for p in pos:
                if masked[p] == tokenizer.mask_token_id:
                    counts["mask"] += 1
                elif masked[p] == ids[p]:
                    counts["same"] += 1
                else:
                    counts["random"] += 1
                    assert masked[p] not in special  # random tokens exclude special tokens
    total = sum(counts.values())
    assert total > 10000
    assert counts["mask"] / total == pytest.approx(0.8, abs=0.02)
    assert counts["random"] / total == pytest.approx(0.1, abs=0.02)
    assert counts["same"] / total == pytest.approx(0.1, abs=0.02)


def test_whole_word_expansion_keeps_pieces_together(tokenizer) -> None:
    # Three two-piece words and no [SEP]: n = round(7 · 4/7) = 4 is always exactly two whole words,
    # so the final random subset never has to cut a word.
    pieces = ["[CLS]", "talk", "##er", "skate", "##boarding", "walk", "##ed"]
    ids = tokenizer.convert_tokens_to_ids(pieces)
    assert tokenizer.unk_token_id not in ids
    words = [{1, 2}, {3, 4}, {5, 6}]
    gen = TextMaskingGenerator(tokenizer, mask_prob=4 / 7, skipgram_prb=0.0, mask_whole_word=True, rng=random.Random(3))
    for _ in range(300):
        _, pos, _ = gen(ids)
        chosen = set(pos)
        assert len(chosen) == 4
        assert all(word <= chosen or not (word & chosen) for word in words)
    # Without whole-word masking the same setting splits words.
    gen = TextMaskingGenerator(
        tokenizer, mask_prob=4 / 7, skipgram_prb=0.0, mask_whole_word=False, rng=random.Random(3)
    )
    split = 0
    for _ in range(300):
        chosen = set(gen(ids)[1])
        split += any(word & chosen and not word <= chosen for word in words)
    assert split > 100


def test_skipgram_spans_are_contiguous(tokenizer) -> None:
    ids = _encode(tokenizer, "one two three four five six seven eight nine ten eleven twelve")
    assert len(ids) == 14  # single-piece words only

    def adjacent_fraction(skipgram_prb: float) -> float:
        gen = TextMaskingGenerator(
            tokenizer, mask_prob=0.15, skipgram_prb=skipgram_prb, mask_whole_word=False, rng=random.Random(4)
        )
        hits = 0
        for _ in range(400):
            pos = gen(ids)[1]  # n = 2
            hits += len(pos) == 2 and pos[1] - pos[0] == 1
        return hits / 400

    # With every start opening a 2..3-gram the pair is adjacent unless a 3-gram is cut to its two
    # ends (expected ≈ 0.8); independent single tokens are adjacent only by chance (≈ 2/13).
    assert adjacent_fraction(1.0) > 0.7
    assert adjacent_fraction(0.0) < 0.3


def _run(tokenizer, seed: int, ids: list[int], n: int) -> list:
    gen = TextMaskingGenerator(tokenizer, rng=random.Random(seed))
    return [gen(ids) for _ in range(n)]


def test_determinism(tokenizer) -> None:
    ids = _encode(tokenizer, SENTENCES[2], max_tokens=30)
    assert _run(tokenizer, 7, ids, 5) == _run(tokenizer, 7, ids, 5)
    assert _run(tokenizer, 8, ids, 5) != _run(tokenizer, 7, ids, 5)


def test_generator_validates_arguments(tokenizer) -> None:
    with pytest.raises(ValueError, match="mask_prob"):
        TextMaskingGenerator(tokenizer, mask_prob=0.0)
    with pytest.raises(ValueError, match="max_masks"):
        TextMaskingGenerator(tokenizer, max_masks=0)


def test_pad_masks() -> None:
    assert pad_masks([3, 5], [101, 202], 4) == ([3, 5, 0, 0], [101, 202, -100, -100])
    with pytest.raises(ValueError, match="exceed"):
        pad_masks([1, 2, 3], [1, 2, 3], 2)
    with pytest.raises(ValueError, match="labels"):
        pad_masks([1, 2], [1], 4)
