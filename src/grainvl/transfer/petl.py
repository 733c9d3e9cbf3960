"""Parameter-efficient tuning (PET) of a frozen BERT for one task: prompt tuning, prefix tuning, LoRA, BitFit.

The tuned parameters are the task embedding (TuPaTE, arXiv 2210.11705), so every task must be tuned on
the same frozen backbone, with the same PET configuration and the *same initialisation* of the PET
parameters (``PetlConfig.init_seed``, shared by all tasks, as the paper's "seed 11" everywhere).

Backbone: the Hugging Face ``BertModel`` of a local folder (the packaged MiniLM by default), because
peft wraps Hugging Face models. With the pinned peft 0.21 / transformers 5.24 (``shared/research/env.md``):

* ``prompt`` — peft ``PromptTuningConfig`` (Lester et al.; random init), ``FEATURE_EXTRACTION`` task
  type: ``num_virtual_tokens`` trainable vectors prepended to the input embeddings;
* ``prefix`` — peft ``PrefixTuningConfig`` without projection (P-tuning v2 as TuPaTE runs it):
  per-layer key/value prefixes. ``SEQ_CLS`` prefix tuning fails on transformers 5, so we use
  ``FEATURE_EXTRACTION`` on ``BertModel`` with our own head (the env note's workaround);
* ``lora`` — peft ``LoraConfig`` on the self-attention ``query`` and ``value`` (loralib's choice in
  TuPaTE); A random (Kaiming), B zero;
* ``bitfit`` — written here: every backbone parameter whose name contains ``bias`` is trained,
  everything else frozen (Ben Zaken et al.; TuPaTE's ``BitfitBert*``).

Heads (always trainable, never part of the embedding): classification = the backbone's pooler
(``tanh(dense(h_CLS))``, frozen except its bias under BitFit) -> dropout -> ``Linear(H, C)``; QA = a
``Linear(H, 2)`` span head. peft ignores ``token_type_ids`` for prompt and prefix tuning (it warns and
drops them), so those two methods see every token as segment 0; LoRA and BitFit get the real segments.
With prompt tuning the ``[CLS]`` state sits after the virtual tokens and is read from there (P-tuning
v2's ``BertPromptForSequenceClassification`` reads position 0, a virtual token; ours is the real CLS).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.data.tokenization import load_tokenizer
from grainvl.tasks.text_classification import (
    GlueTask,
    batch_order,
    encode_texts,
    fit_in_memory,
    load_glue_task,
    task_loss,
)
from grainvl.tasks.text_qa import SquadTask, load_squad_task, qa_loss, train_features
from grainvl.train.loop import seed_everything

PETL_METHODS: tuple[str, ...] = ("prompt", "prefix", "lora", "bitfit")
# Learning rates that move each method's few parameters within ~100 steps (ours; the TuPaTE scripts
# use 5e-3..1e-2 for prefixes; Lester et al. 0.3 with Adafactor for prompts).
DEFAULT_LR: dict[str, float] = {"prompt": 3e-2, "prefix": 1e-2, "lora": 1e-3, "bitfit": 1e-3}


@dataclass
class PetlConfig:
    """One PET recipe, identical for every task whose embeddings are compared."""

    method: str = "prompt"
    num_virtual_tokens: int = 8  # prompt / prefix length
    lora_r: int = 8
    lora_alpha: int = 16
    steps: int = 100
    batch_size: int = 16
    lr: float | None = None  # None: DEFAULT_LR[method]
    weight_decay: float = 0.0
    warmup: float = 0.06
    max_length: int = 128
    doc_stride: int = 48  # QA windows
    seed: int = 0  # data order and head init
    init_seed: int = 11  # PET parameter init, shared by all tasks
    snapshot_steps: tuple[int, ...] = ()  # also keep the PET parameters after these steps (early checkpoints)
    max_train_examples: int | None = None
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in PETL_METHODS:
            raise ValueError(f"PET method must be one of {PETL_METHODS}, got {self.method!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    @property
    def learning_rate(self) -> float:
        return DEFAULT_LR[self.method] if self.lr is None else self.lr


def load_hf_backbone(folder: str | Path, num_layers: int | None = None) -> tuple[nn.Module, Any]:
    """Hugging Face ``BertModel`` and tokenizer of a local folder (nothing downloaded), in eval mode.

    ``num_layers`` keeps only the first layers (a cheaper backbone, same as ``load_hf_bert``'s shrinking).
    """
    # Imported here: transformers takes seconds to import; only this path needs it.
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every call
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder}: not a Hugging Face model folder (no config.json)")
    extra = {} if num_layers is None else {"num_hidden_layers": num_layers}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # dropped layers (num_layers) would print a load report table
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = BertModel.from_pretrained(str(folder), local_files_only=True, **extra)
    finally:
        hf_logging.set_verbosity(verbosity)
    return model.eval(), load_tokenizer(folder)


def wrap_backbone(backbone: nn.Module, cfg: PetlConfig) -> nn.Module:
    """Freeze ``backbone`` and add the PET parameters of ``cfg.method`` (initialised from ``cfg.init_seed``)."""
    # Imported here: peft (and the transformers it loads) is needed only for parameter-efficient tuning.
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

    backbone = copy.deepcopy(backbone)
    for param in backbone.parameters():
        param.requires_grad_(False)
    torch.manual_seed(cfg.init_seed)  # same PET init for every task
    if cfg.method == "bitfit":
        for name, param in backbone.named_parameters():
            param.requires_grad_("bias" in name)
        return backbone
    if cfg.method == "prompt":
        config: Any = PromptTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=cfg.num_virtual_tokens
        )
    elif cfg.method == "prefix":
        config = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=cfg.num_virtual_tokens)
    else:
        config = LoraConfig(
            task_type=TaskType.FEATURE_EXTRACTION,
            r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=0.0,
            target_modules=["query", "value"],
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_peft_model(backbone, config)


class PetlModel(nn.Module):
    """Frozen backbone + PET parameters + a trainable head.

    ``kind="classification"``: forward -> logits (B, C); ``kind="qa"``: -> (start, end) logits, each (B, L).
    """

    def __init__(self, backbone: nn.Module, cfg: PetlConfig, kind: str, num_outputs: int, tokenizer: Any) -> None:
        super().__init__()
        self.method = cfg.method
        self.kind = kind
        self.tokenizer = tokenizer
        self.max_length = cfg.max_length
        self.backbone = wrap_backbone(backbone, cfg)
        # Prompt tuning prepends this many states to the output; they are skipped before the head.
        self.offset = cfg.num_virtual_tokens if cfg.method == "prompt" else 0
        hidden = backbone.config.hidden_size
        torch.manual_seed(cfg.seed)
        self.dropout = nn.Dropout(backbone.config.hidden_dropout_prob)
        self.head = nn.Linear(hidden, num_outputs if kind == "classification" else 2)
        nn.init.normal_(self.head.weight, std=backbone.config.initializer_range)
        nn.init.zeros_(self.head.bias)

    def _bert(self) -> nn.Module:
        model = self.backbone
        return model.get_base_model() if hasattr(model, "get_base_model") else model

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Any:
        kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.method in ("lora", "bitfit"):
            kwargs["token_type_ids"] = token_type_ids  # peft drops segment ids for prompt/prefix anyway
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # peft's past_key_values deprecation notice, every step
            states = self.backbone(**kwargs).last_hidden_state[:, self.offset :]  # (B, L, H)
        if self.kind == "qa":
            logits = self.head(self.dropout(states))  # (B, L, 2)
            return logits[..., 0], logits[..., 1]
        pooled = torch.tanh(self._bert().pooler.dense(states[:, 0]))  # (B, H): BERT pooler on the real [CLS]
        return self.head(self.dropout(pooled))

    def task_parameters(self) -> dict[str, Tensor]:
        """The tuned PET parameters by name, detached copies on CPU (the head is left out)."""
        return {
            name: param.detach().cpu().clone()
            for name, param in self.backbone.named_parameters()
            if param.requires_grad
        }


@dataclass
class PetlResult:
    """PET parameters at the end (``params``) and at each snapshot step, plus cost."""

    method: str
    params: dict[str, Tensor]
    initial: dict[str, Tensor]  # the same names before training (the shared init / pretrained biases)
    snapshots: dict[int, dict[str, Tensor]] = field(default_factory=dict)
    steps: int = 0
    seconds: float = 0.0
    trainable: int = 0  # PET parameters (head excluded)
    losses: list[float] = field(default_factory=list)
    model: PetlModel | None = None


def _classification_data(task: GlueTask, model: PetlModel, cfg: PetlConfig) -> Callable[[int], Any]:
    texts = task.train_texts[: cfg.max_train_examples]
    targets = torch.tensor(task.train_targets[: cfg.max_train_examples], dtype=torch.float32)
    order = batch_order(len(texts), cfg.batch_size, cfg.steps, cfg.seed)

    def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
        picked = order[step]
        enc = encode_texts(model.tokenizer, [texts[i] for i in picked], cfg.max_length)
        return {k: v.to(cfg.device) for k, v in enc.items()}, targets[picked].to(cfg.device)

    return batches


def _qa_data(task: SquadTask, model: PetlModel, cfg: PetlConfig) -> Callable[[int], Any]:
    features = train_features(model.tokenizer, task.train[: cfg.max_train_examples], cfg.max_length, cfg.doc_stride)
    targets = torch.stack([features.pop("start_positions"), features.pop("end_positions")], dim=1)  # (F, 2)
    order = batch_order(targets.shape[0], cfg.batch_size, cfg.steps, cfg.seed)

    def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
        picked = torch.tensor(order[step])
        return {k: v[picked].to(cfg.device) for k, v in features.items()}, targets[picked].to(cfg.device)

    return batches


def load_task(task_dir: str | Path) -> GlueTask | SquadTask:
    """A GLUE-TSV folder (train.tsv) or a SQuAD folder (train-v1.1.json / train.json)."""
    task_dir = Path(task_dir)
    if (task_dir / "train.tsv").is_file():
        return load_glue_task(task_dir)
    return load_squad_task(task_dir)


def tune_task(
    backbone: nn.Module, tokenizer: Any, task: GlueTask | SquadTask | str | Path, cfg: PetlConfig
) -> PetlResult:
    """PET-tune ``backbone`` (a HF ``BertModel``, left untouched) on one task; -> tuned parameters and cost."""
    task = load_task(task) if isinstance(task, (str, Path)) else task
    start = time.perf_counter()
    seed_everything(cfg.seed)
    if isinstance(task, GlueTask):
        model = PetlModel(backbone, cfg, "classification", task.num_outputs, tokenizer).to(cfg.device)
        batches = _classification_data(task, model, cfg)
        regression = task.is_regression

        def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
            return task_loss(m(**inputs), y, regression)

    else:
        model = PetlModel(backbone, cfg, "qa", 2, tokenizer).to(cfg.device)
        batches = _qa_data(task, model, cfg)
        loss_fn = qa_loss
    initial = model.task_parameters()
    snapshots: dict[int, dict[str, Tensor]] = {}
    wanted = set(cfg.snapshot_steps)

    def on_step(step: int) -> None:
        if step in wanted:
            snapshots[step] = model.task_parameters()

    # Dropout inside the frozen backbone stays on in train mode, as in the official PET scripts.
    losses = fit_in_memory(model, batches, loss_fn, cfg.steps, cfg.learning_rate, cfg.weight_decay, cfg.warmup, on_step)
    params = model.task_parameters()
    return PetlResult(
        method=cfg.method,
        params=params,
        initial=initial,
        snapshots=snapshots,
        steps=cfg.steps,
        seconds=time.perf_counter() - start,
        trainable=sum(p.numel() for p in params.values()),
        losses=losses,
        model=model,
    )


def classification_accuracy(model: PetlModel, task: GlueTask, max_examples: int | None = None) -> float:
    """Dev accuracy of a PET classification model (a diagnostic: TuPaTE finds it unrelated to embedding quality)."""
    texts, targets = task.dev_texts[:max_examples], torch.tensor(task.dev_targets[:max_examples])
    model.eval()
    correct = 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for b in range(0, len(texts), 64):
            enc = {
                k: v.to(device) for k, v in encode_texts(model.tokenizer, texts[b : b + 64], model.max_length).items()
            }
            correct += int((model(**enc).argmax(-1).cpu() == targets[b : b + 64].long()).sum())
    return correct / max(len(texts), 1)


__all__ = [
    "DEFAULT_LR",
    "PETL_METHODS",
    "PetlConfig",
    "PetlModel",
    "PetlResult",
    "classification_accuracy",
    "load_hf_backbone",
    "load_task",
    "tune_task",
    "wrap_backbone",
]
