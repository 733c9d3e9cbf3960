"""GLUE-style sentence(-pair) classification: fine-tune a BERT text tower plus a head, evaluate on dev.

The model is BERT's ``BertForSequenceClassification`` recipe on our own text tower
(:class:`~grainvl.models.text.BertEncoderModel`): ``[CLS]`` state -> pooler (``Linear(H, H)`` + tanh,
loaded from the checkpoint's ``pooler.dense`` when it has one) -> dropout -> ``Linear(H, C)``.
Training is AdamW with a linear warm-up/decay schedule and gradient clipping at 1.0, run by the one
training loop (:func:`grainvl.train.loop.train`, in memory through :func:`fit_in_memory`), as in the
Hugging Face GLUE example and Vu et al. 2020 (their defaults: lr 2e-5, batch 32, 3 epochs, length 128;
ours count *steps* so that small benchmarks stay cheap).

Task folders are read with the GLUE TSV reader (:mod:`grainvl.data.formats.glue`): ``train.tsv`` and
``dev.tsv`` with a header line. The text and label columns are found by GLUE's column names, so the
real GLUE release (SST-2, MRPC, QQP, QNLI, RTE, MNLI, STS-B, ...) and the world's text tasks load the
same way. A ``score`` label column (STS-B) makes the task a regression (one output, MSE loss).

Metrics follow GLUE: accuracy always; for binary tasks also F1 of the positive class and Matthews
correlation; Pearson/Spearman for regression. Which one is the task's *main* metric follows GLUE's
choice by task name: Matthews for CoLA-like names, F1 for MRPC/QQP-like names, accuracy otherwise.

Low-resource runs can draw ``max_train_examples`` random train rows per seed (``train_sample_seed``)
instead of the first N. :func:`probe_text_classifier` is the cheap alternative reading: a linear probe
(logistic regression) on frozen, pooled last-layer states, no fine-tuning.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.data.formats.glue import read_tsv
from grainvl.data.iterators import BatchSequence
from grainvl.data.tokenization import load_tokenizer
from grainvl.errors import DataError
from grainvl.models.text import BertEncoderModel, load_hf_bert, read_hf_state_dict
from grainvl.train.loop import TrainConfig, seed_everything, train
from grainvl.train.optim import OptimConfig, SchedConfig, build_optimizer, build_scheduler
from grainvl.utils.distributed import DistEnv

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# GLUE's text columns, single sentence or pair, in the order they are tried (first full match wins).
TEXT_COLUMN_SETS: tuple[tuple[str, ...], ...] = (
    ("sentence1", "sentence2"),  # RTE, MNLI, WNLI, STS-B, world pair tasks
    ("question1", "question2"),  # QQP
    ("#1 String", "#2 String"),  # MRPC
    ("question", "sentence"),  # QNLI
    ("premise", "hypothesis"),  # SNLI/SciTail-style exports
    ("text_a", "text_b"),
    ("sentence",),  # SST-2, CoLA (with a header), world single-sentence tasks
    ("text",),
)
LABEL_COLUMN_ORDER: tuple[str, ...] = ("label", "gold_label", "is_duplicate", "Quality", "score")
REGRESSION_COLUMNS = frozenset({"score"})

TextInput = str | tuple[str, str]


# ---------------------------------------------------------------------------------------------- data
@dataclass
class GlueTask:
    """One task folder read into memory. ``labels`` is empty for a regression task."""

    name: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...]
    train_texts: list[TextInput]
    train_targets: list[float]  # class index (as float) or regression score
    dev_texts: list[TextInput]
    dev_targets: list[float]

    @property
    def is_regression(self) -> bool:
        return not self.labels

    @property
    def num_outputs(self) -> int:
        return 1 if self.is_regression else len(self.labels)


def _pick_columns(columns: list[str], path: Path) -> tuple[tuple[str, ...], str]:
    text = next((c for c in TEXT_COLUMN_SETS if all(name in columns for name in c)), None)
    label = next((c for c in LABEL_COLUMN_ORDER if c in columns), None)
    if text is None or label is None:
        raise DataError(
            path,
            None,
            f"cannot tell text/label columns from header {columns}: expected one of "
            f"{[list(c) for c in TEXT_COLUMN_SETS]} and one of {list(LABEL_COLUMN_ORDER)}",
        )
    return text, label


def _texts(rows: list[dict[str, str]], columns: tuple[str, ...]) -> list[TextInput]:
    if len(columns) == 1:
        return [row[columns[0]] for row in rows]
    return [(row[columns[0]], row[columns[1]]) for row in rows]


def load_glue_task(task_dir: str | Path, name: str | None = None) -> GlueTask:
    """Read ``task_dir/train.tsv`` and ``task_dir/dev.tsv`` (MNLI: ``dev_matched.tsv``); ``name`` defaults
    to the folder name.

    Class labels are the sorted distinct train labels; a dev label never seen in train is a DataError
    (the head could not predict it). A ``score`` label column is read as a float regression target.
    """
    task_dir = Path(task_dir)
    splits = {}
    for split in ("train", "dev"):
        path = task_dir / f"{split}.tsv"
        if split == "dev" and not path.is_file() and (task_dir / "dev_matched.tsv").is_file():
            path = task_dir / "dev_matched.tsv"  # MNLI ships dev_matched / dev_mismatched
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing ({task_dir} should hold train.tsv and dev.tsv)")
        splits[split] = (path, read_tsv(path))
    train_path, train = splits["train"]
    text_columns, label_column = _pick_columns(train["columns"], train_path)
    dev_path, dev = splits["dev"]
    if _pick_columns(dev["columns"], dev_path) != (text_columns, label_column):
        raise DataError(dev_path, None, f"columns {dev['columns']} differ in meaning from train.tsv's")
    if not train["rows"] or not dev["rows"]:
        raise DataError(train_path if not train["rows"] else dev_path, None, "no examples")
    if label_column in REGRESSION_COLUMNS:
        labels: tuple[str, ...] = ()
        targets = {
            s: [_float(r[label_column], splits[s][0], i) for i, r in enumerate(d["rows"])]
            for s, (_, d) in splits.items()
        }
    else:
        labels = tuple(sorted({row[label_column] for row in train["rows"]}))
        index = {label: i for i, label in enumerate(labels)}
        targets = {}
        for split, (path, data) in splits.items():
            unknown = sorted({r[label_column] for r in data["rows"]} - set(index))
            if unknown:
                raise DataError(path, None, f"labels {unknown} do not occur in train.tsv (labels {list(labels)})")
            targets[split] = [float(index[r[label_column]]) for r in data["rows"]]
    return GlueTask(
        name=name or task_dir.name,
        text_columns=text_columns,
        label_column=label_column,
        labels=labels,
        train_texts=_texts(train["rows"], text_columns),
        train_targets=targets["train"],
        dev_texts=_texts(dev["rows"], text_columns),
        dev_targets=targets["dev"],
    )


def _float(value: str, path: Path, index: int) -> float:
    try:
        return float(value)
    except ValueError:
        raise DataError(path, f"row {index + 1}", f"score {value!r} is not a number") from None


# ---------------------------------------------------------------------------------------------- model
def encode_texts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[TextInput], max_length: int) -> dict[str, Tensor]:
    """Tokenise single texts or (first, second) pairs, padded to the longest -> ids/mask/types (B, L)."""
    if not texts:
        raise ValueError("encode_texts: no texts")
    pairs = isinstance(texts[0], tuple)
    first = [t[0] if pairs else t for t in texts]
    second = [t[1] for t in texts] if pairs else None  # type: ignore[index]
    batch = tokenizer(first, second, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    out = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    out["token_type_ids"] = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
    return out


class TextClassifier(nn.Module):
    """Text tower + BERT pooler + linear head: token ids (B, L) -> logits (B, C) (C = 1 for regression)."""

    def __init__(
        self,
        encoder: BertEncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        num_outputs: int,
        labels: Sequence[str] = (),
        dropout: float = 0.1,
        max_length: int = 128,
    ) -> None:
        super().__init__()
        hidden = encoder.config.hidden_size
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.labels = tuple(labels)
        self.max_length = max_length
        self.pooler = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_outputs)
        std = encoder.config.initializer_range
        for layer in (self.pooler, self.classifier):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def pooled(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        """BERT's pooled output: tanh(dense([CLS] state)), (B, H)."""
        states = self.encoder(input_ids, attention_mask, token_type_ids=token_type_ids)  # (B, L, H)
        return torch.tanh(self.pooler(states[:, 0]))

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        return self.classifier(self.dropout(self.pooled(input_ids, attention_mask, token_type_ids)))  # (B, C)

    def encode(self, texts: Sequence[TextInput]) -> dict[str, Tensor]:
        """Tokenised batch on the model's device."""
        device = next(self.parameters()).device
        return {k: v.to(device) for k, v in encode_texts(self.tokenizer, texts, self.max_length).items()}

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[TextInput], batch_size: int = 128) -> np.ndarray:
        """Class probabilities (N, C) in ``self.labels`` order; for regression the raw scores (N, 1)."""
        was_training = self.training
        self.eval()
        chunks = []
        for start in range(0, len(texts), batch_size):
            logits = self(**self.encode(texts[start : start + batch_size]))  # (b, C)
            chunks.append(logits.float() if self.classifier.out_features == 1 else logits.float().softmax(-1))
        self.train(was_training)
        return torch.cat(chunks).cpu().numpy() if chunks else np.zeros((0, self.classifier.out_features))

    def predict(self, texts: Sequence[TextInput]) -> list[str] | np.ndarray:
        """Label strings (classification) or scores (regression) for ``texts``."""
        probs = self.predict_proba(texts)
        if not self.labels:
            return probs[:, 0]
        return [self.labels[i] for i in probs.argmax(-1)]


