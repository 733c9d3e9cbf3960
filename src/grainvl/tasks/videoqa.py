"""Video question answering (MSRVTT-QA / MSVD-QA) as X²-VLM does it: classification over ``ans2label``.

Official ``VQA_msrvtt.py`` / ``XVLMForClassification`` (xvlm.md §4.1, following ClipBERT): the
clip's ``frame_len`` frames are encoded one by one and averaged per token (``encode_video``), the
question is fused with them by the text + fusion layers, and ``build_mlp(H, num_labels)`` on the
fusion ``[CLS]`` is trained with cross-entropy; answers outside ``ans2label`` get label -100 in
training (ignored) and count as wrong at test time. Metric: accuracy (``acc``, percent).

Files come from :mod:`grainvl.data.layout` like every task's: the world's
``annotations/msrvtt/msrvtt_qa_{split}.jsonl`` and ``ans2label.json``, the official names
(``msrvtt_qa_{split}.json[l]``, ``train_ans2label.json``) or an X²-VLM config (``train_file``,
``valid_file``, ``test_file``, ``ans2label_file``, ``img_rdir``); videos are
folders of frames (``videos/video{id}/``) or X²-VLM's JSON lists of base64 frames. Predictions:
``videoqa_result_{split}.json`` ``[{"index", "video_id", "question", "answer", "pred"}]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from grainvl.data.downstream import make_loader
from grainvl.data.downstream_gen import VideoQADataset
from grainvl.data.formats import msrvtt
from grainvl.data.iterators import StatefulIterator
from grainvl.data.layout import layout_for
from grainvl.data.masking import IGNORE_INDEX
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


def videoqa_file(world: Path, split: str) -> list[Path]:
    """The files of a video-QA split (:mod:`grainvl.data.layout`; FileNotFoundError saying where it looked)."""
    return data_files(world, "videoqa", split)


def ans2label_file(world: Path) -> Path:
    """The ``{answer: label}`` file of a data root (FileNotFoundError when there is none)."""
    path = layout_for(world).ans2label()
    if path is None:
        raise FileNotFoundError(f"videoqa: no ans2label.json / train_ans2label.json under {world} (or ans2label_file)")
    return path


class VideoQAModule(TaskModule):
    """The model + ``cls_head = build_mlp(H, num_labels)`` on the fusion ``[CLS]`` of question x video."""

    def __init__(self, model: XVLM, num_labels: int) -> None:
        super().__init__(model)
        if num_labels < 1:
            raise ValueError("video QA needs at least one answer label")
        self.cls_head = build_mlp(model.config.text.hidden_size, num_labels)
        self.cls_head.apply(_init_linear)

    def logits(self, video: torch.Tensor, question_ids: torch.Tensor, question_atts: torch.Tensor) -> torch.Tensor:
        """video (B, F, 3, R, R), question (B, L) -> (B, num_labels)."""
        vis, vis_atts = self.model.encode_video(video)  # (B, 1+N, Dv): frames averaged per token
        fused = self.model.encode_multimodal(question_ids, question_atts, vis, vis_atts)  # (B, L, H)
        return self.cls_head(fused[:, 0])

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        logits = self.logits(batch["video"], batch["question_ids"], batch["question_atts"])
        labels = batch["labels"]
        if bool(labels.eq(IGNORE_INDEX).all()):  # no answer of this batch is in ans2label: a zero loss, still a graph
            return {"videoqa_loss": logits.sum() * 0.0}, {}
        loss = F.cross_entropy(logits, labels, ignore_index=IGNORE_INDEX)
        return {"videoqa_loss": loss}, {"train_acc": float((logits.argmax(-1) == labels).float().mean())}


class VideoQATask(DownstreamTask):
    """MSRVTT-QA-format video QA; primary metric ``acc`` (percent)."""

    name = "videoqa"
    primary_metric = "acc"
    default_options: ClassVar[dict[str, Any]] = {
        "ans2label": None,  # {answer: label}; filled from the world's ans2label.json at build and saved
    }

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> VideoQAModule:
        if self.options["ans2label"] is None:
            self.options["ans2label"] = msrvtt.read_ans2label(ans2label_file(world))
        return VideoQAModule(model, len(self.options["ans2label"]))

    def _dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, train: bool) -> VideoQADataset:
        dcfg = model_data_config(module.model, augment=self.data.augment and train)
        limit = self.data.max_train_samples if train else self.data.max_eval_samples
        path = videoqa_file(world, split)
        return VideoQADataset(
            path, image_root(world, "videoqa"), tokenizer, dcfg, self.options["ans2label"], train, self.data.seed, limit
        )

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        data = self._dataset(module, tokenizer, world, "train", True)
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, VideoQAModule)
        module.eval()
        split = resolve_split(split)
        data = self._dataset(module, tokenizer, world, split, False)
        labels = {label: answer for answer, label in self.options["ans2label"].items()}
        predictions = []
        for indices, _, batch in self.eval_batches(module, data):
            best = module.logits(batch["video"], batch["question_ids"], batch["question_atts"]).argmax(-1)
            for i, label in zip(indices, best.tolist()):
                record = data.records[i]
                predictions.append(
                    {
                        "index": i,
                        "video_id": record["video_id"],
                        "question": record["question"],
                        "answer": record["answer"],
                        "pred": labels[label],
                    }
                )
        merged = self.publish(predictions, "index", out_dir, f"videoqa_result_{split}.json")
        if not merged:
            return {}
        correct = sum(p["pred"] == p["answer"] for p in merged)
        return {"acc": 100.0 * correct / len(merged)}

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, VideoQAModule)
        data = self._dataset(module, tokenizer, world, latency_split(world, "videoqa"), False)
        batch = self.latency_batch(module, data, batch_size)
        return inference_call(
            module, lambda: module.logits(batch["video"], batch["question_ids"], batch["question_atts"])
        )
