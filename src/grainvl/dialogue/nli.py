"""The consistency judge of the C-score: a Dialogue-NLI classifier (utterance, persona sentence) -> label.

Madotto et al. (2019) score a response ``u`` against the persona ``p_1..p_n`` with an NLI model trained
on Dialogue NLI (Welleck et al. 2019): ``C(u) = sum_j NLI(u, p_j)``, +1 entail, 0 neutral, -1
contradict. Here the classifier is the repo's text classifier
(:class:`~grainvl.tasks.text_classification.TextClassifier`: text tower + pooler + linear head over the
pair ``[CLS] u [SEP] p [SEP]``) on a small text preset, trained from scratch with
:func:`~grainvl.tasks.text_classification.fit_in_memory` on DNLI-style triples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from grainvl.config import from_dict, to_dict
from grainvl.metrics.dialogue import NLI_SCORES
from grainvl.models.factory import load_text_model
from grainvl.tasks.text_classification import TextClassifier, batch_order, fit_in_memory, task_loss
from grainvl.utils.fileio import load_model_safetensors, read_json, save_model_safetensors, write_json

NLI_LABELS: tuple[str, ...] = tuple(sorted(NLI_SCORES))  # contradict, entail, neutral
Triple = tuple[str, str, str]  # (utterance, persona sentence, label)


@dataclass
class NLIConfig:
    """The judge's size and training."""

    architecture: str = "bert-tiny"  # text preset (random init) or a Hugging Face BERT folder
    train_pairs: int = 3000  # DNLI-style pairs to train on (the world draws them; files: the first N)
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    max_length: int = 64
    seed: int = 0


class ConsistencyJudge:
    """NLI labels of responses against persona sentences, for the C-score."""

    def __init__(self, classifier: TextClassifier, cfg: NLIConfig) -> None:
        self.classifier, self.cfg = classifier, cfg

    @classmethod
    def train(cls, triples: Sequence[Triple], cfg: NLIConfig) -> ConsistencyJudge:
        torch.manual_seed(cfg.seed)
        encoder, _head, tokenizer = load_text_model(cfg.architecture)
        model = TextClassifier(encoder, tokenizer, len(NLI_LABELS), NLI_LABELS, max_length=cfg.max_length)
        pairs = [(u, p) for u, p, _ in triples]
        targets = torch.tensor([float(NLI_LABELS.index(label)) for _, _, label in triples])
        order = batch_order(len(pairs), min(cfg.batch_size, len(pairs)), cfg.steps, cfg.seed)

        def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
            return model.encode([pairs[i] for i in order[step]]), targets[order[step]]

        def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
            return task_loss(m(**inputs), y, regression=False)

        fit_in_memory(model, batches, loss_fn, cfg.steps, cfg.lr, 0.01, 0.1)
        return cls(model, cfg)

    def labels(self, responses: Sequence[str], personas: Sequence[Sequence[str]]) -> list[list[str]]:
        """``labels[i][j]``: the NLI label of response i against sentence j of its persona."""
        pairs = [(r, p) for r, persona in zip(responses, personas) for p in persona]
        flat = list(self.classifier.predict(pairs)) if pairs else []
        rows, start = [], 0
        for persona in personas:
            rows.append(flat[start : start + len(persona)])
            start += len(persona)
        return rows

    def accuracy(self, triples: Sequence[Triple]) -> float:
        """Share of (utterance, persona) pairs labelled correctly (the judge's own check)."""
        predicted = self.classifier.predict([(u, p) for u, p, _ in triples])
        return sum(p == label for p, (_, _, label) in zip(predicted, triples)) / max(len(triples), 1)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_json(folder / "judge.json", {"kind": "nli", "config": to_dict(self.cfg)})
        save_model_safetensors(folder / "model.safetensors", self.classifier.state_dict())

    @classmethod
    def load(cls, folder: Path) -> ConsistencyJudge:
        cfg = from_dict(NLIConfig, read_json(Path(folder) / "judge.json")["config"])
        encoder, _head, tokenizer = load_text_model(cfg.architecture)
        model = TextClassifier(encoder, tokenizer, len(NLI_LABELS), NLI_LABELS, max_length=cfg.max_length)
        model.load_state_dict(load_model_safetensors(Path(folder) / "model.safetensors"))
        return cls(model.eval(), cfg)


__all__ = ["NLI_LABELS", "ConsistencyJudge", "NLIConfig"]
