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
    [(0, 0.0), (1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0), (9, 1.0)],
)
def test_leave_one_out_accuracy(n_matching: int, expected: float) -> None:
    # Branch: min(1, matches / 3) averaged over the 10 leave-one-out subsets. The GT answers
    # disagree ("2" and "3"), so both sides are normalised and "two" becomes "2".
    # 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9; 1 match: (1 * 0 + 9 * 1/3) / 10 = 0.3.
    answers = ["2"] * n_matching + ["3"] * (10 - n_matching)
    assert question_accuracy("two", answers) == pytest.approx(expected)


def test_unanimous_ground_truth_means_no_normalisation() -> None:
    # Branch: len(set(gtAnswers)) == 1 -> neither side is punctuation/digit/article processed.
    assert question_accuracy("yes", ["yes"] * 10) == 1.0
    assert question_accuracy("Yes", ["yes"] * 10) == 0.0  # not lower-cased
    assert question_accuracy("yes.", ["yes"] * 10) == 0.0  # period kept
    assert question_accuracy("two", ["2"] * 10) == 0.0  # number word kept
    assert question_accuracy("a dog", ["dog"] * 10) == 0.0  # article kept
    assert question_accuracy("yes", ["Yes"] * 10) == 0.0
    assert question_accuracy("Yes", ["Yes"] * 10) == 1.0
    # A single annotator is unanimous too, and leaving it out leaves no match: 0 either way.
    assert question_accuracy("yes", ["yes"]) == 0.0


