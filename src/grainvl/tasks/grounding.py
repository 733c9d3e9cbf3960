"""Visual grounding with the box head (X-VLM ``Grounding_bbox.py`` / ``XVLMForGrounding``, xvlm.md §4.1).

The referring expression goes through the text layers, is fused with the **whole** image, and the
pre-trained ``bbox_head`` predicts a normalised ``(cx, cy, w, h)`` (sigmoid) from the fusion
``[CLS]``; the loss is L1 + GIoU (the pre-training box loss). Evaluation de-normalises the box by
the original width/height, converts it to ``[x, y, w, h]`` and counts it correct when the
inclusive-pixel IoU with the ground truth is >= 0.5 (official ``grounding_eval_bbox`` / VLUE's
``grounding_eval_bbox_vlue``): :mod:`grainvl.metrics.grounding`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from grainvl.data.downstream import GroundingTrainDataset, make_loader
from grainvl.data.iterators import StatefulIterator
from grainvl.data.pretrain import GroundingEval, PretrainDataConfig
from grainvl.losses.bbox import bbox_loss
from grainvl.metrics.grounding import IOU_THRESHOLD, denormalize_cxcywh, iou_xywh
from grainvl.models.xvlm import XVLM
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


class GroundingModule(TaskModule):
    """Text fused with the whole image → ``bbox_head`` → (B, 4) normalised (cx, cy, w, h); L1 + GIoU."""

    def predict(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        vis, vis_atts = self.model.encode_image(image)  # (B, 1+N, D)
        fused = self.model.fuse(self.model.encode_text(text_ids, text_atts), text_atts, vis, vis_atts)
        return self.model.predict_box(fused, vis)  # (B, 4)

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        pred = self.predict(batch["image"], batch["text_ids"], batch["text_atts"])
        l1, giou = bbox_loss(pred, batch["target_box"])
        return {"bbox_loss": l1, "giou_loss": giou}, {}


def grounding_metrics(pred_xywh: np.ndarray, gt_xywh: np.ndarray) -> dict[str, float]:
    """``acc@0.5`` and the mean IoU ``miou`` (both percent, inclusive-pixel IoU) of (N, 4) xywh boxes."""
    iou = np.atleast_1d(iou_xywh(pred_xywh, gt_xywh))
    return {"acc@0.5": 100.0 * float(np.mean(iou >= IOU_THRESHOLD)), "miou": 100.0 * float(np.mean(iou))}


class GroundingTask(DownstreamTask):
    """RefCOCO+ box grounding (world: ``annotations/refcoco+/refcoco+_{split}.json``).

    Predictions (``grainvl score grounding``'s format): ``[{ref_id, bbox: [x, y, w, h], gt_box, iou}]`` in
    original-image pixels.
    ``careful_hflip`` (official refcoco config: True) keeps texts that mention left/right unflipped.
    """

    name = "grounding"
    primary_metric = "acc@0.5"
    default_options: ClassVar[dict[str, Any]] = {"careful_hflip": True}

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> GroundingModule:
        return GroundingModule(model)

    def data_config(self, module: TaskModule, augment: bool) -> PretrainDataConfig:
        """The model's image geometry (a DaVinci variant overrides this); ``careful_hflip`` as the option says."""
        return model_data_config(module.model, augment=augment, careful_hflip=bool(self.options["careful_hflip"]))

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        dcfg = self.data_config(module, cfg.augment)
        path, root = data_files(world, self.name, "train"), image_root(world, self.name)
        data = GroundingTrainDataset(path, root, tokenizer, dcfg, cfg.seed, cfg.max_train_samples)
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_data(self, module: TaskModule, tokenizer: Any, world: Path, split: str) -> GroundingEval:
        files = data_files(world, self.name, split)
        if len(files) > 1:
            raise ValueError(f"grounding: give one file per evaluation split, got {[str(f) for f in files]}")
        data = GroundingEval(files[0], image_root(world, self.name), tokenizer, self.data_config(module, False))
        if self.data.max_eval_samples > 0:
            data.records = data.records[: self.data.max_eval_samples]
            data.positions = data.positions[: self.data.max_eval_samples]
        return data

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, GroundingModule)
        module.eval()
        data = self.eval_data(module, tokenizer, world, split)
        predictions = []
        for chunk, items, batch in self.eval_batches(module, data):
            pred = module.predict(batch["image"], batch["text_ids"], batch["text_atts"])  # (B, 4) normalised
            width = [item["orig_size"][0] for item in items]
            height = [item["orig_size"][1] for item in items]
            boxes = denormalize_cxcywh(pred.cpu(), width, height)  # (B, 4) [x, y, w, h] original pixels
            pred_xywh = np.array([box.tolist() for box in boxes])
            gt_xywh = np.array([item["orig_box"].tolist() for item in items])
            ious = np.atleast_1d(iou_xywh(pred_xywh, gt_xywh))
            for i, item, pb, gb, iou in zip(chunk, items, pred_xywh, gt_xywh, ious):
                predictions.append(
                    {
                        "index": i,
                        "ref_id": item["ref_id"],
                        "bbox": pb.tolist(),
                        "gt_box": gb.tolist(),
                        "iou": float(iou),
                    }
                )
        merged = self.publish(predictions, "index", out_dir, f"{self.name}_{resolve_split(split)}.json")
        if not merged:
            return {}
        pred_boxes = np.array([p["bbox"] for p in merged])
        gt_boxes = np.array([p["gt_box"] for p in merged])
        return grounding_metrics(pred_boxes, gt_boxes)

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, GroundingModule)
        data = self.eval_data(module, tokenizer, world, latency_split(world, self.name))
        batch = self.latency_batch(module, data, batch_size)
        return inference_call(module, lambda: module.predict(batch["image"], batch["text_ids"], batch["text_atts"]))
