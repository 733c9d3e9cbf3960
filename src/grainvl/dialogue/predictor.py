"""Persona predictors (arXiv 2111.15093): dialogue history -> the agent's or the partner's persona.

Both predictors read ``ROLE_PROMPTS[role] + history`` (one model for both roles; the prompt says whose
persona) and return facts with scores.

* :class:`PersonaGenerator` is a :class:`~grainvl.dialogue.seq2seq.Seq2Seq` trained with token
  cross-entropy to write the persona sentences (in the order the history revealed them) and decoded
  by beam search; its facts are the generated sentences, each scored by its per-token probability.
* :class:`PersonaApproximator` encodes the history into a vector ``z`` (mean-pooled text tower ->
  linear) regressed (MSE) onto the mean of the gold sentences' embeddings from a frozen sentence
  encoder (the packaged all-MiniLM-L6-v2, mean pooled and L2-normalised) -- the zero vector when
  nothing is revealed yet. Its readable output is the persona bank ranked by ``z . e`` (``e`` a bank
  sentence's embedding); sentences scoring at least ``threshold`` (at most ``top_k``) are its facts.

:func:`evaluate_predictor` scores either against the gold targets (what the history revealed so far
in the world; the whole persona otherwise): fact precision/recall/F1 on normalised sentences,
BLEU-2 / ROUGE-L / unigram F1 of the predicted text, and retrieval accuracy against the bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.config import from_dict, to_dict, with_values
from grainvl.data.tokenization import packaged_minilm_path
from grainvl.dialogue.data import ROLE_PROMPTS, PersonaExample
from grainvl.dialogue.seq2seq import FitConfig, ModelConfig, Seq2Seq, read_folder, save_folder, text_config
from grainvl.dialogue.tokens import DialogueVocab, pad_batch
from grainvl.metrics.dialogue import bleu, fact_scores, normalize_answer, rouge_l, unigram_f1
from grainvl.models.decoder import SearchConfig
from grainvl.models.factory import load_text_model
from grainvl.models.text import BertEncoderModel
from grainvl.tasks.text_classification import batch_order, fit_in_memory, text_features

Facts = list[tuple[str, float]]  # predicted persona sentences with scores, best first


@dataclass
class PredictorConfig:
    """Which predictor and how it is built, trained and read out."""

    kind: str = "generator"  # generator or approximator
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    num_beams: int = 4  # generator: beam width
    max_length: int = 48  # generator: most generated tokens
    threshold: float = 0.35  # approximator: a bank sentence with z . e >= this is predicted
    top_k: int = 5  # approximator: at most this many facts
    sentence_encoder: str | None = None  # approximator targets: a text model folder; None: the packaged MiniLM


class PersonaPredictor(Protocol):
    def predict(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Facts]: ...

    def save(self, folder: Path) -> None: ...


def split_sentences(text: str) -> list[str]:
    """Generated persona text -> its sentences, each ending in '.' (empty pieces dropped)."""
    return [f"{piece.strip()}." for piece in text.replace("?", ".").replace("!", ".").split(".") if piece.strip()]


# ---------------------------------------------------------------------------------------------- generator
class PersonaGenerator:
    """History -> persona sentences by a seq2seq model and beam search."""

    kind = "generator"

    def __init__(self, model: Seq2Seq, cfg: PredictorConfig) -> None:
        self.model, self.cfg = model, cfg

    @classmethod
    def train(cls, examples: Sequence[PersonaExample], vocab: DialogueVocab, cfg: PredictorConfig) -> PersonaGenerator:
        torch.manual_seed(cfg.fit.seed)
        model = Seq2Seq(vocab, cfg.model)
        model.fit(
            [ROLE_PROMPTS[e.role] for e in examples],
            [e.history for e in examples],
            [" ".join(e.target) for e in examples],
            cfg.fit,
        )
        return cls(model, cfg)

    def search(self) -> SearchConfig:
        # min_length 0: "nothing revealed yet" is the empty persona; GNMT length penalty so that a full
        # persona is not beaten by a short one on raw log-likelihood alone
        return SearchConfig(self.cfg.num_beams, self.cfg.max_length, 0, length_penalty=1.0, no_repeat_ngram=0)

    def generate(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[str]:
        return self.model.generate([ROLE_PROMPTS[r] for r in roles], histories, self.search())

    def predict(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Facts]:
        """Generated sentences, each scored by exp(mean token log-prob) as the sole target."""
        texts = self.generate(histories, roles)
        rows = [(i, s) for i, text in enumerate(texts) for s in dict.fromkeys(split_sentences(text))]
        facts: list[Facts] = [[] for _ in texts]
        if rows:
            prompts = [ROLE_PROMPTS[roles[i]] for i, _ in rows]
            logp, counts = self.model.score(prompts, [histories[i] for i, _ in rows], [s for _, s in rows])
            for (i, sentence), value in zip(rows, (logp / counts).exp().tolist()):
                facts[i].append((sentence, value))
        return facts

    def save(self, folder: Path) -> None:
        self.model.save(folder, self.kind, {"predictor": to_dict(self.cfg)})


# ---------------------------------------------------------------------------------------------- approximator
def sentence_vectors(texts: Sequence[str], source: str | None) -> Tensor:
    """Frozen sentence embeddings (N, D): mean-pooled, L2-normalised (all-MiniLM-L6-v2's recipe)."""
    tower, _head, tokenizer = load_text_model(source or packaged_minilm_path())
    vectors = torch.from_numpy(text_features(tower.eval(), tokenizer, list(texts), max_length=64, pooling="mean"))
    return F.normalize(vectors, dim=-1)


class ApproximatorModel(nn.Module):
    """Source ids (B, L) -> persona vector z (B, D): mean-pooled text tower states -> linear."""

    kind = "approximator"

    def __init__(self, vocab: DialogueVocab, cfg: ModelConfig, dim: int) -> None:
        super().__init__()
        self.vocab, self.cfg = vocab, cfg
        self.encoder = BertEncoderModel(text_config(cfg, len(vocab)))
        self.project = nn.Linear(self.encoder.config.hidden_size, dim)

    def forward(self, source_ids: Tensor, source_mask: Tensor) -> Tensor:
        states = self.encoder(source_ids, source_mask)  # (B, L, H)
        mask = source_mask[..., None].to(states.dtype)  # (B, L, 1)
        return self.project((states * mask).sum(1) / mask.sum(1))  # (B, D)

    def sources(self, roles: Sequence[str], histories: Sequence[Sequence[str]]) -> tuple[Tensor, Tensor]:
        ids = [self.vocab.source(ROLE_PROMPTS[r], h, self.cfg.max_source_tokens) for r, h in zip(roles, histories)]
        return pad_batch(ids, next(self.parameters()).device)


class PersonaApproximator:
    """History -> dense persona vector; readable as the nearest sentences of the persona bank."""

    kind = "approximator"

    def __init__(self, model: ApproximatorModel, bank: list[str], bank_vectors: Tensor, cfg: PredictorConfig) -> None:
        self.model, self.bank, self.bank_vectors, self.cfg = model, bank, bank_vectors, cfg

    @classmethod
    def train(
        cls, examples: Sequence[PersonaExample], vocab: DialogueVocab, bank: list[str], cfg: PredictorConfig
    ) -> PersonaApproximator:
        """Embed the bank and every target sentence once (frozen encoder), then regress z onto target means."""
        sentences = list(dict.fromkeys([*bank, *(s for e in examples for s in e.target)]))
        vectors = sentence_vectors(sentences, cfg.sentence_encoder)  # (S, D)
        row = {s: i for i, s in enumerate(sentences)}
        targets = torch.stack(
            [
                vectors[[row[s] for s in e.target]].mean(0) if e.target else torch.zeros(vectors.shape[1])
                for e in examples
            ]
        )  # (N, D): zero when nothing is revealed yet
        torch.manual_seed(cfg.fit.seed)
        model = ApproximatorModel(vocab, cfg.model, vectors.shape[1])
        sources = [vocab.source(ROLE_PROMPTS[e.role], e.history, cfg.model.max_source_tokens) for e in examples]
        order = batch_order(len(sources), min(cfg.fit.batch_size, len(sources)), cfg.fit.steps, cfg.fit.seed)

        def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
            ids, mask = pad_batch([sources[i] for i in order[step]])
            return {"source_ids": ids, "source_mask": mask}, targets[order[step]]

        def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
            return F.mse_loss(m(**inputs), y, reduction="sum") / len(y)  # squared distance per example

        f = cfg.fit
        fit_in_memory(model, batches, loss_fn, f.steps, f.lr, f.weight_decay, f.warmup)
        return cls(model, bank, vectors[[row[s] for s in bank]], cfg)

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[str]], roles: Sequence[str], batch_size: int = 128) -> Tensor:
        """``z . e`` of every history against every bank sentence, (N, K)."""
        self.model.eval()
        chunks = []
        for start in range(0, len(histories), batch_size):
            z = self.model(
                *self.model.sources(roles[start : start + batch_size], histories[start : start + batch_size])
            )
            chunks.append(z @ self.bank_vectors.T)  # (b, K)
        return torch.cat(chunks)

    def predict(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Facts]:
        top = self.scores(histories, roles).topk(min(self.cfg.top_k, len(self.bank)), dim=1)
        return [
            [(self.bank[k], v) for v, k in zip(values, indices) if v >= self.cfg.threshold]
            for values, indices in zip(top.values.tolist(), top.indices.tolist())
        ]

    def save(self, folder: Path) -> None:
        extra = {"model": to_dict(self.cfg.model), "predictor": to_dict(self.cfg), "bank": self.bank}
        state = {**self.model.state_dict(), "bank_vectors": self.bank_vectors}
        save_folder(Path(folder), self.kind, state, self.model.vocab, extra)

    @classmethod
    def load(cls, folder: Path, cfg: PredictorConfig) -> PersonaApproximator:
        meta, vocab, state = read_folder(folder, cls.kind)
        model = ApproximatorModel(vocab, ModelConfig(**meta["model"]), state["project.weight"].shape[0])
        bank_vectors = state.pop("bank_vectors")
        model.load_state_dict(state)
        return cls(model.eval(), meta["bank"], bank_vectors, cfg)