def test_disagreeing_ground_truth_normalises_both_sides() -> None:
    # Branch: len(set(gtAnswers)) > 1 -> processPunctuation + processDigitArticle on every GT
    # answer and on the prediction. 9 "yes" + 1 "no": every subset keeps >= 8 matches -> 1.0.
    assert question_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert question_accuracy("yes.", ["yes."] * 9 + ["no"]) == 1.0
    # GT "Two" / "two" / "2" all become "2" (digit map after lower-casing): 5 matches -> 1.0.
    assert question_accuracy("2", ["Two"] * 3 + ["2"] * 2 + ["3"] * 5) == 1.0
    # GT "the dog" -> "dog", prediction "A Dog!" -> "dog": 3 matches of 10 -> 0.9.
    assert question_accuracy("A Dog!", ["the dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # Contractions expand on both sides: "dont" -> "don't".
    assert question_accuracy("dont", ["dont"] * 4 + ["no"] * 6) == 1.0


def test_newlines_tabs_and_spaces_are_always_cleaned_first() -> None:
    # Branch: replace("\n", " "), replace("\t", " "), strip() on both sides, before the set test.
    assert question_accuracy(" yes\n", ["yes"] * 10) == 1.0
    assert question_accuracy("yes", [" yes", "yes\t"] * 5) == 1.0  # cleaned GT is unanimous ...
    assert question_accuracy("Yes", [" yes", "yes\t"] * 5) == 0.0  # ... so "Yes" is not lower-cased
    # An inner tab becomes a space: "red\tcar" -> "red car".
    assert question_accuracy("red\tcar", ["red car"] * 10) == 1.0


def test_other_revisions() -> None:
    # "xvlm" (X-VLM's vqaTools copy): the prediction is always normalised, the GT only
    # punctuation-processed on disagreement and never lower-cased / digit-mapped / stripped.
    assert question_accuracy("Yes", ["yes"] * 10, revision="xvlm") == 1.0
    assert question_accuracy("two", ["2"] * 10, revision="xvlm") == 1.0
    assert question_accuracy("yes", ["Yes"] * 10, revision="xvlm") == 0.0
    assert question_accuracy("two", ["two"] * 5 + ["2"] * 5, revision="xvlm") == 1.0  # only the "2"s match
    assert question_accuracy("yes.", ["yes."] * 10, revision="xvlm") == 0.0  # GT keeps its period
    assert question_accuracy("yes", [" yes"] * 10, revision="xvlm") == 0.0  # GT never stripped
    # "normalized": both sides always fully normalised.
    assert question_accuracy("yes", ["Yes"] * 10, revision="normalized") == 1.0
    assert question_accuracy("Two.", ["2"] * 10, revision="normalized") == 1.0
    with pytest.raises(ValueError, match="revision"):
        question_accuracy("yes", ["yes"], revision="lenient")


def test_annotator_identity_follows_record_equality() -> None:
    # Two identical answer records (same answer id) are left out together, as the official
    # ``item != gtAnsDatum`` comparison does: leaving one out leaves 1 match, not 2.
    answers = ["yes", "yes", "yes", "no"]
    by_position = question_accuracy("yes", answers)
    assert by_position == pytest.approx((3 * (2 / 3) + 1) / 4)
    ids = [("yes", 1), ("yes", 1), ("yes", 2), ("no", 3)]
    assert question_accuracy("yes", answers, ids) == pytest.approx((2 * (1 / 3) + 2 / 3 + 1) / 4)


def test_vqa_accuracy_and_breakdown() -> None:
    annotations = {
        1: ["2"] * 10,  # unanimous: "two" is not mapped -> 0
        2: ["dog"] * 3 + ["cat"] * 7,  # "a dog" -> "dog": 0.9
        3: ["yes"] * 10,  # "no" -> 0
        4: ["2"] * 9 + ["3"],  # disagree: "two" -> "2": 1.0
    }
    predictions = {1: "two", 2: "a dog", 3: "no", 4: "two"}
    # round(100 * 1.9 / 4, 2) = 47.5
    assert vqa_accuracy(predictions, annotations) == 47.5
    assert vqa_accuracy(predictions, annotations, revision="xvlm") == 72.5  # round(100 * 2.9 / 4, 2)
    result = vqa_evaluate(
        predictions,
        annotations,
        answer_types={1: "number", 2: "other", 3: "yes/no", 4: "number"},
        question_types={1: "how many", 2: "what is", 3: "is the", 4: "how many"},
    )
    assert result.overall == 47.5
    assert result.per_answer_type == {"number": 50.0, "other": 90.0, "yes/no": 0.0}
    assert list(result.per_answer_type) == ["number", "other", "yes/no"]  # first-appearance order
    assert result.per_question_type == {"how many": 50.0, "what is": 90.0, "is the": 0.0}
    assert result.per_question == {1: 0.0, 2: pytest.approx(0.9), 3: 0.0, 4: 1.0}


def test_rounding_is_round_of_100_times_mean() -> None:
    # 100 * (0.9 + 0 + 0) / 3 = 30.000000000000004 -> 30.0; 100 * 1.9 / 3 = 63.333... -> 63.33.
    gt = {1: ["dog"] * 3 + ["cat"] * 7, 2: ["yes"] * 10, 3: ["yes"] * 10}
    assert vqa_accuracy({1: "dog", 2: "no", 3: "no"}, gt) == 30.0
    assert vqa_accuracy({1: "dog", 2: "yes", 3: "no"}, gt) == 63.33
    assert vqa_accuracy({1: "dog", 2: "yes", 3: "no"}, gt, digits=None) == pytest.approx(190 / 3)
    assert vqa_evaluate({1: "dog", 2: "yes", 3: "no"}, gt, digits=1).overall == 63.3


def test_vqa_accuracy_needs_the_same_questions() -> None:
    # Branch: the official loadRes asserts the result ids are the annotation ids.
    with pytest.raises(ValueError, match="1 question"):
        vqa_accuracy({1: "yes"}, {1: ["yes"], 2: ["no"]})
    with pytest.raises(ValueError, match="unknown question"):
        vqa_accuracy({1: "yes", 3: "no"}, {1: ["yes"]})
    with pytest.raises(ValueError, match="1 question"):
        vqa_evaluate({1: "yes"}, {1: ["yes"], 2: ["no"]})


def test_exact_match_is_vlue_calculate_acc() -> None:
    answers = {1: "yes", 2: "2", 3: "red ", 4: "dog"}
    # strip() only: case and number words count; question 4 has no prediction and is not counted.
    predictions = {1: " yes", 2: "two", 3: "red"}
    assert exact_match_accuracy(predictions, answers) == pytest.approx(200 / 3)
    assert exact_match_accuracy({1: "Yes"}, answers) == 0.0
    assert exact_match_accuracy(predictions, answers, normalize=True) == 100.0  # the forgiving proxy
    with pytest.raises(ValueError, match="unknown question"):
        exact_match_accuracy({9: "yes"}, answers)
