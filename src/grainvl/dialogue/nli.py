"""The consistency judge of the C-score: a Dialogue-NLI classifier (utterance, persona sentence) -> label.

Madotto et al. (2019) score a response ``u`` against the persona ``p_1..p_n`` with an NLI model trained
on Dialogue NLI (Welleck et al. 2019): ``C(u) = sum_j NLI(u, p_j)``, +1 entail, 0 neutral, -1
contradict. Here the classifier reads frozen sentence vectors (all-MiniLM-L6-v2, the same cached
encoder as the dialogue models, :mod:`grainvl.dialogue.memory`): each sentence ``s`` of the utterance
is paired with the persona sentence ``p`` as InferSent's features ``[s, p, |s - p|, s * p]`` (Conneau
et al. 2017), a hidden layer reads each pair, the utterance keeps the maximum over its sentences (one
sentence is enough to entail or contradict; the rest of a response is small talk), and a linear
layer gives the three labels. Only these layers train
(:func:`~grainvl.tasks.text_classification.fit_in_memory`), so thousands of pairs train in seconds on
CPU: the pretrained encoder already puts a sentence near the persona sentence it paraphrases, and the
classifier learns which nearness is entailment and which a clash.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from grainvl.config import from_dict, to_dict
from grainvl.dialogue.memory import SentenceEncoder, sentence_encoder, utterance_sentences
from grainvl.metrics.dialogue import NLI_SCORES
from grainvl.tasks.text_classification import batch_order, fit_in_memory, task_loss
from grainvl.utils.fileio import load_model_safetensors, read_json, save_model_safetensors, write_json

NLI_LABELS: tuple[str, ...] = tuple(sorted(NLI_SCORES))  # contradict, entail, neutral
Triple = tuple[str, str, str]  # (utterance, persona sentence, label)


@dataclass
class NLIConfig:
    """Where the judge's pairs come from, its size and its training."""

    source: str | None = None  # Dialogue NLI folder (dialogue_nli_{train,dev,test}.jsonl); none: see recipes
    sentence_encoder: str | None = None  # frozen sentence vectors: a HF BERT folder; None: the packaged MiniLM
    train_pairs: int = 20000  # pairs to train on (files: the first N; the world's generator: N drawn)
    test_pairs: int = 600  # held-out pairs to report the judge's accuracy on (those seen in training dropped)
    hidden: int = 512
    steps: int = 2500
    batch_size: int = 64
    lr: float = 2e-3
    seed: int = 0


class JudgeModel(nn.Module):
    """Utterance sentence vectors (B, S, D) with mask (B, S) and persona vectors (B, D) -> NLI logits (B, 3)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pair = nn.Sequential(nn.Linear(4 * dim, hidden), nn.GELU())
        self.dropout = nn.Dropout(0.1)
        self.classify = nn.Linear(hidden, len(NLI_LABELS))

    def forward(self, sentences: Tensor, mask: Tensor, personas: Tensor) -> Tensor:
        s, p = sentences, personas[:, None].expand_as(sentences)  # (B, S, D) each
        hidden = self.pair(torch.cat([s, p, (s - p).abs(), s * p], dim=-1))  # (B, S, H)
        hidden = hidden.masked_fill(~mask.bool()[..., None], float("-inf")).amax(1)  # (B, H): the strongest sentence
        return self.classify(self.dropout(hidden))  # (B, 3)


def sentence_batch(encoder: SentenceEncoder, utterances: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Padded sentence vectors (N, S, D) and mask (N, S) of utterances (a sentence-less one keeps its whole text)."""
    split = [utterance_sentences(u) or [u] for u in utterances]
    width = max((len(parts) for parts in split), default=1)
    flat = encoder.vectors([s for parts in split for s in parts])  # (T, D)
    vectors, mask = torch.zeros(len(split), width, encoder.dim), torch.zeros(len(split), width, dtype=torch.long)
    start = 0
    for row, parts in enumerate(split):
        vectors[row, : len(parts)], mask[row, : len(parts)] = flat[start : start + len(parts)], 1
        start += len(parts)
    return vectors, mask


class ConsistencyJudge:
    """NLI labels of responses against persona sentences, for the C-score."""

    def __init__(self, model: JudgeModel, cfg: NLIConfig) -> None:
        self.model, self.cfg = model, cfg
        self.sentences: SentenceEncoder = sentence_encoder(cfg.sentence_encoder)

    @classmethod
    def train(cls, triples: Sequence[Triple], cfg: NLIConfig) -> ConsistencyJudge:
        torch.manual_seed(cfg.seed)
        encoder = sentence_encoder(cfg.sentence_encoder)
        model = JudgeModel(encoder.dim, cfg.hidden)
        sentences, mask = sentence_batch(encoder, [u for u, _, _ in triples])  # (N, S, D), (N, S)
        personas = encoder.vectors([p for _, p, _ in triples])  # (N, D)
        targets = torch.tensor([NLI_LABELS.index(label) for _, _, label in triples], dtype=torch.long)
        order = batch_order(len(triples), min(cfg.batch_size, len(triples)), cfg.steps, cfg.seed)

        def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
            rows = order[step]
            return {"sentences": sentences[rows], "mask": mask[rows], "personas": personas[rows]}, targets[rows]

        def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
            return task_loss(m(**inputs), y, regression=False)

        fit_in_memory(model, batches, loss_fn, cfg.steps, cfg.lr, 0.01, 0.1)
        return cls(model, cfg)

    @torch.no_grad()
    def predict(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """The NLI label of every (utterance, persona sentence) pair."""
        if not pairs:
            return []
        self.model.eval()
        sentences, mask = sentence_batch(self.sentences, [u for u, _ in pairs])
        logits = self.model(sentences, mask, self.sentences.vectors([p for _, p in pairs]))  # (N, 3)
        return [NLI_LABELS[i] for i in logits.argmax(-1).tolist()]

    def labels(self, responses: Sequence[str], personas: Sequence[Sequence[str]]) -> list[list[str]]:
        """``labels[i][j]``: the NLI label of response i against sentence j of its persona."""
        flat = self.predict([(r, p) for r, persona in zip(responses, personas) for p in persona])
        rows, start = [], 0
        for persona in personas:
            rows.append(flat[start : start + len(persona)])
            start += len(persona)
        return rows

    def accuracy(self, triples: Sequence[Triple]) -> float:
        """Share of (utterance, persona) pairs labelled correctly (the judge's own check)."""
        predicted = self.predict([(u, p) for u, p, _ in triples])
        return sum(p == label for p, (_, _, label) in zip(predicted, triples)) / max(len(triples), 1)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "judge.json", {"kind": "nli", "config": to_dict(self.cfg)})
        save_model_safetensors(folder / "model.safetensors", self.model.state_dict())

    @classmethod
    def load(cls, folder: Path) -> ConsistencyJudge:
        path = Path(folder) / "judge.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder}: no judge.json (not an NLI judge folder)")
        cfg = from_dict(NLIConfig, read_json(path)["config"])
        model = JudgeModel(sentence_encoder(cfg.sentence_encoder).dim, cfg.hidden)
        model.load_state_dict(load_model_safetensors(Path(folder) / "model.safetensors"))
        return cls(model.eval(), cfg)


__all__ = ["NLI_LABELS", "ConsistencyJudge", "JudgeModel", "NLIConfig", "sentence_batch"]
