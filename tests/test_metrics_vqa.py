"""VQA accuracy against the official rules (vqaEval.py), on hand-made cases worked out by hand."""

from __future__ import annotations

import pytest

from grainvl.metrics.vqa import (
    exact_match_accuracy,
    normalize_answer,
    process_punctuation,
    question_accuracy,
    vqa_accuracy,
    vqa_evaluate,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("two", "2"),  # number words 0-10
        ("Two", "2"),  # lower-cased first
        ("ten dogs", "10 dogs"),
        ("twenty", "twenty"),  # only zero..ten are mapped
        ("none", "0"),
        ("a dog", "dog"),  # articles dropped
        ("the two dogs", "2 dogs"),
        ("an apple", "apple"),
        ("a", ""),
        ("dont", "don't"),  # apostrophe-less contractions expanded
        ("isnt it", "isn't it"),
        ("don't", "don't"),  # the apostrophe is not a punctuation mark here
        ("Im", "im"),  # the table's capitalised keys never match lower-cased words
        ("yes.", "yes"),  # a period not followed by a digit goes
        ("Yes!", "yes"),  # "!" becomes a space, then split() drops it
        ("yes ?", "yes"),  # a mark next to a space is deleted
        ("3.5", "3.5"),  # a period before a digit stays
        ("5.", "5"),
        ("mr.t", "mrt"),
        ("red, blue", "red blue"),  # ", " touches a space: deleted
        ("red,blue", "red blue"),  # no space: replaced by a space
        ("1,000", "1000"),  # digit-comma-digit: every mark is deleted ...
        ("1,000 (about)", "1000 about"),  # ... including the parentheses
        ("black/white", "black white"),
        ("t-shirt", "t shirt"),
        ("50 %", "50 %"),  # "%" is not in the list
        ("  yes\n", "yes"),  # newlines/tabs to spaces, stripped
        ("yes\tsir", "yes sir"),
        ("it's", "it's"),
    ],
)
def test_normalize_answer_official_rules(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_period_strip_stops_after_32() -> None:
    # The official call passes re.UNICODE (32) as the count of re.sub: only 32 periods go.
    assert process_punctuation("a" + "." * 40) == "a" + "." * 8


def test_punctuation_conditions_look_at_the_input() -> None:
    # "?" touches a space in the input, so it is deleted even where it does not touch one.
    assert process_punctuation("why? why?x") == "why whyx"
    # "/" never touches a space: replaced by a space.
    assert process_punctuation("a/b") == "a b"


@pytest.mark.parametrize(
    ("n_matching", "expected"),
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (10, 1.0)],
)
def test_leave_one_out_accuracy(n_matching: int, expected: float) -> None:
    # 10 annotators; leaving out a matching one leaves n-1 matches, a non-matching one n.
    # 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9; 1 match: (1 * 0 + 9 * 1/3) / 10 = 0.3.
    answers = ["2"] * n_matching + ["3"] * (10 - n_matching)
    assert question_accuracy("two", answers) == pytest.approx(expected)


def test_ground_truth_is_only_punctuation_processed_and_only_on_disagreement() -> None:
    # Official: GT answers are never lower-cased / digit-mapped ...
    assert question_accuracy("yes", ["Yes"] * 10) == 0.0
    assert question_accuracy("two", ["two"] * 5 + ["2"] * 5) == 1.0  # only the "2"s match
    # ... and get processPunctuation only when the annotators disagree.
    assert question_accuracy("yes.", ["yes."] * 10) == 0.0  # all equal: "yes." stays, prediction is "yes"
    assert question_accuracy("yes.", ["yes."] * 9 + ["no"]) == 1.0  # "yes." -> "yes"


def test_annotator_identity_follows_record_equality() -> None:
    # Two identical answer records (same answer id) are left out together, as the official
    # ``item != gtAnsDatum`` comparison does: leaving one out leaves 1 match, not 2.
    answers = ["yes", "yes", "yes", "no"]
    by_position = question_accuracy("yes", answers)
    assert by_position == pytest.approx((3 * (2 / 3) + 1) / 4)
    ids = [("yes", 1), ("yes", 1), ("yes", 2), ("no", 3)]
    assert question_accuracy("yes", answers, ids) == pytest.approx((2 * (1 / 3) + 2 / 3 + 1) / 4)


def test_vqa_accuracy_and_breakdown() -> None:
    annotations = {1: ["2"] * 10, 2: ["dog"] * 3 + ["cat"] * 7, 3: ["yes"] * 10}
    predictions = {1: "two", 2: "a dog", 3: "no"}
    assert vqa_accuracy(predictions, annotations) == pytest.approx(100 * (1 + 0.9 + 0) / 3)
    result = vqa_evaluate(
        predictions,
        annotations,
        answer_types={1: "number", 2: "other", 3: "yes/no"},
        question_types={1: "how many", 2: "what is", 3: "is the"},
    )
    assert result.overall == 63.33  # round(100 * 1.9 / 3, 2)
    assert result.per_answer_type == {"number": 100.0, "other": 90.0, "yes/no": 0.0}
    assert result.per_question_type["what is"] == 90.0
    assert result.per_question == {1: 1.0, 2: pytest.approx(0.9), 3: 0.0}


def test_vqa_accuracy_needs_the_same_questions() -> None:
    with pytest.raises(ValueError, match="1 question"):
        vqa_accuracy({1: "yes"}, {1: ["yes"], 2: ["no"]})
    with pytest.raises(ValueError, match="unknown question"):
        vqa_accuracy({1: "yes", 3: "no"}, {1: ["yes"]})


def test_exact_match_is_vlue_calculate_acc() -> None:
    answers = {1: "yes", 2: "2", 3: "red ", 4: "dog"}
    # strip() only: case and number words count; question 4 has no prediction and is not counted.
    predictions = {1: " yes", 2: "two", 3: "red"}
    assert exact_match_accuracy(predictions, answers) == pytest.approx(200 / 3)
    assert exact_match_accuracy({1: "Yes"}, answers) == 0.0
    assert exact_match_accuracy(predictions, answers, normalize=True) == 100.0  # the forgiving proxy
    with pytest.raises(ValueError, match="unknown question"):
        exact_match_accuracy({9: "yes"}, answers)
