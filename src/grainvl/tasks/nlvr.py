"""NLVR2: is a sentence true of a pair of images? (X²-VLM ``NLVR.py`` / ``XVLMForNLVR``, xvlm.md §4.1).

The sentence is encoded once by the text-only layers and fused with **each image separately**; the
two fusion ``[CLS]`` states are concatenated, ``(B, 2H)``, and classified by the official head MLP
``build_mlp(2H, 2)`` with cross-entropy. Accuracy is the metric (labels "True"/"False" → 1/0).

X-VLM v1 had an extra NLVR "pre-training" stage (a 3-way text-to-image-pair task); the X²-VLM
maintainers dropped it ("no NLVR pre-training anymore"), and so do we.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from grainvl.data.downstream import NLVRDataset, make_loader
from grainvl.data.iterators import StatefulIterator
from grainvl.models.xvlm import XVLM, _init_linear, build_mlp
from grainvl.tasks.base import (
    DataOptions,
    DownstreamTask,
    TaskModule,
    data_files,
    image_root,
    inference_call,
    latency_split,
    model_data_config,
    resolve_split,
)


class NLVRModule(TaskModule):
    """X²-VLM NLVR2 head: concat of the two per-image fusion CLS states → ``cls_head`` (2 classes)."""

    def __init__(self, model: XVLM) -> None:
        super().__init__(model)
        self.cls_head = build_mlp(2 * model.config.text.hidden_size, 2)
        self.cls_head.apply(_init_linear)

    def logits(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """image (B, 2, 3, R, R) [left, right]; text (B, L) → (B, 2) logits (index 1 = "True")."""
        b = image.shape[0]
        vis, vis_atts = self.model.encode_image(image.transpose(0, 1).flatten(0, 1))  # (2B, 1+N, D): lefts, rights
        left, right = vis[:b], vis[b:]
        text = self.model.encode_text(text_ids, text_atts)  # (B, L, H): the text layers run once
        cls_left = self.model.fuse(text, text_atts, left, vis_atts[:b])[:, 0]  # (B, H)
        cls_right = self.model.fuse(text, text_atts, right, vis_atts[b:])[:, 0]  # (B, H)
        return self.cls_head(torch.cat([cls_left, cls_right], dim=-1))  # (B, 2)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        logits = self.logits(batch["image"], batch["text_ids"], batch["text_atts"])
        loss = F.cross_entropy(logits, batch["label"])
        acc = float((logits.argmax(-1) == batch["label"]).float().mean())
        return {"nlvr_loss": loss}, {"train_acc": acc}


class NLVR2Task(DownstreamTask):
    """NLVR2 (world: ``annotations/nlvr2/nlvr_{split}.json``); predictions: one bool per pair, in file order."""

    name = "nlvr2"
    primary_metric = "acc"
    default_options: ClassVar[dict[str, Any]] = {}

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> NLVRModule:
        return NLVRModule(model)

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        dcfg = model_data_config(module.model, augment=cfg.augment)
        data = NLVRDataset(
            data_files(world, self.name, "train"),
            image_root(world, self.name),
            tokenizer,
            dcfg,
            True,
            cfg.seed,
            cfg.max_train_samples,
        )
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_data(self, module: TaskModule, tokenizer: Any, world: Path, split: str) -> NLVRDataset:
        dcfg = model_data_config(module.model, augment=False)
        path, root = data_files(world, self.name, split), image_root(world, self.name)
        return NLVRDataset(path, root, tokenizer, dcfg, False, 0, self.data.max_eval_samples)

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, NLVRModule)
        module.eval()
        data = self.eval_data(module, tokenizer, world, split)
        predictions = []
        for indices, _, batch in self.eval_batches(module, data):
            pred = module.logits(batch["image"], batch["text_ids"], batch["text_atts"]).argmax(-1)
            for i, p, y in zip(indices, pred.tolist(), batch["label"].tolist()):
                predictions.append({"index": i, "pred": bool(p), "label": bool(y)})
        # ``grainvl score nlvr2``'s format: one label per ground-truth pair, in file order.
        name = f"{self.name}_{resolve_split(split)}.json"
        merged = self.publish(predictions, "index", out_dir, name, view=lambda rows: [p["pred"] for p in rows])
        if not merged:
            return {}
        return {"acc": 100.0 * sum(p["pred"] == p["label"] for p in merged) / len(merged)}

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, NLVRModule)
        data = self.eval_data(module, tokenizer, world, latency_split(world, self.name))
        batch = self.latency_batch(module, data, batch_size)
        return inference_call(module, lambda: module.logits(batch["image"], batch["text_ids"], batch["text_atts"]))
