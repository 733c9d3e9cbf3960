"""Datasets and collators of the generative / answer tasks: VQA, captioning (UniLM-style MLM) and video QA.

Records come from the official-format readers (:mod:`grainvl.data.formats`); images and frames are
decoded lazily per sample. Every random choice of a training sample is drawn from a
``random.Random`` seeded by ``(seed, task, epoch, index)``: the datasets are
:class:`grainvl.data.downstream.RecordsDataset` s (``sample(index, epoch)`` + ``collate``) served by
its :func:`~grainvl.data.downstream.make_loader`, so a resumed run sees exactly the same samples.

* VQA (xvlm.md §3.2, official ``vqa_dataset``): question through :func:`pre_question`; training
  answers are the question's distinct answers weighted by their share of the annotators (VG
  answers weight 0.5); no horizontal flip when the question or an answer says left/right
  (``careful_hflip``, as the official VQA data always does).
* Captioning (official ``coco_karpathy_train_mlm`` with ``apply_FG_free``): ``[CLS] prompt caption
  [SEP]``, MLM positions chosen after the prompt, and for each one a ``[MASK]`` inserted *before*
  the token, sharing its position id; the attention mask is causal and no token attends to a
  ``[MASK]`` but the ``[MASK]`` itself (:func:`fg_free_sequence`), so training matches decoding.
* Video QA (official ``msrvtt_qa_dataset``): ``frame_len`` frames per clip, one shared transform,
  the answer's ``ans2label`` index (-100 when the answer is not in it).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from grainvl.data.downstream import RecordsDataset, open_frames
from grainvl.data.formats import albef, msrvtt
from grainvl.data.masking import IGNORE_INDEX, TextMaskingGenerator, pre_question
from grainvl.data.pretrain import PretrainDataConfig, flip_transforms, mentions_left_right, open_rgb
from grainvl.data.transforms import video_transform
from grainvl.errors import DataError

Sample = dict[str, Any]


# ---------------------------------------------------------------------------------------------- shared
def tokenize(tokenizer: Any, texts: Sequence[str], max_tokens: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``[CLS] pieces [SEP]`` per text, padded to the longest -> (ids (B, L), attention mask (B, L)) long."""
    out = tokenizer(
        list(texts), padding="longest", truncation=max_tokens is not None, max_length=max_tokens, return_tensors="pt"
    )
    return out["input_ids"].long(), out["attention_mask"].long()


class _ImageRecords(RecordsDataset):
    """A :class:`RecordsDataset` of single-image records with a flipping and a non-flipping transform."""

    roots: ClassVar[dict[str, Path]] = {}  # image roots by a record's "dataset" (VQA's Visual Genome records: vg_root)

    def _setup(self) -> None:
        self.transform, self.transform_no_flip = flip_transforms("finetune" if self.train else "test", self.cfg)

    def image(self, index: int, epoch: int, flip: bool, text: str | None = None) -> tuple[torch.Tensor, str | None]:
        """The record's image (3, R, R) under the split's transform; ``text`` has left/right swapped on a flip."""
        record = self.records[index]
        root = self.roots.get(record.get("dataset", ""), self.root)
        picture = open_rgb(record["image"], root, True, self.path, self.positions[index])
        transform = self.transform if flip else self.transform_no_flip
        tensor, _, text, _ = transform(picture, None, text, rng=self.rng(index, epoch))
        return tensor, text


# ---------------------------------------------------------------------------------------------- VQA
def answer_weights(record: dict[str, Any]) -> tuple[list[str], list[float]]:
    """Official training targets: distinct answers with their share of annotators (VG answers: 0.5)."""
    answers = record["answer"]
    if record.get("dataset") == "vg" or isinstance(answers, str):
        return [answers if isinstance(answers, str) else answers[0]], [0.5 if record.get("dataset") == "vg" else 1.0]
    weights: dict[str, float] = {}
    for answer in answers:
        weights[answer] = weights.get(answer, 0.0) + 1.0 / len(answers)
    return list(weights), list(weights.values())


