"""BERT-of-Theseus on a text classifier: the predecessor's modules are replaced by compact successors
with a growing probability while the classifier fine-tunes (the mechanism is :mod:`grainvl.compress.theseus`)."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from grainvl.compress.theseus import (
    TheseusConfig,
    compact_successor,
    install_theseus,
    make_scheduler,
    successor_parameters,
    with_successors_in_graph,
)
from grainvl.tasks.text_classification import (
    GlueTask,
    TextClassifier,
    batch_order,
    fit_in_memory,
    task_loss,
)
from grainvl.train.loop import seed_everything


# ------------------------------------------------------------------------------------------ text classifiers
def train_theseus_classifier(
    teacher: TextClassifier, task: GlueTask, cfg: TheseusConfig | None = None
) -> tuple[TextClassifier, dict[str, Any]]:
    """Compress a fine-tuned :class:`TextClassifier` (the predecessor; not modified) on ``task``'s train
    split with the task loss. -> (a classifier whose tower is the compacted successor stack, a log with
    the replacing rate and loss per step)."""

    cfg = cfg or TheseusConfig()
    seed_everything(cfg.seed)
    model = copy.deepcopy(teacher).to("cpu")
    encoder = install_theseus(model.encoder, cfg.text_successors, cfg.fusion_successors)
    for name, param in model.named_parameters():  # pooler and classifier stay frozen too
        param.requires_grad_(".scc_layer." in name)
    scheduler = make_scheduler(encoder, cfg)
    texts, targets = task.train_texts, torch.tensor(task.train_targets, dtype=torch.float32)
    order = batch_order(len(texts), cfg.batch_size, cfg.steps, cfg.seed)
    rates: list[float] = []

    def batches(step: int) -> tuple[dict[str, Tensor], Tensor]:
        picked = order[step]
        return model.encode([texts[i] for i in picked]), targets[picked]

    successors = successor_parameters(model)

    def loss_fn(m: nn.Module, inputs: dict[str, Tensor], y: Tensor) -> Tensor:
        return with_successors_in_graph(task_loss(m(**inputs), y, task.is_regression), successors)

    def on_step(step: int) -> None:
        rates.append(scheduler.step())

    losses = fit_in_memory(model, batches, loss_fn, cfg.steps, cfg.lr, cfg.weight_decay, cfg.warmup, on_step)
    model.encoder = compact_successor(model.encoder)
    for param in model.parameters():
        param.requires_grad_(True)
    return model.eval(), {"replacing_rate": rates, "losses": losses, "sources": encoder.sources}


# ------------------------------------------------------------------------------------------ X²-VLM
class SuccessorTask(nn.Module):
    """A Task training Theseus successors: ``inner``'s ``(losses, metrics)``, with the successors kept in the
    graph on a step where every module drew its frozen predecessor (:func:`with_successors_in_graph`)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self._successors = successor_parameters(inner)  # a plain list: the parameters are registered in inner

    def forward(self, batch: Any) -> tuple[dict[str, Tensor], dict[str, float]]:
        losses, metrics = self.inner(batch)
        if losses and not any(v.requires_grad for v in losses.values()):
            first = next(iter(losses))
            losses = {**losses, first: with_successors_in_graph(losses[first], self._successors)}
        return losses, metrics
