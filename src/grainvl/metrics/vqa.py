"""VQA accuracy: the official VQA v2 evaluation and VLUE's exact-match variant.

Official (GT-Vision-Lab/VQA master, ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
``VQAEval.evaluate``), per question, in this order:

1. Every GT answer and the predicted answer have ``\\n``/``\\t`` replaced by spaces and are stripped.
2. **Only if the cleaned GT answers are not all identical** (``len(set(gtAnswers)) > 1``), every GT
   answer and the prediction go through :func:`process_punctuation` then
   :func:`process_digit_article`. When all annotators agree, nothing is normalised (``"Yes"`` or
   ``"two"`` against ten ``"yes"``/``"2"`` scores 0): this is why yes/no and number questions,
   which are often unanimous, differ most from an always-normalising evaluator.
3. For each of the n annotators, leave that one out and score
   ``min(#other annotators giving the prediction / 3, 1)``; the question's accuracy is the mean of
   the n values (3 matching annotators of 10 give 0.9, not 1.0).
4. Overall, per answer type and per question type: ``round(100 * sum / count, 2)``.

``revision="xvlm"`` reproduces the older revision that X-VLM and VLUE ship as
``vqaTools/vqaEval.py`` (prediction always normalised, GT answers only punctuation-processed when
they disagree, never stripped); ``revision="normalized"`` always normalises both sides (our
corrected option). See docs/metrics.md.

VLUE's OOD file has one answer per question and VLUE's ``VQA.py::calculate_acc`` scores it by exact
string match after ``strip()``, over the questions that have a prediction (see
:func:`exact_match_accuracy`).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

# The official contraction table (Python 3 master: straight apostrophes). Keys are matched against
# whole lower-cased words after punctuation handling, so the capitalised keys ("Im", "Ive",
# "Id've", "I'dve") can never match; they are kept because they are the official table.
CONTRACTIONS: dict[str, str] = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at",
    "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've",
    "somebody'd": "somebodyd", "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's", "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've", "they'dve": "they'd've",
    "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas", "wasnt": "wasn't",
    "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's", "whered": "where'd",
    "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've", "who'dve": "who'd've",
    "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't", "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're", "youve": "you've",
}  # fmt: skip

# Number words 0-10 ("none" counts as 0); larger numbers are left as words.
MANUAL_MAP: dict[str, str] = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
    "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
ARTICLES = frozenset({"a", "an", "the"})

# Order matters only for the result's spacing; it is the official order. The apostrophe, colon and
# period are not in the list (the period has its own rule below).
PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")

# "(?!<=\d)" is a typo for a look-behind in the official code: as written it is a look-ahead that
# can never fail before a ".", so the rule is "drop every period not followed by a digit"
# ("1.5" stays, "5." and "a.b" lose theirs).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call is ``periodStrip.sub("", text, re.UNICODE)``: re.UNICODE (== 32) lands in the
# positional ``count`` argument, so at most 32 periods are removed. Kept for exact parity.
_PERIOD_STRIP_COUNT = 32
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")


def process_punctuation(text: str) -> str:
    """The official ``processPunctuation``.

    Each mark is deleted when it touches a space anywhere in the *input* (``"yes ?"``) or when the
    input contains a digit-comma-digit (``"1,000"`` → ``"1000"``: then every mark is deleted);
    otherwise it becomes a space (``"black/white"`` → ``"black white"``). Finally periods not
    followed by a digit are removed.
    """
    out = text
    has_digit_comma = _COMMA_BETWEEN_DIGITS.search(text) is not None
    for mark in PUNCTUATION:
        # The conditions look at the original text, not at ``out``: that is the official behaviour.
        if mark + " " in text or " " + mark in text or has_digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lower-case, split on whitespace, number words to digits,
    drop articles, expand apostrophe-less contractions ("dont" → "don't"), re-join with one space."""
    words = [MANUAL_MAP.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in ARTICLES]
    return " ".join(CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
    """A predicted answer as the official evaluation compares it (``resAns`` processing).

    ``"Two."`` → ``"2"``, ``"a dog"`` → ``"dog"``, ``"dont"`` → ``"don't"``, ``"yes."`` → ``"yes"``.
    """
    answer = answer.replace("\n", " ").replace("\t", " ").strip()
    return process_digit_article(process_punctuation(answer))


REVISIONS = ("official", "xvlm", "normalized")


def _clean(text: str) -> str:
    """``\\n`` and ``\\t`` to spaces, then strip: applied to every answer, on both sides, always."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def compared_answers(prediction: str, gt_answers: Sequence[str], revision: str = "official") -> tuple[str, list[str]]:
    """The prediction and the GT answers exactly as the chosen revision compares them.

    * ``"official"`` (GT-Vision-Lab master ``VQAEval.evaluate``, the evaluation server's number):
      both sides are cleaned (:func:`_clean`); then, **only when the cleaned GT answers are not all
      equal** (``len(set(gtAnswers)) > 1``), every GT answer *and* the prediction go through
      :func:`process_punctuation` then :func:`process_digit_article`. When the annotators agree,
      nothing is normalised: ``"Yes"`` or ``"two"`` against ten ``"yes"`` / ``"2"`` scores 0.
    * ``"xvlm"`` (the older revision that X-VLM / VLUE ship as ``vqaTools/vqaEval.py``): the
      prediction is always cleaned and fully normalised; the GT answers get only
      :func:`process_punctuation`, only when they disagree, and are never cleaned.
    * ``"normalized"`` (our corrected option): both sides always cleaned and fully normalised.
    """
    if revision not in REVISIONS:
        raise ValueError(f"revision should be one of {REVISIONS}, got {revision!r}")
    if revision == "xvlm":
        answers = list(gt_answers)
        if len(set(answers)) > 1:
            answers = [process_punctuation(a) for a in answers]
        return normalize_answer(prediction), answers
    pred, answers = _clean(prediction), [_clean(a) for a in gt_answers]
    if revision == "normalized" or len(set(answers)) > 1:
        pred = process_digit_article(process_punctuation(pred))
        answers = [process_digit_article(process_punctuation(a)) for a in answers]
    return pred, answers


def question_accuracy(
    prediction: str,
    gt_answers: Sequence[str],
    annotators: Sequence[Hashable] | None = None,
    revision: str = "official",
) -> float:
    """Official accuracy of one question, in [0, 1].

    Args:
        prediction: the raw predicted answer.
        gt_answers: the annotators' raw answers (usually 10).
        annotators: one identity per answer used to leave "this annotator" out. The official code
            removes every answer *record equal to* the left-out one (``item != gtAnsDatum`` on the
            ``{answer, answer_confidence, answer_id}`` dicts), which is one record when answer ids
            are unique. None means the list positions (always exactly one).
        revision: which evaluator's normalisation (:func:`compared_answers`); "official" by default.
    """
    if not gt_answers:
        raise ValueError("a question needs at least one ground-truth answer")
    pred, answers = compared_answers(prediction, gt_answers, revision)
    ids = list(range(len(answers))) if annotators is None else list(annotators)
    if len(ids) != len(answers):
        raise ValueError(f"{len(ids)} annotator ids for {len(answers)} answers")
    per_subset = []
    for left_out in ids:
        matches = sum(1 for a, who in zip(answers, ids) if who != left_out and a == pred)
        per_subset.append(min(1, float(matches) / 3))
    return float(sum(per_subset)) / len(per_subset)


def _check_same_questions(predictions: Mapping, truth: Mapping, what: str) -> None:
    missing, extra = set(truth) - set(predictions), set(predictions) - set(truth)
    if missing or extra:
        raise ValueError(
            f"predictions do not correspond to the {what}: {len(missing)} question(s) without a prediction "
            f"(e.g. {sorted(missing, key=str)[:3]}), {len(extra)} unknown question id(s) "
            f"(e.g. {sorted(extra, key=str)[:3]})"
        )


def vqa_accuracy(
    predictions: Mapping[Hashable, str],
    annotations: Mapping[Hashable, Sequence[str]],
    revision: str = "official",
    digits: int | None = 2,
) -> float:
    """Official VQA accuracy in percent over all annotated questions, rounded as ``VQAEval`` rounds
    (``round(100 * sum / n, 2)``; ``digits=None`` leaves it unrounded).

    Args:
        predictions: question id → predicted answer (raw model output).
        annotations: question id → the annotators' answers. The two key sets must be equal, as
            the official ``loadRes`` asserts; otherwise ValueError.
        revision: "official" (default), "xvlm" or "normalized" (:func:`compared_answers`).
    """
    _check_same_questions(predictions, annotations, "annotations")
    if not annotations:
        raise ValueError("no questions to score")
    accs = [question_accuracy(predictions[qid], answers, revision=revision) for qid, answers in annotations.items()]
    value = 100 * float(sum(accs)) / len(accs)
    return value if digits is None else round(value, digits)


@dataclass
class VQAEvalResult:
    """The official ``VQAEval.accuracy`` (percent, rounded to ``digits``) and per-question values (0-1)."""

    overall: float
    per_answer_type: dict[str, float] = field(default_factory=dict)
    per_question_type: dict[str, float] = field(default_factory=dict)
    per_question: dict[Hashable, float] = field(default_factory=dict)


def vqa_evaluate(
    predictions: Mapping[Hashable, str],
    answers: Mapping[Hashable, Sequence[str]],
    answer_types: Mapping[Hashable, str] | None = None,
    question_types: Mapping[Hashable, str] | None = None,
    annotators: Mapping[Hashable, Sequence[Hashable]] | None = None,
    digits: int = 2,
    revision: str = "official",
) -> VQAEvalResult:
    """The official ``VQAEval.evaluate`` with its breakdowns, rounded as the official ``n=2`` does.

    ``answers`` fixes the question order (the official order is the annotation file's); types and
    annotator ids are optional per-question extras (see :func:`question_accuracy`); ``revision``
    picks the normalisation (:func:`compared_answers`, "official" by default).
    """
    _check_same_questions(predictions, answers, "annotations")
    if not answers:
        raise ValueError("no questions to score")
    per_question: dict[Hashable, float] = {}
    by_answer_type: dict[str, list[float]] = {}
    by_question_type: dict[str, list[float]] = {}
    for qid, gt in answers.items():
        acc = question_accuracy(predictions[qid], gt, None if annotators is None else annotators[qid], revision)
        per_question[qid] = acc
        if answer_types is not None:
            by_answer_type.setdefault(answer_types[qid], []).append(acc)
        if question_types is not None:
            by_question_type.setdefault(question_types[qid], []).append(acc)

    def pct(values: Sequence[float]) -> float:
        return round(100 * float(sum(values)) / len(values), digits)

    return VQAEvalResult(
        overall=pct(list(per_question.values())),
        per_answer_type={k: pct(v) for k, v in by_answer_type.items()},
        per_question_type={k: pct(v) for k, v in by_question_type.items()},
        per_question=per_question,
    )


def exact_match_accuracy(
    predictions: Mapping[Hashable, str], answers: Mapping[Hashable, str], normalize: bool = False
) -> float:
    """VLUE's OOD VQA accuracy in percent: ``pred.strip() == answer.strip()``.

    As VLUE's ``calculate_acc`` does, the denominator is the number of *predictions* (a question
    without a prediction is not counted), and a prediction for an unknown question is an error
    (ValueError; the official code stops on a KeyError). ``normalize=True`` compares
    :func:`normalize_answer` of both sides instead, a more forgiving proxy that is not VLUE's number.
    """
    unknown = [qid for qid in predictions if qid not in answers]
    if unknown:
        raise ValueError(f"{len(unknown)} prediction(s) for unknown question ids, e.g. {unknown[:3]}")
    if not predictions:
        raise ValueError("no predictions to score")
    norm = normalize_answer if normalize else str.strip
    correct = sum(1 for qid, pred in predictions.items() if norm(pred) == norm(answers[qid]))
    return 100.0 * correct / len(predictions)
