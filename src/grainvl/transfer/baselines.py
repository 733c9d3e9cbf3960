"""The task-embedding baselines of Vu et al. 2020 (``tuvuumass/task-transferability``): TextEmb, TaskEmb.

* **TextEmb**: the *pre-trained* tower in eval mode, no gradients; each training example's final
  hidden states are averaged over its real tokens (``Σ_j m_j h_j / Σ_j m_j``) and the task vector is
  the mean over examples, (H,). Label-free. For QA the inputs are the ``[CLS] question [SEP]
  context [SEP]`` windows of each question (one per window when the context is cut).
* **TaskEmb**: the task's *fine-tuned* model, one pass over the training data without updates; the
  loss on the gold labels (Vu's default ``use_labels=True``, i.e. the empirical Fisher) is
  back-propagated and, per batch, the gradient of each component is summed over the batch (and over
  the real tokens for token states), squared, divided by the batch's real-token count, and
  accumulated; the total is divided by the number of examples. Components kept: ``cls_output`` (the
  pooled output for classification, the final ``[CLS]`` state for QA, whose model has no pooler) and
  ``layer_output`` (every layer's output, (L·H,)). This is Vu's coarse Fisher: it squares
  batch-summed gradients, not per-example ones. Vu's ``multihead_output`` and parameter Fishers are
  not computed here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from grainvl.models.text import BertEncoderModel
from grainvl.tasks.text_classification import GlueTask, TextClassifier, encode_texts, task_loss
from grainvl.tasks.text_qa import QuestionAnswering, SquadTask, train_features

TASKEMB_COMPONENTS: tuple[str, ...] = ("cls_output", "layer_output")


def _task_batches(
    task: GlueTask | SquadTask, tokenizer: Any, max_examples: int | None, max_length: int, batch_size: int
) -> list[tuple[dict[str, Tensor], Tensor]]:
    """(inputs, targets) batches over the first ``max_examples`` training examples, in file order."""
    if isinstance(task, GlueTask):
        texts = task.train_texts[:max_examples]
        targets = torch.tensor(task.train_targets[:max_examples], dtype=torch.float32)
        return [
            (encode_texts(tokenizer, texts[b : b + batch_size], max_length), targets[b : b + batch_size])
            for b in range(0, len(texts), batch_size)
        ]
    features = train_features(tokenizer, task.train[:max_examples], max_length, max_length // 4)
    targets = torch.stack([features.pop("start_positions"), features.pop("end_positions")], dim=1)  # (F, 2)
    n = targets.shape[0]
    return [
        ({k: v[b : b + batch_size] for k, v in features.items()}, targets[b : b + batch_size])
        for b in range(0, n, batch_size)
    ]


@torch.no_grad()
def text_embedding(
    tower: BertEncoderModel,
    tokenizer: Any,
    task: GlueTask | SquadTask,
    max_examples: int | None = 1000,
    max_length: int = 128,
    batch_size: int = 64,
) -> np.ndarray:
    """TextEmb: mean over examples of the masked token mean of the final states, (H,)."""
    tower.eval()
    device = next(tower.parameters()).device
    total, count = None, 0
    for inputs, _ in _task_batches(task, tokenizer, max_examples, max_length, batch_size):
        inputs = {k: v.to(device) for k, v in inputs.items()}
        states = tower(
            inputs["input_ids"], inputs["attention_mask"], token_type_ids=inputs["token_type_ids"]
        )  # (B, L, H)
        mask = inputs["attention_mask"].unsqueeze(-1).to(states.dtype)  # (B, L, 1)
        per_example = (states * mask).sum(1) / mask.sum(1)  # (B, H)
        total = per_example.sum(0) if total is None else total + per_example.sum(0)
        count += per_example.shape[0]
    if total is None:
        raise ValueError(f"task {task.name}: no training examples to embed")
    return (total / count).double().cpu().numpy()


def fisher_embedding(
    model: TextClassifier | QuestionAnswering,
    task: GlueTask | SquadTask,
    max_examples: int | None = 1000,
    max_length: int = 128,
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """TaskEmb components of a fine-tuned model: {"cls_output": (H,), "layer_output": (L·H,)}.

    The weights are not changed (no optimizer; only activation gradients are taken). Dropout is off
    (eval mode), so the Fisher is that of the deterministic model.
    """
    model.eval()
    device = next(model.parameters()).device
    layers = model.encoder.encoder.layer
    captured: dict[int, Tensor] = {}
    hooks = [layer.register_forward_hook(_keep_output(captured, i)) for i, layer in enumerate(layers)]
    sums: dict[str, Tensor | float] = {"cls_output": 0.0, "layer_output": 0.0}
    examples = 0
    try:
        for inputs, targets in _task_batches(task, model.tokenizer, max_examples, max_length, batch_size):
            inputs = {k: v.to(device) for k, v in inputs.items()}
            loss, pooled = _loss(model, task, inputs, targets.to(device))
            states = [captured[i] for i in range(len(layers))]
            wrt = states + ([pooled] if pooled is not None else [])
            grads = torch.autograd.grad(loss, wrt)
            mask = inputs["attention_mask"].unsqueeze(-1).to(grads[0].dtype)  # (B, L, 1)
            tokens = mask.sum()
            # classification: the pooled output; QA (no pooler): the final [CLS] state
            cls_grad = grads[-1] if pooled is not None else grads[len(layers) - 1][:, 0]  # (B, H)
            sums["cls_output"] = sums["cls_output"] + cls_grad.sum(0).pow(2) / tokens  # (H,)
            per_layer = [(g * mask).sum((0, 1)).pow(2) / tokens for g in grads[: len(layers)]]  # L x (H,)
            sums["layer_output"] = sums["layer_output"] + torch.cat(per_layer)  # (L*H,)
            examples += targets.shape[0]
            captured.clear()
    finally:
        for hook in hooks:
            hook.remove()
    if examples == 0:
        raise ValueError(f"task {task.name}: no training examples for the Fisher pass")
    return {name: (value / examples).double().detach().cpu().numpy() for name, value in sums.items()}  # type: ignore[union-attr]


def _keep_output(store: dict[int, Tensor], index: int) -> Any:
    def hook(module: nn.Module, args: Any, output: Tensor) -> None:
        store[index] = output  # (B, L, H)

    return hook


def _loss(
    model: nn.Module, task: GlueTask | SquadTask, inputs: dict[str, Tensor], targets: Tensor
) -> tuple[Tensor, Tensor | None]:
    """-> (loss on the gold labels, pooled output (B, H) for classifiers / None for QA)."""
    if isinstance(task, GlueTask):
        pooled = model.pooled(**inputs)  # (B, H)
        logits = model.classifier(model.dropout(pooled))
        return task_loss(logits, targets, task.is_regression), pooled
    start, end = model(**inputs)
    loss = (nn.functional.cross_entropy(start, targets[:, 0]) + nn.functional.cross_entropy(end, targets[:, 1])) / 2
    return loss, None


def data_size(tasks: Sequence[GlueTask | SquadTask]) -> dict[str, float]:
    """The DataSize baseline: rank sources by the number of training examples."""
    return {t.name: float(len(t.train_texts) if isinstance(t, GlueTask) else len(t.train)) for t in tasks}


__all__ = ["TASKEMB_COMPONENTS", "data_size", "fisher_embedding", "text_embedding"]