def resolve_encoder(
    encoder: str | Path | nn.Module, tokenizer: str | Path | PreTrainedTokenizerBase | None = None, **overrides: Any
) -> tuple[BertEncoderModel, PreTrainedTokenizerBase, dict[str, Tensor] | None]:
    """-> (a fresh copy of the text tower, its tokenizer, pooler weights or None).

    ``encoder`` is a Hugging Face BERT folder (weights, config and tokenizer), a
    :class:`BertEncoderModel` (``tokenizer`` then required), or a fine-tuned model with ``encoder``
    and ``tokenizer`` attributes (:class:`TextClassifier`, the QA model) whose tower is reused: that is
    how intermediate-task transfer starts a target run from a source model (the head is new, as in
    Vu et al.'s ``model_load_mode=base_model_only``). Modules are deep-copied, never modified.
    ``overrides`` go to :func:`load_hf_bert` (e.g. ``hidden_dropout``).
    """

    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer)
    if isinstance(encoder, (str, Path)):
        folder = Path(encoder)
        _, tower, _ = load_hf_bert(folder, **{k: v for k, v in overrides.items() if v is not None})
        state = read_hf_state_dict(folder)
        pooler = {k.split("pooler.dense.")[-1]: v for k, v in state.items() if "pooler.dense." in k}
        return tower, tokenizer or load_tokenizer(folder), (pooler if len(pooler) == 2 else None)
    if isinstance(encoder, BertEncoderModel):
        if tokenizer is None:
            raise ValueError("an encoder module needs a tokenizer (TextFinetuneConfig.tokenizer)")
        return copy.deepcopy(encoder), tokenizer, None
    tower = getattr(encoder, "encoder", None)
    if not isinstance(tower, BertEncoderModel):
        raise ValueError(f"cannot use {type(encoder).__name__} as an encoder: expected a folder or a BERT text tower")
    pooler_layer = getattr(encoder, "pooler", None)
    pooler = {k: v.detach().clone() for k, v in pooler_layer.state_dict().items()} if pooler_layer else None
    return copy.deepcopy(tower), tokenizer or encoder.tokenizer, pooler


