"""Persona predictors (arXiv 2111.15093): dialogue history -> the agent's or the partner's persona.

Both predictors read a :class:`~grainvl.dialogue.memory.Source` holding ``ROLE_PROMPTS[role]`` and the
history (one model for both roles; the prompt says whose persona) as frozen sentence vectors, and
return facts with scores.

* :class:`PersonaGenerator` is a :class:`~grainvl.dialogue.seq2seq.Seq2Seq` trained with token
  cross-entropy to write the persona sentences (in the order the history revealed them) and decoded
  by beam search; its facts are the generated sentences, each scored by its per-token probability.
* :class:`PersonaApproximator` maps the history to a dense persona vector ``z``: every history
  sentence's memory state goes through an MLP and the results are summed (a sentence that reveals
  nothing should add nothing). ``z`` is regressed (MSE) onto the SUM of the gold sentences'
  embeddings ``e`` (frozen all-MiniLM-L6-v2, centred on the persona bank's mean and L2-normalised;
  zero when nothing is revealed yet). Ours, where the paper is silent: the sum, not the mean, keeps
  one fact worth 1 however many are revealed, and centring makes facts nearly orthogonal (mean
  cosine 0.24 raw, -0.01 centred on the world's bank), so ``z`` can be read back by greedy matching
  pursuit: take the bank sentence with the largest ``z . e``, subtract its ``e``, repeat while the
  best score is at least ``threshold`` (at most ``top_k`` facts). The threshold is chosen on
  held-out episodes (:meth:`PersonaApproximator.tune_threshold`), never on the test split.

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
from grainvl.data.tokenization import load_tokenizer, packaged_minilm_path
from grainvl.dialogue.data import ROLE_PROMPTS, PersonaExample
from grainvl.dialogue.memory import YOU, Source, sentence_encoder, source_items
from grainvl.dialogue.seq2seq import FitConfig, ModelConfig, Seq2Seq, read_folder, save_folder
from grainvl.dialogue.tokens import DialogueVocab
from grainvl.metrics.dialogue import bleu, fact_scores, normalize_answer, rouge_l, unigram_f1
from grainvl.models.decoder import SearchConfig
from grainvl.tasks.text_classification import batch_order, fit_in_memory

Facts = list[tuple[str, float]]  # predicted persona sentences with scores


@dataclass
class PredictorConfig:
    """Which predictor and how it is built, trained and read out."""

    kind: str = "generator"  # generator or approximator
    model: ModelConfig = field(default_factory=ModelConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    num_beams: int = 4  # generator: beam width
    max_length: int = 48  # generator: most generated tokens
    threshold: float = 0.5  # approximator: read-out stops when the best score is below this
    tune_threshold: bool = True  # approximator: choose the threshold on held-out episodes when there are some
    top_k: int = 5  # approximator: at most this many facts


class PersonaPredictor(Protocol):
    def predict(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Facts]: ...

    def save(self, folder: Path) -> None: ...


def split_sentences(text: str) -> list[str]:
    """Generated persona text -> its sentences, each ending in '.' (empty pieces dropped)."""
    return [f"{piece.strip()}." for piece in text.replace("?", ".").replace("!", ".").split(".") if piece.strip()]


def persona_sources(histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Source]:
    """The predictors' sources: whose persona (the role prompt) + the history seen from that speaker."""
    return [Source(tuple(h), ROLE_PROMPTS[r], speaker=r) for h, r in zip(histories, roles)]


