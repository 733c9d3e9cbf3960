"""Extractive question answering (SQuAD v1.1): fine-tune a BERT text tower with a span head, score EM/F1.

Model: BERT's ``BertForQuestionAnswering`` recipe on our text tower: ``qa_outputs = Linear(H, 2)`` over
every token gives start and end logits; the loss is the mean of the start and end cross-entropies.

Features follow the Hugging Face ``run_qa.py`` recipe: ``[CLS] question [SEP] context [SEP]``, the
context cut into windows of ``max_length`` tokens overlapping by ``doc_stride`` (``truncation=
"only_second"``); a window that does not contain the whole answer is labelled with the ``[CLS]``
position (index 0). At evaluation, every window proposes its ``n_best`` start/end pairs (end >= start,
at most ``max_answer_length`` tokens, both inside the context), the best summed logit over all windows
of a question wins, and the answer is the context substring under the character offsets.

Scores are computed exactly as the official SQuAD v1.1 ``evaluate-v1.1.py``: answers normalised
(lower case, punctuation and the articles a/an/the removed, whitespace collapsed), EM and token F1
take the maximum over the gold answers, and both are averaged over questions and reported ×100.
"""

from __future__ import annotations

import collections
import re
import string
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.data.formats.squad import read_squad, squad_examples
from grainvl.models.text import BertEncoderModel
from grainvl.tasks.text_classification import TextFinetuneRecipe, batch_order, fit_in_memory, resolve_encoder
from grainvl.train.loop import seed_everything

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

TRAIN_NAMES = ("train-v1.1.json", "train.json")
DEV_NAMES = ("dev-v1.1.json", "dev.json")