# ---------------------------------------------------------------------------------------------- metrics
def main_metric_name(task_name: str, is_regression: bool, num_labels: int) -> str:
    """GLUE's headline metric for a task, chosen by name: ``mcc`` (CoLA), ``f1`` (MRPC, QQP), ``pearson``
    (regression), else ``accuracy``."""
    lowered = task_name.lower()
    if is_regression:
        return "pearson"
    if num_labels == 2 and "cola" in lowered:
        return "mcc"
    if num_labels == 2 and any(key in lowered for key in ("mrpc", "qqp")):
        return "f1"
    return "accuracy"


def classification_metrics(predictions: np.ndarray, targets: np.ndarray, labels: Sequence[str]) -> dict[str, float]:
    """Accuracy; for two labels also F1 of the positive class and Matthews correlation (scikit-learn).

    The positive class is label ``"1"`` when the labels are {"0", "1"} (GLUE), else the second
    sorted label.
    """
    # Imported here: scikit-learn is heavy and only these metrics need it.
    from sklearn.metrics import f1_score, matthews_corrcoef

    metrics = {"accuracy": float((predictions == targets).mean())}
    if len(labels) == 2:
        positive = labels.index("1") if "1" in labels else 1
        metrics["f1"] = float(f1_score(targets, predictions, pos_label=positive, labels=[0, 1], zero_division=0))
        metrics["mcc"] = float(matthews_corrcoef(targets, predictions))
    return metrics


