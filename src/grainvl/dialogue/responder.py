"""Persona-conditioned responses: a seq2seq responder over ``your persona: … partner's persona: … history``.

The responder (a :class:`~grainvl.dialogue.seq2seq.Seq2Seq`) is trained on gold personas; each gold
fact is dropped with probability ``persona_dropout`` per example (ours: the paper is silent), so the
model has seen partial and empty personas -- what it gets at test time from a predictor that only
knows what the history has revealed, or from no persona at all. The same model ranks the 20
candidates by mean token log-likelihood (Hits@1).

:func:`evaluate_responses` runs it in one of the conditioning settings of issue 18 -- ``none``,
``self`` (predicted self persona), ``partner`` (predicted partner persona), ``both`` (both
predicted), ``gold`` (both gold) -- and scores perplexity, unigram F1, BLEU-2, Distinct-1/2, Hits@1,
the C-score (NLI judge, always against the GOLD self persona), the world's exact consistency oracle
and the follow-up rate (engagingness).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from grainvl.config import from_dict, to_dict
from grainvl.dialogue.data import ResponseExample
from grainvl.dialogue.nli import ConsistencyJudge
from grainvl.dialogue.predictor import PersonaApproximator, PersonaGenerator
from grainvl.dialogue.seq2seq import FitConfig, ModelConfig, Seq2Seq
from grainvl.dialogue.tokens import DialogueVocab
from grainvl.metrics.dialogue import (
    bleu,
    c_score,
    distinct_n,
    follows_up,
    hits_at_1,
    oracle_consistency,
    perplexity,
    unigram_f1,
)
from grainvl.models.decoder import SearchConfig

SETTINGS: tuple[str, ...] = ("none", "self", "partner", "both", "gold")
Personas = tuple[Sequence[str], Sequence[str]]  # (your persona, partner's persona)


@dataclass
class ResponderConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    persona_dropout: float = 0.3  # training: chance each gold fact is left out of an example's persona
    num_beams: int = 3
    max_length: int = 32  # most generated tokens


def persona_prefix(your: Sequence[str], partner: Sequence[str]) -> str:
    """``your persona: … partner's persona: …`` (an empty side keeps its label)."""
    return f"your persona: {' '.join(your)} partner's persona: {' '.join(partner)}"


class Responder:
    """History + personas -> a response (beam search), and candidate scores for ranking."""

    kind = "responder"

    def __init__(self, model: Seq2Seq, cfg: ResponderConfig) -> None:
        self.model, self.cfg = model, cfg

    @classmethod
    def train(cls, examples: Sequence[ResponseExample], vocab: DialogueVocab, cfg: ResponderConfig) -> Responder:
        torch.manual_seed(cfg.fit.seed)
        model = Seq2Seq(vocab, cfg.model)
        return cls(model, cfg).fine_tune(examples, cfg.fit)

    def fine_tune(self, examples: Sequence[ResponseExample], fit: FitConfig) -> Responder:
        """Train (further) on ``examples`` with their gold personas, facts dropped at ``persona_dropout``."""
        rng = random.Random(fit.seed)

        def kept(facts: Sequence[str]) -> list[str]:
            return [f for f in facts if rng.random() >= self.cfg.persona_dropout]

        prefixes = [persona_prefix(kept(e.your_persona), kept(e.partner_persona)) for e in examples]
        self.model.fit(prefixes, [e.history for e in examples], [e.response for e in examples], fit)
        return self

    def respond(self, histories: Sequence[Sequence[str]], personas: Sequence[Personas]) -> list[str]:
        search = SearchConfig(self.cfg.num_beams, self.cfg.max_length, 1, length_penalty=1.0, no_repeat_ngram=3)
        return self.model.generate([persona_prefix(*p) for p in personas], histories, search)

    def nll(self, examples: Sequence[ResponseExample], personas: Sequence[Personas]) -> tuple[float, int]:
        """(summed negative log-likelihood, target tokens) of the gold responses, in chunks."""
        total, tokens = 0.0, 0
        for start in range(0, len(examples), 128):
            chunk = examples[start : start + 128]
            prefixes = [persona_prefix(*p) for p in personas[start : start + 128]]
            logp, counts = self.model.score(prefixes, [e.history for e in chunk], [e.response for e in chunk])
            total, tokens = total - float(logp.sum()), tokens + int(counts.sum())
        return total, tokens

    def rank(self, example: ResponseExample, personas: Personas) -> list[float]:
        """Mean token log-likelihood of every candidate given the history and personas."""
        n = len(example.candidates)
        logp, counts = self.model.score([persona_prefix(*personas)] * n, [example.history] * n, example.candidates)
        return (logp / counts).tolist()

    def save(self, folder: Path) -> None:
        self.model.save(folder, self.kind, {"responder": to_dict(self.cfg)})

    @classmethod
    def load(cls, folder: Path) -> Responder:
        model, meta = Seq2Seq.load(Path(folder), cls.kind)
        return cls(model, from_dict(ResponderConfig, meta["responder"]))