class VQADataset(_ImageRecords):
    """X-VLM ``vqa_{split}.json`` records -> ``{"image", "question", "question_id"[, "answers", "weights"]}``.

    ``answer_index`` (the answer list) adds ``answer_targets`` to training batches (classifier head).
    """

    kind = "vqa"

    def __init__(
        self,
        path: Path,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        train: bool,
        seed: int = 0,
        max_records: int = 0,
        answer_index: dict[str, int] | None = None,
        roots: dict[str, Path] | None = None,
    ) -> None:
        self.roots = dict(roots or {})
        super().__init__(path, root, tokenizer, cfg, albef.check_vqa_record, train, seed, max_records)
        if train:
            for record, where in zip(self.records, self.positions):
                if "answer" not in record:
                    raise DataError(self.path, where, "a training question needs 'answer'")
        # Test questions are not cut (official: max_ques_words 50 at test time).
        self.max_words = cfg.max_words if train else max(cfg.max_words, 50)
        self.answer_index = answer_index

    def sample(self, index: int, epoch: int) -> Sample:
        record = self.records[index]
        question = pre_question(record["question"], self.max_words)
        sample: Sample = {"question": question, "question_id": record["question_id"]}
        if self.train:
            answers, weights = answer_weights(record)
            # careful_hflip: no mirror when the question or an answer says left/right.
            flip = not any(mentions_left_right(text, "en") for text in [record["question"], *answers])
            sample["image"], _ = self.image(index, epoch, flip)
            sample["answers"], sample["weights"] = answers, weights
        else:
            sample["image"], _ = self.image(index, epoch, False)
        return sample

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        return collate_vqa(samples, self.tokenizer, None if not self.train else self.cfg.max_tokens, self.answer_index)


def collate_vqa(
    samples: Sequence[Sample], tokenizer: Any, max_tokens: int | None, answer_index: dict[str, int] | None = None
) -> dict[str, Any]:
    """VQA batch: ``image`` (B, 3, R, R), ``question_ids``/``question_atts`` (B, L), ``question_id`` list.

    Training adds ``answer_ids``/``answer_atts`` (A, La) for every (question, answer) pair in order,
    ``answer_weights`` (A,), ``answer_counts`` (B,) (answers per question) and, with ``answer_index``
    (the answer list), ``answer_targets`` (B, num_answers): the summed weights of listed answers.
    """
    batch: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
    batch["question_ids"], batch["question_atts"] = tokenize(tokenizer, [s["question"] for s in samples], max_tokens)
    batch["question_id"] = [s["question_id"] for s in samples]
    if "answers" in samples[0]:
        answers = [a for s in samples for a in s["answers"]]
        batch["answer_ids"], batch["answer_atts"] = tokenize(tokenizer, answers, None)
        batch["answer_weights"] = torch.tensor([w for s in samples for w in s["weights"]], dtype=torch.float32)
        batch["answer_counts"] = torch.tensor([len(s["answers"]) for s in samples], dtype=torch.long)
        if answer_index is not None:
            targets = torch.zeros(len(samples), len(answer_index))
            for row, s in enumerate(samples):
                for answer, weight in zip(s["answers"], s["weights"]):
                    if answer in answer_index:
                        targets[row, answer_index[answer]] += weight
            batch["answer_targets"] = targets
    return batch


# ---------------------------------------------------------------------------------------------- captioning
def fg_free_sequence(
    ids: Sequence[int], masked: Sequence[int], mask_id: int
) -> tuple[list[int], list[int], list[int], list[int]]:
    """Insert ``[MASK]`` before each masked token (the official ``preprocess_fg_free``).

    Args:
        ids: ``[CLS] prompt caption [SEP]`` token ids.
        masked: positions into ``ids`` to predict.
    Returns:
        (new ids, position ids (a mask shares its token's position), indices of the masks in the new
        sequence, the ids each mask predicts).
    """
    chosen = set(masked)
    out_ids, positions, mask_index, labels = [], [], [], []
    for p, token in enumerate(ids):
        if p in chosen:
            mask_index.append(len(out_ids))
            labels.append(token)
            out_ids.append(mask_id)
            positions.append(p)
        out_ids.append(token)
        positions.append(p)
    return out_ids, positions, mask_index, labels