def regression_metrics(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    # Imported here: scipy.stats is heavy and only these metrics need it.
    from scipy.stats import pearsonr, spearmanr

    if np.std(predictions) == 0 or np.std(targets) == 0:
        return {"pearson": 0.0, "spearman": 0.0}  # correlation undefined for a constant predictor
    return {"pearson": float(pearsonr(predictions, targets)[0]), "spearman": float(spearmanr(predictions, targets)[0])}


def evaluate_classifier(model: TextClassifier, task: GlueTask, max_examples: int | None = None) -> dict[str, float]:
    """Dev metrics of ``model`` on ``task`` (first ``max_examples`` dev rows when given)."""
    texts, targets = task.dev_texts[:max_examples], np.asarray(task.dev_targets[:max_examples])
    probs = model.predict_proba(texts)
    if task.is_regression:
        return regression_metrics(probs[:, 0], targets)
    return classification_metrics(probs.argmax(-1), targets.astype(int), task.labels)


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TextFinetuneRecipe:
    """What every in-memory text fine-tune shares (classification here, extractive QA in text_qa):
    ``steps`` optimizer steps of ``batch_size`` examples (epochs wrap around)."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1  # fraction of ``steps`` of linear warm-up
    max_length: int = 128
    dropout: float | None = None  # None keeps the checkpoint's hidden dropout (0.1 for BERT)
    seed: int = 0
    max_train_examples: int | None = None  # first N train rows (LIMITED regime: 1000)
    max_dev_examples: int | None = None
    tokenizer: str | Path | None = None  # needed when ``encoder`` is a bare BertEncoderModel
    device: str = "cpu"


@dataclass
class TextFinetuneConfig(TextFinetuneRecipe):
    """Fine-tuning recipe of a text classifier."""

    train_sample_seed: int | None = None  # with max_train_examples: N random rows drawn with this seed, not the first N


@dataclass
class TextFinetuneResult:
    """A fine-tuned model and how it did. ``score`` is ``metrics[main_metric]``."""

    model: TextClassifier
    metrics: dict[str, float]
    main_metric: str
    steps: int
    seconds: float
    train_examples: int
    losses: list[float] = field(default_factory=list)  # training loss of every step

    @property
    def score(self) -> float:
        return self.metrics[self.main_metric]


def batch_order(num_examples: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each step's batch: shuffled epochs (one permutation per epoch), concatenated."""
    rng = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    order: list[int] = []
    while len(order) < needed:
        order.extend(torch.randperm(num_examples, generator=rng).tolist())
    return [order[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def train_rows(num_rows: int, limit: int | None, sample_seed: int | None = None) -> list[int]:
    """Train row indices: all, the first ``limit``, or ``limit`` drawn at random (sorted) with ``sample_seed``.

    Random draws let low-resource runs average over several training subsets, not one fixed prefix.
    """
    if limit is None or limit >= num_rows:
        return list(range(num_rows))
    if sample_seed is None:
        return list(range(limit))
    return sorted(random.Random(sample_seed).sample(range(num_rows), limit))


def task_loss(logits: Tensor, targets: Tensor, regression: bool) -> Tensor:
    """Cross-entropy over classes, or MSE on the single output for regression (BERT's choice)."""
    if regression:
        return F.mse_loss(logits[:, 0], targets)
    return F.cross_entropy(logits, targets.long())


Batch = tuple[dict[str, Tensor], Tensor]  # (model inputs, targets)
LossFn = Callable[[nn.Module, dict[str, Tensor], Tensor], Tensor]


class SupervisedTask(nn.Module):
    """The training loop's Task for a plain supervised model: ``{"inputs", "targets"}`` -> the task loss."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        return {"task_loss": self.loss_fn(self.model, batch["inputs"], batch["targets"])}, {}


def fit_in_memory(
    model: nn.Module,
    batches: Callable[[int], Batch],
    loss_fn: LossFn,
    steps: int,
    lr: float,
    weight_decay: float,
    warmup: float,
    on_step: Callable[[int], None] | None = None,
) -> list[float]:
    """Train ``model`` for ``steps`` steps with :func:`grainvl.train.loop.train`, writing nothing to disk.

    AdamW (betas 0.9/0.999, eps 1e-8, no decay on biases/LayerNorm) + linear warm-up/decay, clip 1.0;
    a non-finite loss stops the run (``FloatingPointError``). ``batches(step)`` -> (inputs, targets)
    for 0-based ``step``; only parameters with ``requires_grad`` are trained. The RNGs are not
    reseeded: the caller seeded them before building the head, so dropout continues that stream.
    ``on_step(step)`` runs after each optimizer step (1-based), e.g. to snapshot parameters.
    -> the loss of every step; the model is left in eval mode.
    """
    optimizer = build_optimizer(model, OptimConfig(lr=lr, weight_decay=weight_decay, lr_mult=1.0, betas=(0.9, 0.999)))
    scheduler = build_scheduler(optimizer, SchedConfig("linear", warmup_steps=warmup, total_steps=steps))
    cfg = TrainConfig(
        steps=steps,
        clip_grad=1.0,
        log_every=steps,
        seed=None,
        run_dir=None,
        max_bad_steps=1,
        save_final=False,
        track_energy=False,
        count_flops=False,
        progress=False,
        tensorboard=False,
    )
    losses: list[float] = []

    def record(step: int, step_losses: dict[str, float], _metrics: dict[str, float]) -> None:
        losses.append(step_losses["loss"])
        if on_step is not None:
            on_step(step)

    def batch(step: int) -> dict[str, Any]:
        inputs, targets = batches(step)
        return {"inputs": inputs, "targets": targets}

    env = DistEnv(device=next(model.parameters()).device)
    train(SupervisedTask(model, loss_fn), BatchSequence(batch, steps), optimizer, scheduler, cfg, env, on_step=record)
    model.eval()
    return losses


def finetune_text_classifier(
    encoder: str | Path | nn.Module, task_dir: Path | GlueTask, cfg: TextFinetuneConfig | None = None
) -> TextFinetuneResult:
    """Fine-tune ``encoder`` (a Hugging Face BERT folder, a tower, or a fine-tuned model to continue
    from) with a new head on the GLUE-TSV task in ``task_dir``; -> model, dev metrics, steps, seconds.

    The whole model is trained (full fine-tuning, as Vu et al.'s transfer runs). Deterministic for a
    given ``cfg.seed`` on one device.
    """
    cfg = cfg or TextFinetuneConfig()
    if cfg.steps < 1 or cfg.batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {cfg.steps} and {cfg.batch_size}")
    task = task_dir if isinstance(task_dir, GlueTask) else load_glue_task(task_dir)
    start = time.perf_counter()
    seed_everything(cfg.seed)
    tower, tokenizer, pooler = resolve_encoder(encoder, cfg.tokenizer, hidden_dropout=cfg.dropout)
    dropout = tower.config.hidden_dropout if cfg.dropout is None else cfg.dropout
    model = TextClassifier(tower, tokenizer, task.num_outputs, task.labels, dropout, cfg.max_length)
    if pooler is not None:
        model.pooler.load_state_dict(pooler)
    model.to(cfg.device)
    rows = train_rows(len(task.train_texts), cfg.max_train_examples, cfg.train_sample_seed)
    texts = [task.train_texts[i] for i in rows]
    targets = torch.tensor([task.train_targets[i] for i in rows], dtype=torch.float32)
    order = batch_order(len(texts), cfg.batch_size, cfg.steps, cfg.seed)

    def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
        picked = order[step]
        return model.encode([texts[i] for i in picked]), targets[picked].to(cfg.device)

    def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
        return task_loss(m(**inputs), y, task.is_regression)

    losses = fit_in_memory(model, batches, loss_fn, cfg.steps, cfg.lr, cfg.weight_decay, cfg.warmup)
    metrics = evaluate_classifier(model, task, cfg.max_dev_examples)
    return TextFinetuneResult(
        model=model,
        metrics=metrics,
        main_metric=main_metric_name(task.name, task.is_regression, len(task.labels)),
        steps=cfg.steps,
        seconds=time.perf_counter() - start,
        train_examples=len(texts),
        losses=losses,
    )


# ---------------------------------------------------------------------------------------------- frozen probe
@dataclass
class TextProbeConfig:
    """Linear probe on a frozen encoder: pooled last-layer states -> standardised -> logistic regression."""

    pooling: str = "mean"  # "mean" over real tokens, or "cls" (the [CLS] state, no pooler)
    max_length: int = 128
    c: float = 1.0  # inverse L2 strength of scikit-learn's LogisticRegression
    max_train_examples: int | None = None
    train_sample_seed: int | None = None  # as TextFinetuneConfig: random rows instead of the first N
    max_dev_examples: int | None = None
    tokenizer: str | Path | None = None
    device: str = "cpu"


@dataclass
class TextProbeResult:
    metrics: dict[str, float]
    main_metric: str
    train_examples: int

    @property
    def score(self) -> float:
        return self.metrics[self.main_metric]


@torch.no_grad()
def text_features(
    tower: BertEncoderModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[TextInput],
    max_length: int = 128,
    pooling: str = "mean",
    batch_size: int = 128,
) -> np.ndarray:
    """Frozen sentence features (N, H): mean of the last-layer states over real tokens, or the [CLS] state."""
    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    was_training = tower.training
    tower.eval()
    device = next(tower.parameters()).device
    chunks = []
    for start in range(0, len(texts), batch_size):
        batch = {
            k: v.to(device) for k, v in encode_texts(tokenizer, texts[start : start + batch_size], max_length).items()
        }
        states = tower(batch["input_ids"], batch["attention_mask"], token_type_ids=batch["token_type_ids"])  # (b, L, H)
        if pooling == "cls":
            chunks.append(states[:, 0].float())
        else:
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)  # (b, L, 1)
            chunks.append(((states * mask).sum(1) / mask.sum(1).clamp_min(1)).float())
    tower.train(was_training)
    return torch.cat(chunks).cpu().numpy()


def fit_probe(
    train_x: np.ndarray, train_y: np.ndarray, dev_x: np.ndarray, dev_y: np.ndarray, labels: Sequence[str], c: float
) -> dict[str, float]:
    """Standardise with the train statistics, fit a logistic regression (ridge for regression), dev metrics."""
    # Imported here: scikit-learn is heavy and only these metrics need it.
    from sklearn.linear_model import LogisticRegression, Ridge

    mean, std = train_x.mean(0), train_x.std(0) + 1e-6  # why: states of untrained encoders differ in scale
    train_x, dev_x = (train_x - mean) / std, (dev_x - mean) / std
    if not labels:
        predictions = Ridge(alpha=1.0 / c).fit(train_x, train_y).predict(dev_x)
        return regression_metrics(predictions, dev_y)
    if len(set(train_y.tolist())) < 2:  # one class in a tiny subsample: the constant predictor
        return classification_metrics(np.full(len(dev_y), int(train_y[0])), dev_y.astype(int), labels)
    classifier = LogisticRegression(C=c, max_iter=2000).fit(train_x, train_y.astype(int))
    return classification_metrics(classifier.predict(dev_x), dev_y.astype(int), labels)


def probe_text_classifier(
    encoder: str | Path | nn.Module, task_dir: Path | GlueTask, cfg: TextProbeConfig | None = None
) -> TextProbeResult:
    """Linear probe of a frozen ``encoder`` on a GLUE-TSV task: the encoder's features as they are, no
    fine-tuning -- a cheap second reading of what pre-training put in the states."""
    cfg = cfg or TextProbeConfig()
    task = task_dir if isinstance(task_dir, GlueTask) else load_glue_task(task_dir)
    tower, tokenizer, _ = resolve_encoder(encoder, cfg.tokenizer)
    tower.to(cfg.device)
    rows = train_rows(len(task.train_texts), cfg.max_train_examples, cfg.train_sample_seed)
    dev_texts = task.dev_texts[: cfg.max_dev_examples]

    def features(texts: Sequence[TextInput]) -> np.ndarray:
        return text_features(tower, tokenizer, texts, cfg.max_length, cfg.pooling)

    train_y = np.asarray([task.train_targets[i] for i in rows])
    dev_y = np.asarray(task.dev_targets[: cfg.max_dev_examples])
    metrics = fit_probe(
        features([task.train_texts[i] for i in rows]), train_y, features(dev_texts), dev_y, task.labels, cfg.c
    )
    return TextProbeResult(metrics, main_metric_name(task.name, task.is_regression, len(task.labels)), len(rows))


__all__ = [
    "GlueTask",
    "SupervisedTask",
    "TextClassifier",
    "TextFinetuneConfig",
    "TextFinetuneRecipe",
    "TextFinetuneResult",
    "TextProbeConfig",
    "TextProbeResult",
    "classification_metrics",
    "encode_texts",
    "evaluate_classifier",
    "finetune_text_classifier",
    "fit_in_memory",
    "fit_probe",
    "load_glue_task",
    "main_metric_name",
    "probe_text_classifier",
    "regression_metrics",
    "resolve_encoder",
    "text_features",
    "train_rows",
]