# ---------------------------------------------------------------------------------------------- generator
class PersonaGenerator:
    """History -> persona sentences by a seq2seq model and beam search."""

    kind = "generator"

    def __init__(self, model: Seq2Seq, cfg: PredictorConfig) -> None:
        self.model, self.cfg = model, cfg

    @classmethod
    def train(cls, examples: Sequence[PersonaExample], bank: Sequence[str], cfg: PredictorConfig) -> PersonaGenerator:
        """Train on ``examples``; the vocabulary covers the bank and every target sentence."""
        texts = [*bank, *(s for e in examples for s in e.target)]
        vocab = DialogueVocab.build(load_tokenizer(packaged_minilm_path()), texts)
        torch.manual_seed(cfg.fit.seed)
        model = Seq2Seq(vocab, cfg.model)
        sources = persona_sources([e.history for e in examples], [e.role for e in examples])
        model.fit(sources, [" ".join(e.target) for e in examples], cfg.fit)
        return cls(model, cfg)

    def search(self) -> SearchConfig:
        # min_length 0: "nothing revealed yet" is the empty persona; GNMT length penalty so that a full
        # persona is not beaten by a short one on raw log-likelihood alone
        return SearchConfig(self.cfg.num_beams, self.cfg.max_length, 0, length_penalty=1.0, no_repeat_ngram=0)

    def generate(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[str]:
        return self.model.generate(persona_sources(histories, roles), self.search())

    def predict(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Facts]:
        """Generated sentences, each scored by exp(mean token log-prob) as the sole target."""
        texts = self.generate(histories, roles)
        rows = [(i, s) for i, text in enumerate(texts) for s in dict.fromkeys(split_sentences(text))]
        facts: list[Facts] = [[] for _ in texts]
        for start in range(0, len(rows), 256):
            chunk = rows[start : start + 256]
            sources = persona_sources([histories[i] for i, _ in chunk], [roles[i] for i, _ in chunk])
            logp, counts = self.model.score(sources, [s for _, s in chunk])
            for (i, sentence), value in zip(chunk, (logp / counts).exp().tolist()):
                facts[i].append((sentence, value))
        return facts

    def save(self, folder: Path) -> None:
        self.model.save(folder, self.kind, {"predictor": to_dict(self.cfg)})


# ---------------------------------------------------------------------------------------------- approximator
class ApproximatorModel(nn.Module):
    """Pooled sentence vectors -> persona vector z (B, D): one linear map per speaker.

    z = A (sum of the vectors of what the speaker said) + B (sum of what the other side said). Linear
    in each sentence, so a sentence's contribution does not depend on the rest of the history and the
    sums are computed once per history (:func:`speaker_sums`): training touches (B, 2, D) tensors.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.own = nn.Linear(dim, dim, bias=False)  # what the speaker said (their own persona's evidence)
        self.other = nn.Linear(dim, dim, bias=False)  # what the other side said (questions, reactions)
        nn.init.zeros_(self.own.weight)  # z starts at 0, the "nothing revealed" answer
        nn.init.zeros_(self.other.weight)

    def forward(self, sums: Tensor) -> Tensor:
        return self.own(sums[:, 0]) + self.other(sums[:, 1])  # (B, 2, D) -> (B, D)


def speaker_sums(histories: Sequence[Sequence[str]], roles: Sequence[str], encoder: Any, center: Tensor) -> Tensor:
    """(N, 2, D): the sums of the centred sentence vectors said by the role's speaker and by the other side."""
    items = [source_items(s, max_items=10**9) for s in persona_sources(histories, roles)]  # the whole history
    said = [(n, text, 0 if kind == YOU else 1) for n, row in enumerate(items) for text, kind, _ in row if kind >= YOU]
    texts = list(dict.fromkeys(text for _, text, _ in said))
    column = {text: i for i, text in enumerate(texts)}
    vectors = persona_vectors(encoder.vectors(texts), center) if texts else torch.zeros(0, len(center))  # (U, D)
    # counts (2N, U): how often row n's side said distinct sentence u; sums = counts @ vectors
    index = torch.tensor([[2 * n + side for n, _, side in said], [column[t] for _, t, _ in said]], dtype=torch.long)
    shape = (2 * len(items), len(texts))
    counts = torch.sparse_coo_tensor(index.view(2, -1), torch.ones(len(said)), shape, check_invariants=True)
    return torch.sparse.mm(counts, vectors).view(len(items), 2, len(center))


def persona_vectors(vectors: Tensor, center: Tensor) -> Tensor:
    """Sentence vectors (N, D) centred on the bank mean ``center`` (D,) and L2-normalised: the target space."""
    return F.normalize(vectors - center, dim=-1)


def matching_pursuit(z: Tensor, bank_vectors: Tensor, threshold: float, top_k: int) -> list[tuple[int, float]]:
    """Greedy read-out of z (D,) as a sum of bank vectors (K, D): (index, score) while score >= threshold."""
    residual, chosen = z.clone(), []
    for _ in range(min(top_k, len(bank_vectors))):
        scores = bank_vectors @ residual  # (K,)
        if chosen:
            scores[[k for k, _ in chosen]] = float("-inf")
        best = int(scores.argmax())
        if float(scores[best]) < threshold:
            break
        chosen.append((best, float(scores[best])))
        residual -= bank_vectors[best]
    return chosen


class PersonaApproximator:
    """History -> dense persona vector; readable as the bank sentences it is the sum of."""

    kind = "approximator"

    def __init__(
        self, model: ApproximatorModel, bank: list[str], bank_vectors: Tensor, center: Tensor, cfg: PredictorConfig
    ) -> None:
        self.model, self.bank, self.bank_vectors, self.center, self.cfg = model, bank, bank_vectors, center, cfg
        self.sentences = sentence_encoder(cfg.model.sentence_encoder)

    @classmethod
    def train(
        cls, examples: Sequence[PersonaExample], bank: Sequence[str], cfg: PredictorConfig
    ) -> PersonaApproximator:
        """Embed the bank, the targets and the histories once (frozen encoder), then regress z onto target sums."""
        encoder = sentence_encoder(cfg.model.sentence_encoder)
        bank = list(dict.fromkeys(bank))
        center = encoder.vectors(bank).mean(0)  # (D,)
        sentences = list(dict.fromkeys([*bank, *(s for e in examples for s in e.target)]))
        row = {s: i for i, s in enumerate(sentences)}
        vectors = persona_vectors(encoder.vectors(sentences), center)  # (S, D)
        targets = torch.stack(
            [vectors[[row[s] for s in e.target]].sum(0) if e.target else torch.zeros(len(center)) for e in examples]
        )  # (N, D): zero when nothing is revealed yet
        sums = speaker_sums([e.history for e in examples], [e.role for e in examples], encoder, center)  # (N, 2, D)
        torch.manual_seed(cfg.fit.seed)
        model = ApproximatorModel(len(center))
        order = batch_order(len(examples), min(cfg.fit.batch_size, len(examples)), cfg.fit.steps, cfg.fit.seed)

        def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
            return {"sums": sums[order[step]]}, targets[order[step]]

        def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
            return F.mse_loss(m(**inputs), y, reduction="sum") / len(y)  # squared distance per example

        f = cfg.fit
        fit_in_memory(model, batches, loss_fn, f.steps, f.lr, f.weight_decay, f.warmup)
        return cls(model, bank, vectors[[row[s] for s in bank]], center, cfg)

    @torch.no_grad()
    def vectors(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> Tensor:
        """The persona vectors z (N, D) of the histories."""
        self.model.eval()
        return self.model(speaker_sums(histories, roles, self.sentences, self.center))

    def read(self, z: Tensor, threshold: float | None = None) -> list[Facts]:
        """Bank sentences (with their pursuit scores, in the order the pursuit took them) that each row of
        z (N, D) is read as."""
        threshold = self.cfg.threshold if threshold is None else threshold
        return [
            [(self.bank[k], v) for k, v in matching_pursuit(row, self.bank_vectors, threshold, self.cfg.top_k)]
            for row in z
        ]

    def predict(self, histories: Sequence[Sequence[str]], roles: Sequence[str]) -> list[Facts]:
        return self.read(self.vectors(histories, roles))

    def tune_threshold(self, examples: Sequence[PersonaExample]) -> float:
        """Set (and return) the read-out threshold with the best fact F1 on held-out ``examples``."""
        z = self.vectors([e.history for e in examples], [e.role for e in examples])
        gold = [{normalize_answer(s) for s in e.target} for e in examples]

        def f1(threshold: float) -> float:
            facts = self.read(z, threshold)
            return fact_scores([{normalize_answer(s) for s, _ in row} for row in facts], gold)["fact_f1"]

        self.cfg.threshold = max((round(0.05 * i, 2) for i in range(2, 19)), key=f1)  # 0.10 .. 0.90
        return self.cfg.threshold

    def save(self, folder: Path) -> None:
        extra = {"model": to_dict(self.cfg.model), "predictor": to_dict(self.cfg), "bank": self.bank}
        state = {**self.model.state_dict(), "bank_vectors": self.bank_vectors, "center": self.center}
        save_folder(Path(folder), self.kind, state, None, extra)

    @classmethod
    def load(cls, folder: Path, cfg: PredictorConfig) -> PersonaApproximator:
        meta, _, state = read_folder(folder, cls.kind)
        bank_vectors, center = state.pop("bank_vectors"), state.pop("center")
        model = ApproximatorModel(len(center))
        model.load_state_dict(state)
        return cls(model.eval(), meta["bank"], bank_vectors, center, cfg)


# ---------------------------------------------------------------------------------------------- files, evaluation
def train_predictor(
    examples: Sequence[PersonaExample],
    bank: Sequence[str],
    cfg: PredictorConfig,
    held_out: Sequence[PersonaExample] = (),
) -> PersonaGenerator | PersonaApproximator:
    """Train the ``cfg.kind`` predictor; an approximator's threshold is tuned on ``held_out`` (when any)."""
    if cfg.kind == "generator":
        return PersonaGenerator.train(examples, bank, cfg)
    if cfg.kind == "approximator":
        approximator = PersonaApproximator.train(examples, bank, cfg)
        if cfg.tune_threshold and held_out:
            approximator.tune_threshold(held_out)
        return approximator
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
    "matching_pursuit",
    "persona_sources",
    "persona_vectors",
    "speaker_sums",
    "split_sentences",
    "train_predictor",
]