# ---------------------------------------------------------------------------------------------- files, evaluation
def train_predictor(
    examples: Sequence[PersonaExample], vocab: DialogueVocab, bank: list[str], cfg: PredictorConfig
) -> PersonaGenerator | PersonaApproximator:
    if cfg.kind == "generator":
        return PersonaGenerator.train(examples, vocab, cfg)
    if cfg.kind == "approximator":
        return PersonaApproximator.train(examples, vocab, bank, cfg)
    raise ValueError(f"predictor kind must be 'generator' or 'approximator', got {cfg.kind!r}")


def load_predictor(
    folder: str | Path, overrides: dict[str, Any] | None = None
) -> PersonaGenerator | PersonaApproximator:
    """The predictor saved in ``folder`` (either kind); ``overrides`` replace read-out settings (threshold ...)."""
    meta, _, _ = read_folder(Path(folder), None)
    cfg = with_values(from_dict(PredictorConfig, meta["predictor"]), overrides or {})
    if meta["kind"] == PersonaApproximator.kind:
        return PersonaApproximator.load(Path(folder), cfg)
    model, _ = Seq2Seq.load(Path(folder), PersonaGenerator.kind)
    return PersonaGenerator(model, cfg)


def evaluate_predictor(
    predictor: PersonaGenerator | PersonaApproximator, examples: Sequence[PersonaExample], bank: Sequence[str]
) -> dict[str, float]:
    """Fact P/R/F1, text BLEU-2/ROUGE-L/F1 and bank retrieval accuracy of predictions for ``examples``."""
    facts = predictor.predict([e.history for e in examples], [e.role for e in examples])
    predicted = [{normalize_answer(s) for s, _ in row} for row in facts]
    gold = [{normalize_answer(s) for s in e.target} for e in examples]
    metrics = fact_scores(predicted, gold)
    with_gold = [i for i, e in enumerate(examples) if e.target]
    texts = [" ".join(s for s, _ in facts[i]) for i in with_gold]
    references = [[" ".join(examples[i].target)] for i in with_gold]
    metrics["bleu2"] = bleu(texts, references, 2)
    metrics["rouge_l"] = rouge_l(texts, references)
    metrics["f1"] = sum(unigram_f1(t, r) for t, r in zip(texts, references)) / max(len(texts), 1)
    metrics["retrieval_acc"] = _retrieval_accuracy(facts, gold, bank)
    return metrics


def _retrieval_accuracy(facts: Sequence[Facts], gold: Sequence[set[str]], bank: Sequence[str]) -> float:
    """Share of predicted sentences whose nearest bank sentence (by unigram F1) is a gold fact."""
    normal_bank = [normalize_answer(b) for b in bank]
    hits = total = 0
    for row, g in zip(facts, gold):
        for sentence, _ in row:
            nearest = max(normal_bank, key=lambda b: unigram_f1(sentence, [b]))
            hits += nearest in g
            total += 1
    return hits / total if total else 0.0


__all__ = [
    "ApproximatorModel",
    "Facts",
    "PersonaApproximator",
    "PersonaGenerator",
    "PersonaPredictor",
    "PredictorConfig",
    "evaluate_predictor",
    "load_predictor",
    "sentence_vectors",
    "split_sentences",
    "train_predictor",
]