# ---------------------------------------------------------------------------------------------- official metric
def normalize_answer(text: str) -> str:
    """SQuAD v1.1 normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(prediction: str, truth: str) -> float:
    """Token-overlap F1 between normalised answers (0 when they share no token)."""
    pred_tokens, true_tokens = normalize_answer(prediction).split(), normalize_answer(truth).split()
    common = collections.Counter(pred_tokens) & collections.Counter(true_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred_tokens), overlap / len(true_tokens)
    return 2 * precision * recall / (precision + recall)


def answer_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_scores(examples: Sequence[dict[str, Any]], predictions: dict[str, str]) -> dict[str, float]:
    """``{"exact_match", "f1"}`` ×100 over ``examples`` (``squad_examples`` layout); a question with no
    prediction counts 0, as in the official script (which prints a warning)."""
    if not examples:
        raise ValueError("squad_scores: no examples")
    exact = f1 = 0.0
    for example in examples:
        truths = example["answers"]["text"]
        if example["id"] not in predictions:
            continue
        prediction = predictions[example["id"]]
        exact += max(answer_exact(prediction, t) for t in truths)
        f1 += max(answer_f1(prediction, t) for t in truths)
    return {"exact_match": 100.0 * exact / len(examples), "f1": 100.0 * f1 / len(examples)}


# ---------------------------------------------------------------------------------------------- data
@dataclass
class SquadTask:
    """A SQuAD v1.1 task folder in memory: one dict per question (``squad_examples`` layout)."""

    name: str
    train: list[dict[str, Any]]
    dev: list[dict[str, Any]]


def _find(task_dir: Path, names: tuple[str, ...]) -> Path:
    for name in names:
        if (task_dir / name).is_file():
            return task_dir / name
    raise FileNotFoundError(f"{task_dir}: none of {list(names)} found")


def load_squad_task(task_dir: str | Path, name: str | None = None) -> SquadTask:
    """Read ``train-v1.1.json``/``dev-v1.1.json`` (or ``train.json``/``dev.json``) from ``task_dir``."""
    task_dir = Path(task_dir)
    train = squad_examples(read_squad(_find(task_dir, TRAIN_NAMES)))
    dev = squad_examples(read_squad(_find(task_dir, DEV_NAMES)))
    if not train or not dev:
        raise ValueError(f"{task_dir}: train and dev must each hold at least one question")
    return SquadTask(name or task_dir.name, train, dev)


def train_features(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, Any]], max_length: int, doc_stride: int
) -> dict[str, Tensor]:
    """Windows with start/end token labels: ids/mask/types (F, L), start/end_positions (F,); F >= len(examples)."""
    enc = _windows(tokenizer, examples, max_length, doc_stride)
    starts, ends = [], []
    for i, offsets in enumerate(enc["offset_mapping"]):
        example = examples[enc["overflow_to_sample_mapping"][i]]
        answer_start = example["answers"]["answer_start"][0]
        answer_end = answer_start + len(example["answers"]["text"][0])  # exclusive character offset
        context = [j for j, s in enumerate(enc.sequence_ids(i)) if s == 1]
        first, last = context[0], context[-1]
        if not (offsets[first][0] <= answer_start and offsets[last][1] >= answer_end):
            starts.append(0)  # answer not (wholly) in this window: point at [CLS]
            ends.append(0)
            continue
        start = next(j for j in range(first, last + 1) if offsets[j][1] > answer_start)
        end = next(j for j in range(last, first - 1, -1) if offsets[j][0] < answer_end)
        starts.append(start)
        ends.append(end)
    out = _tensors(enc)
    out["start_positions"] = torch.tensor(starts)
    out["end_positions"] = torch.tensor(ends)
    return out


def _windows(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[dict[str, Any]], max_length: int, doc_stride: int
) -> Any:
    # The overlap must leave room for the question and new context in every window; short windows
    # (cheap benchmarks, tests) cap it at a quarter of the window instead of failing.
    doc_stride = min(doc_stride, max_length // 4)
    return tokenizer(
        [e["question"].lstrip() for e in examples],
        [e["context"] for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )


def _tensors(enc: Any) -> dict[str, Tensor]:
    out = {"input_ids": torch.tensor(enc["input_ids"]), "attention_mask": torch.tensor(enc["attention_mask"])}
    out["token_type_ids"] = torch.tensor(enc["token_type_ids"]) if "token_type_ids" in enc else None
    if out["token_type_ids"] is None:
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])
    return out


# ---------------------------------------------------------------------------------------------- model
class QuestionAnswering(nn.Module):
    """Text tower + ``qa_outputs``: ids (B, L) -> (start_logits, end_logits), each (B, L)."""

    def __init__(
        self, encoder: BertEncoderModel, tokenizer: PreTrainedTokenizerBase, max_length: int = 256, doc_stride: int = 64
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.doc_stride = doc_stride
        self.qa_outputs = nn.Linear(encoder.config.hidden_size, 2)
        nn.init.normal_(self.qa_outputs.weight, std=encoder.config.initializer_range)
        nn.init.zeros_(self.qa_outputs.bias)

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        states = self.encoder(input_ids, attention_mask, token_type_ids=token_type_ids)  # (B, L, H)
        logits = self.qa_outputs(states)  # (B, L, 2)
        return logits[..., 0], logits[..., 1]

    @torch.no_grad()
    def answer(self, examples: Sequence[dict[str, Any]], batch_size: int = 64, n_best: int = 20) -> dict[str, str]:
        """Predicted answer text for every example id (``squad_examples`` layout)."""
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        enc = _windows(self.tokenizer, examples, self.max_length, self.doc_stride)
        inputs = _tensors(enc)
        starts, ends = [], []
        for b in range(0, inputs["input_ids"].shape[0], batch_size):
            s, e = self(**{k: v[b : b + batch_size].to(device) for k, v in inputs.items()})
            starts.append(s.float().cpu())
            ends.append(e.float().cpu())
        self.train(was_training)
        return best_spans(examples, enc, torch.cat(starts).numpy(), torch.cat(ends).numpy(), n_best)


def qa_loss(model: nn.Module, inputs: dict[str, Tensor], targets: Tensor) -> Tensor:
    """Mean of start and end cross-entropy; ``targets`` (B, 2) = token indices of start and end."""
    start_logits, end_logits = model(**inputs)
    return (F.cross_entropy(start_logits, targets[:, 0]) + F.cross_entropy(end_logits, targets[:, 1])) / 2


def best_spans(
    examples: Sequence[dict[str, Any]],
    enc: Any,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    n_best: int = 20,
    max_answer_length: int = 30,
) -> dict[str, str]:
    """Pick each question's highest ``start + end`` logit span over all its windows -> {id: text}."""
    best: dict[int, tuple[float, str]] = {}
    for i, offsets in enumerate(enc["offset_mapping"]):
        example_index = enc["overflow_to_sample_mapping"][i]
        context_text = examples[example_index]["context"]
        in_context = [s == 1 for s in enc.sequence_ids(i)]
        top_starts = np.argsort(start_logits[i])[::-1][:n_best]
        top_ends = np.argsort(end_logits[i])[::-1][:n_best]
        for s in top_starts:
            for e in top_ends:
                if not (in_context[s] and in_context[e]) or e < s or e - s + 1 > max_answer_length:
                    continue
                score = float(start_logits[i][s] + end_logits[i][e])
                if example_index not in best or score > best[example_index][0]:
                    best[example_index] = (score, context_text[offsets[s][0] : offsets[e][1]])
    return {e["id"]: best[i][1] if i in best else "" for i, e in enumerate(examples)}