def fg_free_attention(length: int, mask_index: Sequence[int]) -> torch.Tensor:
    """(L, L) bool: causal, no query sees a ``[MASK]`` column except that ``[MASK]`` itself."""
    keep = torch.ones(length, length, dtype=torch.bool).tril()
    if mask_index:
        index = torch.tensor(list(mask_index))
        keep[:, index] = False
        keep[index, index] = True
    return keep


class CaptionTrainDataset(_ImageRecords):
    """Karpathy ``coco_karpathy_train.json`` (one caption per record) -> FG-free MLM samples."""

    kind = "caption"

    def __init__(
        self,
        path: Path,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        prompt: str,
        mask_prob: float,
        max_masks: int,
        seed: int = 0,
        max_records: int = 0,
    ) -> None:
        super().__init__(path, root, tokenizer, cfg, albef.check_caption_record, True, seed, max_records)
        for record, where in zip(self.records, self.positions):
            if not isinstance(record["caption"], str):
                raise DataError(self.path, where, "a training caption record needs one 'caption' string")
        self.prompt_ids = tokenizer.encode(prompt.strip(), add_special_tokens=False) if prompt.strip() else []
        self.max_masks = max_masks
        self.masker = TextMaskingGenerator(
            tokenizer, mask_prob, max_masks, cfg.skipgram_prb, cfg.skipgram_size, cfg.mask_whole_word
        )

    def sample(self, index: int, epoch: int) -> Sample:
        image, caption = self.image(index, epoch, True, self.records[index]["caption"])  # a flip swaps left/right
        pieces = self.tokenizer.encode(caption, add_special_tokens=False)
        if not pieces:
            raise DataError(self.path, self.positions[index], f"caption {caption!r} has no tokens")
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        body = [cls_id, *pieces, sep_id][: self.cfg.max_tokens - len(self.prompt_ids)]
        # Masks are chosen over [CLS] caption [SEP] and shifted past the prompt: the official
        # ``num_source_tokens`` rule (the prompt is never a target, [SEP] can be). The masker's
        # 80/10/10 corruption is not used: FG-free inserts a [MASK] instead of replacing the token.
        masker = copy.copy(self.masker)
        masker.rng = random.Random(f"grainvl:caption-mask:{self.seed}:{epoch}:{index}")  # apart from the image's
        _, chosen, _ = masker(body)
        ids = body[:1] + self.prompt_ids + body[1:]
        masked = [p + len(self.prompt_ids) for p in chosen]
        new_ids, positions, mask_index, labels = fg_free_sequence(ids, masked, self.tokenizer.mask_token_id)
        return {"image": image, "ids": new_ids, "positions": positions, "mask_index": mask_index, "labels": labels}

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        return collate_caption_train(samples, self.tokenizer.pad_token_id, self.max_masks)