# ---------------------------------------------------------------------------------------------- settings
def predicted_personas(
    predictor: PersonaGenerator | PersonaApproximator, examples: Sequence[ResponseExample]
) -> tuple[list[list[str]], list[list[str]]]:
    """The predictor's self and partner persona sentences for every example's history."""
    histories = [e.history for e in examples]
    mine = predictor.predict(histories, ["self"] * len(examples))
    theirs = predictor.predict(histories, ["partner"] * len(examples))
    return [[s for s, _ in row] for row in mine], [[s for s, _ in row] for row in theirs]


def setting_personas(
    setting: str, examples: Sequence[ResponseExample], predicted: tuple[list[list[str]], list[list[str]]] | None
) -> list[Personas]:
    """The personas each example is conditioned on in ``setting`` (one of :data:`SETTINGS`)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    if setting == "gold":
        return [(e.your_persona, e.partner_persona) for e in examples]
    if setting == "none":
        return [((), ()) for _ in examples]
    if predicted is None:
        raise ValueError(f"setting {setting!r} needs a persona predictor")
    mine, theirs = predicted
    use_self, use_partner = setting in ("self", "both"), setting in ("partner", "both")
    return [(mine[i] if use_self else (), theirs[i] if use_partner else ()) for i in range(len(examples))]


@dataclass
class WorldReadings:
    """The world's exact readings: fact -> hints, fact -> clashing facts, fact -> follow-up phrases."""

    hints: dict[str, list[str]]
    clashes: dict[str, set[str]]
    follow_ups: dict[str, list[str]]


def evaluate_responses(
    responder: Responder,
    examples: Sequence[ResponseExample],
    personas: Sequence[Personas],
    judge: ConsistencyJudge | None = None,
    world: WorldReadings | None = None,
) -> tuple[dict[str, float], list[str]]:
    """Metrics of the responder conditioned on ``personas``, and its responses.

    Consistency (C-score, oracle) is always against the GOLD self persona; the follow-up rate against
    the GOLD partner persona. C-score needs ``judge``; oracle and follow-up need ``world``.
    """
    responses = responder.respond([e.history for e in examples], personas)
    references = [[e.response] for e in examples]
    nll, tokens = responder.nll(examples, personas)
    metrics = {
        "ppl": perplexity(nll, tokens),
        "f1": sum(unigram_f1(r, ref) for r, ref in zip(responses, references)) / len(examples),
        "bleu2": bleu(responses, references, 2),
        "distinct1": distinct_n(responses, 1),
        "distinct2": distinct_n(responses, 2),
    }
    ranked = [(i, e) for i, e in enumerate(examples) if e.candidates]
    if ranked:
        scores = [responder.rank(e, personas[i]) for i, e in ranked]
        metrics["hits1"] = hits_at_1(scores, [e.candidates.index(e.response) for _, e in ranked])
    if judge is not None and any(e.your_persona for e in examples):
        metrics["c_score"] = c_score(judge.labels(responses, [e.your_persona for e in examples]))
    if world is not None and any(e.your_persona for e in examples):
        oracle = [
            oracle_consistency(r, set(e.your_persona), world.hints, world.clashes) for r, e in zip(responses, examples)
        ]
        metrics["oracle"] = sum(oracle) / len(oracle)
        follow = [follows_up(r, e.partner_persona, world.follow_ups) for r, e in zip(responses, examples)]
        metrics["follow_up"] = sum(follow) / len(follow)
    return metrics, responses


__all__ = [
    "SETTINGS",
    "Responder",
    "ResponderConfig",
    "WorldReadings",
    "evaluate_responses",
    "persona_prefix",
    "predicted_personas",
    "setting_personas",
]
