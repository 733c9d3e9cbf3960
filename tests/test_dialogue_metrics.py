"""Dialogue metric formulas against hand-computed cases and reference implementations (sacreBLEU, pycocoevalcap)."""

from __future__ import annotations

import math

import pytest

from grainvl.metrics.dialogue import (
    bleu,
    c_score,
    distinct_n,
    fact_scores,
    follows_up,
    hits_at_1,
    normalize_answer,
    oracle_consistency,
    perplexity,
    rouge_l,
    unigram_f1,
)

HYPS = ["i have a dog named max .", "my cat likes the sun", "i work at the library all day", "hello there"]
REFS = [
    ["i have a dog , his name is max .", "max is my dog"],
    ["the cat sleeps in the sun all day"],
    ["i work at a library"],
    ["hi there , how are you ?"],
]


def test_normalize_answer_is_parlai():
    # punctuation becomes a space (so "don't" -> "don t"), articles go, case folds
    assert normalize_answer("The Dog, an APPLE and a cat don't!") == "dog apple and cat don t"


def test_unigram_f1_hand_computed():
    # guess tokens: [cat, sat, cat]; gold: [cat, sat, on, mat] -> overlap multiset {cat, sat} = 2
    # precision 2/3, recall 2/4 -> F1 = 2 * (2/3) * (1/2) / (2/3 + 1/2) = 4/7
    assert unigram_f1("The cat sat, cat.", ["a cat sat on the mat"]) == pytest.approx(4 / 7)
    assert unigram_f1("nothing shared", ["cat"]) == 0.0
    assert unigram_f1("cat", ["dog", "the cat"]) == 1.0  # best reference wins


def test_distinct_n_hand_computed():
    responses = ["i like cats", "i like dogs"]
    assert distinct_n(responses, 1) == pytest.approx(4 / 6)  # i, like, cats, dogs over 6 tokens
    assert distinct_n(responses, 2) == pytest.approx(3 / 4)  # (i like) twice, (like cats), (like dogs)
    assert distinct_n([""], 2) == 0.0


def test_bleu_matches_sacrebleu():
    sacrebleu = pytest.importorskip("sacrebleu")
    for order in (1, 2, 4):
        scorer = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none", max_ngram_order=order, force=True)
        # sacreBLEU takes reference *streams*: the k-th reference of every sentence (padded by repetition)
        refs = [[normalize_answer(r[min(k, len(r) - 1)]) for r in REFS] for k in range(2)]
        expected = scorer.corpus_score([normalize_answer(h) for h in HYPS], refs).score / 100
        assert bleu(HYPS, REFS, order) == pytest.approx(expected, abs=1e-9), order


def test_bleu_hand_computed_and_zero():
    # hyp "cat sat" vs ref "cat sat down": p1 = 2/2, p2 = 1/1, BP = exp(1 - 3/2)
    assert bleu(["cat sat"], [["cat sat down"]], 2) == pytest.approx(math.exp(1 - 1.5))
    assert bleu(["dog"], [["cat"]], 1) == 0.0


def test_rouge_l_matches_pycocoevalcap():
    rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")
    scorer = rouge.Rouge()
    expected = [
        scorer.calc_score([normalize_answer(h)], [normalize_answer(r) for r in refs]) for h, refs in zip(HYPS, REFS)
    ]
    assert rouge_l(HYPS, REFS) == pytest.approx(sum(expected) / len(expected))


def test_fact_scores_micro():
    predicted = [{"a", "b"}, set(), {"c"}]
    gold = [{"a"}, {"d"}, {"c", "e"}]
    # hits 2 (a, c); predicted 3; gold 4 -> P 2/3, R 1/2, F1 4/7
    scores = fact_scores(predicted, gold)
    assert scores["fact_precision"] == pytest.approx(2 / 3)
    assert scores["fact_recall"] == pytest.approx(1 / 2)
    assert scores["fact_f1"] == pytest.approx(4 / 7)
    assert fact_scores([set()], [set()]) == {"fact_precision": 0.0, "fact_recall": 0.0, "fact_f1": 0.0}


def test_c_score_hand_computed():
    # response 1: entail + neutral + contradict = 0; response 2: entail + entail = 2 -> mean 1
    assert c_score([["entail", "neutral", "contradict"], ["entail", "entail"]]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown NLI label"):
        c_score([["maybe"]])


def test_hits_at_1_and_perplexity():
    assert hits_at_1([[0.1, 0.9], [0.5, 0.5], [2.0, 1.0]], [1, 1, 0]) == pytest.approx(2 / 3)  # a tie is a miss
    assert perplexity(2 * math.log(4.0), 2) == pytest.approx(4.0)


def test_oracle_and_follow_up():
    hints = {
        "i have a cat.": ["my cat knocked a glass"],
        "i have a dog.": ["max barked"],
        "i like jazz.": ["saxophone"],
    }
    clashes = {"i have a dog.": ["i have a cat."], "i have a cat.": ["i have a dog."]}
    gold = {"i have a cat."}
    assert oracle_consistency("oh , my cat knocked a glass over", gold, hints, clashes) == 1
    assert oracle_consistency("max barked all night", gold, hints, clashes) == -1  # clashes with the gold cat
    assert oracle_consistency("i heard a saxophone", gold, hints, clashes) == 0  # not gold, no clash
    follow_ups = {"i have a cat.": ["how is your cat"]}
    assert follows_up("nice ! how is your cat ?", gold, follow_ups)
    assert not follows_up("how is your cat ?", {"i have a dog."}, follow_ups)  # not the partner's fact