def collate_caption_train(samples: Sequence[Sample], pad_id: int, max_masks: int) -> dict[str, torch.Tensor]:
    """``image`` (B, 3, R, R), ``text_ids``/``position_ids`` (B, L), ``text_atts`` (B, L, L) bool,
    ``masked_pos``/``masked_ids`` (B, M) (padding: position 0, label -100)."""
    length = max(len(s["ids"]) for s in samples)
    b = len(samples)
    ids = torch.full((b, length), pad_id, dtype=torch.long)
    positions = torch.zeros(b, length, dtype=torch.long)
    atts = torch.zeros(b, length, length, dtype=torch.bool)
    masked_pos = torch.zeros(b, max_masks, dtype=torch.long)
    masked_ids = torch.full((b, max_masks), IGNORE_INDEX, dtype=torch.long)
    for row, s in enumerate(samples):
        n = len(s["ids"])
        ids[row, :n] = torch.tensor(s["ids"])
        # Padding continues the numbering (official); causal masking keeps it invisible to real tokens.
        positions[row] = torch.tensor(
            s["positions"] + list(range(s["positions"][-1] + 1, s["positions"][-1] + 1 + length - n))
        )
        atts[row] = torch.ones(length, length, dtype=torch.bool).tril()
        atts[row, :n, :n] = fg_free_attention(n, s["mask_index"])
        k = min(len(s["mask_index"]), max_masks)
        masked_pos[row, :k] = torch.tensor(s["mask_index"][:k], dtype=torch.long)
        masked_ids[row, :k] = torch.tensor(s["labels"][:k], dtype=torch.long)
    batch = {"image": torch.stack([s["image"] for s in samples]), "text_ids": ids, "position_ids": positions}
    batch.update({"text_atts": atts, "masked_pos": masked_pos, "masked_ids": masked_ids})
    return batch


class CaptionEvalDataset(_ImageRecords):
    """Karpathy val/test (or VLUE ``caption_vlue_test.json``) records -> ``{"image", "image_id"}``."""

    kind = "caption_eval"

    def __init__(self, path: Path, root: Path, tokenizer: Any, cfg: PretrainDataConfig, max_records: int = 0) -> None:
        super().__init__(path, root, tokenizer, cfg, albef.check_caption_record, False, 0, max_records)
        for record, where in zip(self.records, self.positions):
            if "image_id" not in record:
                raise DataError(self.path, where, "an evaluation caption record needs 'image_id'")

    def sample(self, index: int, epoch: int) -> Sample:
        return {"image": self.image(index, epoch, False)[0], "image_id": self.records[index]["image_id"]}

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        return {"image": torch.stack([s["image"] for s in samples]), "image_id": [s["image_id"] for s in samples]}


# ---------------------------------------------------------------------------------------------- video QA
class VideoQADataset(RecordsDataset):
    """MSRVTT-QA lines ``{video_id, question, answer}`` -> ``{"video" (F, 3, R, R), "question", "label", "index"}``."""

    kind = "videoqa"
    json_lines = False  # JSON lines (msrvtt_qa_*.jsonl) or one JSON list (msrvtt_qa_*.json): sniffed

    def __init__(
        self,
        path: Path,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        ans2label: dict[str, int],
        train: bool,
        seed: int = 0,
        max_records: int = 0,
    ) -> None:
        super().__init__(path, root, tokenizer, cfg, msrvtt.check_qa_record, train, seed, max_records)
        self.ans2label = ans2label

    def sample(self, index: int, epoch: int) -> Sample:
        record, where = self.records[index], self.positions[index]
        rng = self.rng(index, epoch) if self.train else None
        pictures = open_frames(self.root, record["video_id"], self.cfg.frame_len, rng, self.path, where)
        # No flip: answers such as "move left" would have to follow the mirror.
        video, _ = video_transform(
            pictures,
            self.cfg.resolution,
            rng,
            kind="finetune" if self.train else "test",
            mean=self.cfg.mean,
            std=self.cfg.std,
            hflip=False,
            augment=self.cfg.augment,
        )
        question = pre_question(record["question"], self.cfg.max_words)
        label = self.ans2label.get(record["answer"], IGNORE_INDEX)  # official: -100 for an answer outside ans2label
        return {"video": video, "question": question, "label": label, "index": index}

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        """``video`` (B, F, 3, R, R), ``question_ids``/``question_atts`` (B, L), ``labels`` (B,), ``index`` list."""
        batch: dict[str, Any] = {"video": torch.stack([s["video"] for s in samples])}
        questions = [s["question"] for s in samples]
        batch["question_ids"], batch["question_atts"] = tokenize(self.tokenizer, questions, self.cfg.max_tokens)
        batch["labels"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        batch["index"] = [s["index"] for s in samples]
        return batch
