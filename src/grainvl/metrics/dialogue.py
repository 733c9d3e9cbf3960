"""Dialogue metrics: ParlAI's unigram F1, BLEU-n, ROUGE-L, Distinct-n, Hits@1, perplexity, persona scores.

Pure functions on strings and numbers, no model code.

* :func:`normalize_answer` is ParlAI's: lower case, punctuation replaced by spaces, the articles
  a/an/the dropped, whitespace collapsed. Every word-level metric here reads text through it.
* :func:`unigram_f1` is ParlAI's ``F1Metric``: precision/recall over token *multisets*
  (``_prec_recall_f1_score``), the best over several references.
* :func:`bleu` is corpus BLEU (Papineni et al.): clipped n-gram precisions pooled over the corpus,
  geometric mean of orders 1..n with equal weights, brevity penalty from the closest reference
  length, no smoothing -- sacreBLEU's number with ``tokenize="none"`` on normalised text (tested),
  as a fraction.
* :func:`rouge_l` is pycocoevalcap's ROUGE-L (LCS F-measure with beta = 1.2), averaged over
  sentences (tested against it).
* :func:`distinct_n` is Li et al. (2016): distinct n-grams / all n-grams over every response.
* :func:`fact_scores` is micro precision/recall/F1 of predicted persona facts against gold facts.
* :func:`c_score` is Madotto et al. (2019): ``C(u) = sum_j NLI(u, p_j)`` with +1 entail, 0 neutral,
  -1 contradict, averaged over responses.
* :func:`oracle_consistency` and :func:`follows_up` are exact world readings: a response that uses
  an implicit hint of a gold fact scores +1, a hint of a fact that clashes with one -1; a response
  follows up when it holds one of the follow-up phrases of a fact of the partner's persona.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence

_PUNCTUATION = re.compile(r"[!\"#$%&()*+,\-./:;<=>?@\[\]\\^`{|}~_']")  # ParlAI's re_punc
_ARTICLES = re.compile(r"\b(a|an|the)\b")
NLI_SCORES: dict[str, int] = {"entail": 1, "neutral": 0, "contradict": -1}


# ---------------------------------------------------------------------------------------------- text overlap
def normalize_answer(text: str) -> str:
    """ParlAI's normalisation: lower case, punctuation -> space, drop a/an/the, collapse whitespace."""
    text = _PUNCTUATION.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def precision_recall_f1(predicted: Sequence[str], gold: Sequence[str]) -> tuple[float, float, float]:
    """ParlAI's ``_prec_recall_f1_score``: overlap of the two token multisets; all zeros without overlap."""
    same = sum((Counter(gold) & Counter(predicted)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(predicted), same / len(gold)
    return precision, recall, 2 * precision * recall / (precision + recall)


def unigram_f1(guess: str, answers: Sequence[str]) -> float:
    """ParlAI's ``F1Metric.compute``: the best unigram F1 of ``guess`` against any answer (normalised tokens)."""
    tokens = normalize_answer(guess).split()
    return max((precision_recall_f1(tokens, normalize_answer(a).split())[2] for a in answers), default=0.0)


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu(hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_order: int = 2) -> float:
    """Corpus BLEU-``max_order`` (a fraction) of normalised hypotheses against one or more references each.

    Each order's clipped matches and totals are summed over the corpus before dividing (so one short
    sentence cannot zero the score); 0.0 when some order has no match (no smoothing, as sacreBLEU's
    ``smooth_method="none"``). The brevity penalty uses, per sentence, the reference length closest
    to the hypothesis length (the shorter one on ties).
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    matches, totals = [0] * max_order, [0] * max_order
    hyp_length = ref_length = 0
    for hypothesis, refs in zip(hypotheses, references):
        hyp = normalize_answer(hypothesis).split()
        ref_tokens = [normalize_answer(r).split() for r in refs]
        hyp_length += len(hyp)
        ref_length += min((len(r) for r in ref_tokens), key=lambda n: (abs(n - len(hyp)), n))
        for n in range(1, max_order + 1):
            counts = _ngrams(hyp, n)
            best: Counter[tuple[str, ...]] = Counter()
            for r in ref_tokens:
                best |= _ngrams(r, n)  # max count of each n-gram over the references (clipping)
            matches[n - 1] += sum((counts & best).values())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    if hyp_length == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_order
    brevity = 1.0 if hyp_length > ref_length else math.exp(1 - ref_length / hyp_length)
    return brevity * math.exp(log_precision)


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)  # dynamic programme over b, one row at a time
    for x in a:
        previous_diagonal = 0
        for j, y in enumerate(b, start=1):
            previous_diagonal, row[j] = row[j], previous_diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean over sentences of pycocoevalcap's ROUGE-L: LCS precision and recall, each the best over the
    references, combined as ``(1 + beta^2) P R / (R + beta^2 P)``; normalised tokens."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    scores = []
    for hypothesis, refs in zip(hypotheses, references):
        hyp = normalize_answer(hypothesis).split()
        lcs = [_lcs_length(hyp, normalize_answer(r).split()) for r in refs]
        precision = max((n / len(hyp) if hyp else 0.0 for n in lcs), default=0.0)
        recall = max((n / len(normalize_answer(r).split() or [""]) for n, r in zip(lcs, refs)), default=0.0)
        denominator = recall + beta**2 * precision
        scores.append((1 + beta**2) * precision * recall / denominator if denominator else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def distinct_n(responses: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): distinct n-grams over all n-grams of every response (normalised tokens)."""
    grams: Counter[tuple[str, ...]] = Counter()
    for response in responses:
        grams.update(_ngrams(normalize_answer(response).split(), n))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


# ---------------------------------------------------------------------------------------------- ranking, likelihood
def hits_at_1(scores: Sequence[Sequence[float]], gold: Sequence[int]) -> float:
    """Share of rows whose highest score is the gold candidate's (ties count against it)."""
    if len(scores) != len(gold):
        raise ValueError(f"{len(scores)} score rows but {len(gold)} gold indices")
    hits = 0
    for row, g in zip(scores, gold):
        best_other = max((s for i, s in enumerate(row) if i != g), default=-math.inf)
        hits += row[g] > best_other
    return hits / len(gold) if gold else 0.0


def perplexity(total_nll: float, total_tokens: int) -> float:
    """exp(mean negative log-likelihood per target token) of a corpus."""
    if total_tokens <= 0:
        raise ValueError("perplexity needs at least one target token")
    return math.exp(total_nll / total_tokens)


# ---------------------------------------------------------------------------------------------- persona scores
def fact_scores(predicted: Sequence[Collection[str]], gold: Sequence[Collection[str]]) -> dict[str, float]:
    """Micro precision/recall/F1 of predicted fact sets against gold fact sets (one pair per example).

    Pooled over examples, so a turn where nothing is revealed and nothing predicted counts nothing.
    Precision is 0 when nothing at all is predicted, recall 0 when nothing is gold.
    """
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predictions but {len(gold)} gold sets")
    hit = sum(len(set(p) & set(g)) for p, g in zip(predicted, gold))
    n_predicted = sum(len(set(p)) for p in predicted)
    n_gold = sum(len(set(g)) for g in gold)
    precision = hit / n_predicted if n_predicted else 0.0
    recall = hit / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"fact_precision": precision, "fact_recall": recall, "fact_f1": f1}


def c_score(labels: Sequence[Sequence[str]]) -> float:
    """Mean over responses of ``C(u) = sum_j NLI(u, p_j)``; ``labels[i][j]`` is the NLI label of response i
    against persona sentence j (``entail`` +1, ``neutral`` 0, ``contradict`` -1)."""
    if not labels:
        return 0.0
    try:
        return sum(sum(NLI_SCORES[label] for label in row) for row in labels) / len(labels)
    except KeyError as error:
        raise ValueError(f"unknown NLI label {error.args[0]!r}; expected one of {sorted(NLI_SCORES)}") from None


def _holds(text: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in normalised ``text`` on word boundaries."""
    return f" {normalize_answer(phrase)} " in f" {normalize_answer(text)} "


def oracle_consistency(
    response: str,
    gold_facts: Collection[str],
    hints: Mapping[str, Sequence[str]],
    clashes: Mapping[str, Collection[str]],
) -> int:
    """+1 for each gold fact a response hints at, -1 for each hinted fact that clashes with a gold fact.

    ``hints``: fact -> its implicit phrasings; ``clashes``: fact -> the facts it contradicts.
    """
    score = 0
    for fact, phrases in hints.items():
        if not any(_holds(response, p) for p in phrases):
            continue
        if fact in gold_facts:
            score += 1
        elif any(other in gold_facts for other in clashes.get(fact, ())):
            score -= 1
    return score


def follows_up(response: str, partner_facts: Collection[str], follow_ups: Mapping[str, Sequence[str]]) -> bool:
    """Whether a response holds a follow-up phrase of one of the partner's persona facts."""
    return any(_holds(response, phrase) for fact in partner_facts for phrase in follow_ups.get(fact, ()))


__all__ = [
    "NLI_SCORES",
    "bleu",
    "c_score",
    "distinct_n",
    "fact_scores",
    "follows_up",
    "hits_at_1",
    "normalize_answer",
    "oracle_consistency",
    "perplexity",
    "precision_recall_f1",
    "rouge_l",
    "unigram_f1",
]
