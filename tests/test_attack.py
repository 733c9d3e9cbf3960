"""TextFooler-style attack on crafted keyword classifiers: expected substitutions, budget, constraints."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import pytest

from grainvl.compress.attack import (
    AttackConfig,
    SentenceSimilarity,
    WordSubstitutionAttack,
    summarize,
    world_synonym_table,
)
from grainvl.data.world.ontology import COLORS, SHAPES, SIZES, TEXTURES


class KeywordClassifier:
    """p(label 1) = sigmoid(3·#keywords − 1.5): label 1 iff some keyword occurs (exact, lower-case word).

    For a pair it reads only the second text, so the attack of the hypothesis alone decides."""

    def __init__(self, keywords: set[str]) -> None:
        self.keywords = keywords
        self.calls = 0

    def predict_proba(self, inputs: Sequence[str | tuple[str, str]]) -> np.ndarray:
        out = []
        for x in inputs:
            text = x[1] if isinstance(x, tuple) else x
            self.calls += 1
            hits = sum(w in self.keywords for w in re.findall(r"[a-z'-]+", text.lower()))
            p1 = 1.0 / (1.0 + math.exp(-(3.0 * hits - 1.5)))
            out.append([1.0 - p1, p1])
        return np.array(out)


def _attack(keywords: set[str], **cfg: object) -> WordSubstitutionAttack:
    return WordSubstitutionAttack(KeywordClassifier(keywords), cfg=AttackConfig(use_similarity=False, **cfg))


def test_single_substitution_flips_the_label() -> None:
    result = _attack({"red"}).attack("A red circle is visible.", 1)
    assert result.success and result.final_prediction == 0
    assert result.changed == [("red", "crimson")]  # the first synonym of the most important word
    assert result.adversarial == "A crimson circle is visible."  # punctuation and case kept


def test_budget_limits_the_number_of_changed_words() -> None:
    text = "a large red circle"  # 4 words; both keywords must go to flip the label
    tight = _attack({"large", "red"}, max_change_fraction=0.25).attack(text, 1)  # budget 1 word
    assert not tight.success and len(tight.changed) == 1 and tight.final_prediction == 1
    loose = _attack({"large", "red"}, max_change_fraction=0.5).attack(text, 1)  # budget 2 words
    assert loose.success and loose.changed == [("large", "big"), ("red", "crimson")]
    assert loose.adversarial == "a big crimson circle"


def test_stop_words_are_never_substituted() -> None:
    table = {"the": ("DET", ("a",)), "red": ("ADJ", ("crimson",))}
    attack = WordSubstitutionAttack(KeywordClassifier({"the"}), table, cfg=AttackConfig(use_similarity=False))
    result = attack.attack("the red circle", 1)
    assert not result.success and all(word != "the" for word, _ in result.changed)


def test_pos_constraint_filters_substitutes_of_another_class() -> None:
    table = {"red": ("ADJ", ("circle", "crimson")), "circle": ("NOUN", ("disc",))}
    attack = WordSubstitutionAttack(KeywordClassifier({"red"}), table, cfg=AttackConfig(use_similarity=False))
    assert attack._candidates("red") == ["crimson"]  # "circle" is a noun
    attack.cfg.use_pos = False
    assert attack._candidates("Red") == ["Circle", "Crimson"]


def test_similarity_constraint_rejects_low_similarity_candidates() -> None:
    def similarity(originals: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        return np.array([0.0 if "crimson" in c else 0.9 for c in candidates])

    attack = WordSubstitutionAttack(KeywordClassifier({"red"}), similarity=similarity, cfg=AttackConfig())
    result = attack.attack("a red circle", 1)
    assert result.changed == [("red", "scarlet")]


def test_pairs_attack_the_second_text_and_wrong_examples_are_skipped() -> None:
    attack = _attack({"red"})
    pair = ("the premise mentions red", "the object is red")
    result = attack.attack(pair, 1)
    assert result.success and result.adversarial == ("the premise mentions red", "the object is crimson")
    # "red" stays in the premise: only the hypothesis was attacked
    skipped = attack.attack("a blue square", 1)  # predicted 0: wrong, not attacked
    assert skipped.skipped and not skipped.success and skipped.queries == 1
    summary = summarize([result, skipped])
    assert (summary.original_accuracy, summary.accuracy_under_attack, summary.attack_success_rate) == (0.5, 0.0, 1.0)


def test_run_reports_success_rate_over_originally_correct_examples() -> None:
    attack = _attack({"red", "large"}, max_change_fraction=0.34)
    summary, results = attack.run(["a red circle", "a large red circle", "a blue square"], [1, 1, 0])
    # 1: flipped; 2: budget 1 of 4 words, not flipped; 3: correct (0) but no keyword to remove -> survives
    assert [r.success for r in results] == [True, False, False]
    assert summary.original_accuracy == 1.0
    assert summary.attack_success_rate == pytest.approx(1 / 3)
    assert summary.accuracy_under_attack == pytest.approx(2 / 3)


def test_synonym_table_covers_the_world_vocabulary() -> None:
    table = world_synonym_table()
    for word in (*COLORS, *SHAPES, *SIZES, *TEXTURES):
        assert table[word][1], word
    assert table["circles"] == ("NOUN", ("discs", "disks", "rounds", "rings"))


@pytest.mark.slow
def test_minilm_similarity_prefers_synonyms() -> None:
    sim = SentenceSimilarity()
    scores = sim(["a small red circle"] * 2, ["a small crimson circle", "the weather is cold today"])
    assert 0.0 <= scores[1] < scores[0] <= 1.0
    assert sim(["a red circle"], ["a red circle"])[0] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.slow
def test_vision_language_text_side_adapter_for_nlvr_and_itm() -> None:
    import torch

    from grainvl.compress.attack import ImageTextClassifier, itm_logits_fn
    from grainvl.compress.loyalty import evaluate_loyalty
    from grainvl.compress.quantize import quantize_dynamic_int8
    from grainvl.models.factory import create_model, get_tokenizer
    from grainvl.tasks.nlvr import NLVRModule

    torch.manual_seed(0)
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    tokenizer = get_tokenizer("xvlm-tiny")
    res = model.config.vision.resolution
    module = NLVRModule(model).eval()
    pairs = {k: torch.randn(2, 3, res, res) for k in ("a", "b")}
    nlvr = ImageTextClassifier(module.logits, pairs, tokenizer)
    inputs = [("a", "the left image has a red circle"), ("b", "a small blue square is visible")]
    probs = nlvr.predict_proba(inputs)
    tokens = tokenizer([t for _, t in inputs], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = module.logits(torch.stack([pairs["a"], pairs["b"]]), tokens["input_ids"], tokens["attention_mask"])
    np.testing.assert_allclose(probs, ref.softmax(-1).numpy(), atol=1e-5)

    images = {k: torch.randn(3, res, res) for k in ("a", "b")}
    teacher = ImageTextClassifier(itm_logits_fn(model), images, tokenizer)
    student = ImageTextClassifier(itm_logits_fn(quantize_dynamic_int8(model)), images, tokenizer)
    report = evaluate_loyalty(teacher, student, inputs)
    assert 0.9 < report.probability_loyalty <= 1.0  # int8 stays close to its fp32 teacher
    labels = teacher.predict_proba(inputs).argmax(-1).tolist()  # attack the model's own predictions
    attack = WordSubstitutionAttack(teacher, cfg=AttackConfig(use_similarity=False, max_change_fraction=0.5))
    summary, results = attack.run(inputs, labels)
    assert summary.original_accuracy == 1.0
    for result in results:
        assert result.adversarial[0] == result.original[0]  # the image key never changes
        assert len(result.changed) <= max(1, int(0.5 * result.num_words))


@pytest.mark.slow
@pytest.mark.parametrize("head", ["decoder", "classifier"])
def test_vqa_adapter_scores_the_closed_answer_list(head: str) -> None:
    import torch

    from grainvl.compress.attack import ImageTextClassifier, vqa_logits_fn
    from grainvl.models.factory import create_model, get_tokenizer
    from grainvl.tasks.vqa import VQAModule

    torch.manual_seed(0)
    model = create_model("xvlm-tiny", init_unimodal=False).eval()
    tokenizer = get_tokenizer("xvlm-tiny")
    answers = ["red", "blue", "two", "circle"]
    module = VQAModule(model, answers, tokenizer, head=head, k_test=len(answers)).eval()
    res = model.config.vision.resolution
    images = {k: torch.randn(3, res, res) for k in ("a", "b")}
    inputs = [("a", "what color is the circle?"), ("b", "how many objects are there?")]
    probs = ImageTextClassifier(vqa_logits_fn(module), images, tokenizer).predict_proba(inputs)
    assert probs.shape == (2, 4) and np.allclose(probs.sum(-1), 1.0, atol=1e-5)
    tokens = tokenizer([q for _, q in inputs], padding=True, return_tensors="pt")
    predicted = module.predict(torch.stack([images["a"], images["b"]]), tokens["input_ids"], tokens["attention_mask"])
    assert [answers[i] for i in probs.argmax(-1)] == predicted