# ---------------------------------------------------------------------------------------------- training
@dataclass
class QAFinetuneConfig(TextFinetuneRecipe):
    """Fine-tuning recipe (Vu et al.: lr 3e-5, batch 12, 3 epochs, length 384, stride 128; ours counts steps)."""

    batch_size: int = 16  # contexts are longer than classification inputs: smaller batches, longer windows
    max_length: int = 256
    doc_stride: int = 64


@dataclass
class QAFinetuneResult:
    model: QuestionAnswering
    metrics: dict[str, float]  # exact_match, f1 (×100)
    steps: int
    seconds: float
    train_examples: int
    main_metric: str = "f1"
    losses: list[float] = field(default_factory=list)

    @property
    def score(self) -> float:
        return self.metrics[self.main_metric]


def build_qa_model(encoder: str | Path | nn.Module, cfg: QAFinetuneConfig) -> QuestionAnswering:
    tower, tokenizer, _ = resolve_encoder(encoder, cfg.tokenizer, hidden_dropout=cfg.dropout)
    return QuestionAnswering(tower, tokenizer, cfg.max_length, cfg.doc_stride).to(cfg.device)


def finetune_qa(
    encoder: str | Path | nn.Module, task_dir: Path | SquadTask, cfg: QAFinetuneConfig | None = None
) -> QAFinetuneResult:
    """Fine-tune ``encoder`` (folder, tower or fine-tuned model) with a new span head on a SQuAD task;
    -> model, dev EM/F1 (×100), steps, seconds."""
    cfg = cfg or QAFinetuneConfig()
    task = task_dir if isinstance(task_dir, SquadTask) else load_squad_task(task_dir)
    start = time.perf_counter()
    seed_everything(cfg.seed)
    model = build_qa_model(encoder, cfg)
    examples = task.train[: cfg.max_train_examples]
    features = train_features(model.tokenizer, examples, cfg.max_length, cfg.doc_stride)
    targets = torch.stack([features.pop("start_positions"), features.pop("end_positions")], dim=1)  # (F, 2)
    order = batch_order(targets.shape[0], cfg.batch_size, cfg.steps, cfg.seed)

    def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
        picked = torch.tensor(order[step])
        return {k: v[picked].to(cfg.device) for k, v in features.items()}, targets[picked].to(cfg.device)

    losses = fit_in_memory(model, batches, qa_loss, cfg.steps, cfg.lr, cfg.weight_decay, cfg.warmup)
    dev = task.dev[: cfg.max_dev_examples]
    metrics = squad_scores(dev, model.answer(dev))
    return QAFinetuneResult(model, metrics, cfg.steps, time.perf_counter() - start, len(examples), losses=losses)


__all__ = [
    "QAFinetuneConfig",
    "QAFinetuneResult",
    "QuestionAnswering",
    "SquadTask",
    "answer_exact",
    "answer_f1",
    "best_spans",
    "finetune_qa",
    "load_squad_task",
    "normalize_answer",
    "qa_loss",
    "squad_scores",
    "train_features",
]
