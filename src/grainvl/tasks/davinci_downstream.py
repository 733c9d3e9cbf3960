"""DaVinci downstream tasks (davinci_cclm_vlue.md A.5): the same task names as X²-VLM's, DaVinci's heads.

The registry builds these when the model's family is ``"davinci"`` (:func:`grainvl.tasks.registry.get_task`).
Classification reads DaVinci the BART way: the **encoder** sees the image (or nothing) with an empty text
``[CLS] [SEP]``, the task text goes through the **decoder**, and the decoder state at its last real token
(``[SEP]``) is the pooled representation.

* ``captioning``: image + empty text in the encoder; the decoder models ``[CLS] a picture of <caption> [SEP]``
  with the prompt masked from the loss (label smoothing 0.1); beam search by :meth:`DaVinci.generate_text`
  (official ``gen_coco.py``: beam 2, 20 tokens, minimum 5); pycocoevalcap metrics via the captioning scorer.
* ``vqa``: image + question in the encoder, the answer ``[CLS] answer [SEP]`` in the decoder; loss
  ``-sum w·log p(answer)`` / B; test: first-token top-``k_test`` over the answer list, then full-answer
  log-likelihood re-ranking (official ``rank_answer``); the official VQA accuracy.
* ``nlvr2``: each image with an empty text, the sentence in the decoder; concat of both last-token states
  -> MLP(2H -> 2).
* ``ve``: visual entailment. The world has no SNLI-VE files, so the English XVNLI split is the stand-in
  (``annotations/iglue/xvnli/en``: train/dev/test; it has no OOD split). Hypothesis in the decoder -> MLP(H -> 3).
* ``linear_probe``: the model frozen (parameters and dropout); features = concat(encoder CLS, mean of the
  image-patch states, decoder last-token state after ``[CLS] a picture of``) (3H); one linear classifier per
  attribute of the image's largest object (shape, colour) and of its object count, labels from the world's
  ``annotations/pretrain/{split}/region.jsonl``.
* ``glue``: text only: the text (or pair) into the encoder *and* the decoder, last-token state -> MLP; one of
  the world's text tasks under ``text/glue/<name>`` (train.tsv / dev.tsv: ``id`` is dev, there is no OOD).

* ``retrieval``: no official DaVinci head (no ITC/ITM); generative scoring instead: a pair's score is the
  decoder's mean log-prob of ``<caption> [SEP]`` after ``[CLS] a picture of`` given image + empty text.
  Training: the captioning LM loss on matched pairs (+ an optional in-batch likelihood-ranking loss);
  test: every image × caption pair scored (each image encoded once), the official ``itm_eval`` metrics.

* ``grounding``: our addition (the paper and the official code have no grounding). The encoder reads the whole
  image and the referring expression (bidirectional, the role of X-VLM's fusion over text + whole image); a box
  head of X-VLM's ``bbox_head`` shape (``build_mlp(H, 4)``) on the image CLS state (encoder position 0) ->
  sigmoid -> normalised ``(cx, cy, w, h)``; L1 + GIoU. Evaluation, prediction file and metrics are
  :class:`~grainvl.tasks.grounding.GroundingTask`'s (``acc@0.5``, ``miou``, ``grounding_{split}.json``).
"""

from __future__ import annotations

import abc
import dataclasses
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.data.downstream import (
    EpochLoader,
    NLVRDataset,
    RetrievalEvalSet,
    RetrievalTrainDataset,
    make_loader,
    retrieval_eval_set,
)
from grainvl.data.downstream_gen import CaptionEvalDataset, CaptionTrainDataset, VQADataset
from grainvl.data.iterators import StatefulIterator
from grainvl.data.masking import IGNORE_INDEX
from grainvl.data.pretrain import PretrainDataConfig, open_rgb
from grainvl.data.transforms import build_transform
from grainvl.errors import DataError
from grainvl.metrics.retrieval import retrieval_metrics
from grainvl.models.davinci import STRIDE, DaVinci
from grainvl.models.decoder import SearchConfig
from grainvl.models.xvlm import build_mlp
from grainvl.tasks.base import (
    DataOptions,
    DownstreamTask,
    TaskModule,
    data_files,
    gather_predictions,
    has_split,
    image_root,
    inference_call,
    latency_split,
    module_device,
    resolve_split,
    shard_indices,
    write_json_result,
)
from grainvl.tasks.captioning import caption_file, caption_latency_call, evaluate_captions, label_smoothed_loss
from grainvl.tasks.grounding import GroundingModule, GroundingTask
from grainvl.tasks.iglue import XVNLI_CLASSES, XVNLIDataset, iglue_file
from grainvl.tasks.text_classification import (
    classification_metrics,
    encode_texts,
    load_glue_task,
    regression_metrics,
)
from grainvl.tasks.vqa import answer_latency_call, answer_list, evaluate_answers, vqa_file
from grainvl.utils.fileio import iter_jsonl

PROMPT = "a picture of "
PROBE_ATTRIBUTES = ("shape", "colour", "count")
# The world's English shape synonyms (data/world/lang_en.py): region captions may use either word.
SHAPE_SYNONYMS = {"rhombus": "diamond", "disc": "circle", "ellipse": "oval"}


# ---------------------------------------------------------------------------------------------- shared
def davinci_data_config(model: DaVinci, augment: bool = True) -> PretrainDataConfig:
    """The data geometry DaVinci expects: its training resolution, 16 px patches, pixels in [0, 1] (no mean/std)."""
    max_tokens = min(40, model.config.max_text_positions)
    return PretrainDataConfig(
        resolution=model.config.image_resolution,
        patch_size=STRIDE,
        max_tokens=max_tokens,
        max_words=max_tokens,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        augment=augment,
    )


def last_token_state(states: Tensor, atts: Tensor) -> Tensor:
    """The state at each row's last real token (``atts.sum - 1``, the ``[SEP]``): (B, L, H) -> (B, H)."""
    last = atts.long().sum(dim=1) - 1  # (B,)
    return states[torch.arange(states.shape[0], device=states.device), last]


class DaVinciModule(TaskModule):
    """A task module around a :class:`DaVinci` (``self.model``); heads are other sub-modules."""

    model: DaVinci

    def empty_text(self, batch_size: int, device: torch.device) -> Tensor:
        """``[CLS] [SEP]`` per row (B, 2): the encoder's text when the task text goes to the decoder."""
        cfg = self.model.config
        return torch.tensor([[cfg.cls_token_id, cfg.sep_token_id]], device=device).expand(batch_size, -1)

    def encode_image(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Image (B, 3, R, R) + empty text through the encoder -> states (B, 1+N+2, H), mask (B, 1+N+2)."""
        return self.model.encode(images, self.empty_text(images.shape[0], images.device))

    def decoder_readout(self, ids: Tensor, atts: Tensor, states: Tensor, enc_atts: Tensor) -> Tensor:
        """The decoder's last-token state of ``ids`` (B, L) given the encoder states: (B, H)."""
        return last_token_state(self.model.decoder_states(ids, atts, states, enc_atts), atts)


class DaVinciTask(DownstreamTask):
    """A DaVinci task: ``split_files`` says where each split lives (the recipes check them before step 1)."""

    family: ClassVar[str] = "davinci"

    def split_files(self, world: Path, split: str) -> list[Path]:
        """The split's annotation files ([] when the split does not exist); the layout's by default."""
        return data_files(world, self.name, split) if has_split(world, self.name, split) else []

    def data_config(self, module: TaskModule, train: bool) -> PretrainDataConfig:
        assert isinstance(module.model, DaVinci)
        return davinci_data_config(module.model, augment=self.data.augment and train)

    def limit(self, train: bool) -> int:
        return self.data.max_train_samples if train else self.data.max_eval_samples


def _pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Pad id lists to the longest -> (ids (B, L), mask (B, L)) long."""
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    atts = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        atts[i, : len(row)] = 1
    return ids, atts


# ---------------------------------------------------------------------------------------------- captioning
class DaVinciCaptionTrainData(CaptionTrainDataset):
    """Karpathy train records -> ``{"image", "ids": [CLS] prompt caption [SEP], "prompt": 1 + len(prompt)}``.

    The parent's reading and validation are reused; its FG-free masking is not (DaVinci is a plain LM).
    """

    def sample(self, index: int, epoch: int) -> dict[str, Any]:
        image, caption = self.image(index, epoch, True, self.records[index]["caption"])  # a flip swaps left/right
        pieces = self.tokenizer.encode(caption, add_special_tokens=False)
        if not pieces:
            raise DataError(self.path, self.positions[index], f"caption {caption!r} has no tokens")
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        ids = [*[cls_id, *self.prompt_ids, *pieces][: self.cfg.max_tokens - 1], sep_id]
        return {"image": image, "ids": ids, "prompt": 1 + len(self.prompt_ids)}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        ids, atts = _pad([s["ids"] for s in samples], self.tokenizer.pad_token_id or 0)  # (B, L)
        labels = ids[:, 1:].masked_fill(atts[:, 1:] == 0, IGNORE_INDEX)  # (B, L-1): state t predicts token t+1
        for row, s in enumerate(samples):
            labels[row, : s["prompt"] - 1] = IGNORE_INDEX  # the prompt is given, never a target
        return {"image": torch.stack([s["image"] for s in samples]), "ids": ids, "atts": atts, "labels": labels}


class DaVinciCaptionModule(DaVinciModule):
    """Captioning with DaVinci's own decoder; no parameters of its own."""

    def __init__(self, model: DaVinci, tokenizer: Any, prompt: str, label_smoothing: float, search: SearchConfig):
        super().__init__(model)
        self.tokenizer, self.label_smoothing, self.search = tokenizer, label_smoothing, search
        self.prompt_ids = tokenizer.encode(prompt.strip(), add_special_tokens=False) if prompt.strip() else []

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        states, enc_atts = self.encode_image(batch["image"])
        logits = self.model.decode(batch["ids"][:, :-1], batch["atts"][:, :-1], states, enc_atts)  # (B, L-1, V)
        loss = label_smoothed_loss(logits, batch["labels"], self.label_smoothing, self.model.config.cls_token_id)
        return {"caption_loss": loss}, {}

    @torch.no_grad()
    def generate(self, images: Tensor) -> list[str]:
        """Captions for images (B, 3, R, R): beam search after ``[CLS] a picture of`` (prompt not returned)."""
        sequences = self.model.generate_text(images, self.prompt_ids, self.search)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in sequences]


class DaVinciCaptioningTask(DaVinciTask):
    """Captioning (``annotations/captioning``); primary metric ``CIDEr`` (pycocoevalcap fraction)."""

    name = "captioning"
    primary_metric = "CIDEr"
    default_options: ClassVar[dict[str, Any]] = {
        "prompt": PROMPT,
        "label_smoothing": 0.1,
        "num_beams": 2,  # official gen_coco.py: beam 2, max 20, min 5, no n-gram blocking
        "max_length": 20,
        "min_length": 5,
        "length_penalty": 0.0,
        "no_repeat_ngram": 0,
        "meteor": True,
    }

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciCaptionModule:  # type: ignore[override]
        o = self.options
        search = SearchConfig(
            o["num_beams"], o["max_length"], o["min_length"], o["length_penalty"], o["no_repeat_ngram"]
        )
        return DaVinciCaptionModule(model, tokenizer, o["prompt"], o["label_smoothing"], search)

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        path, root = caption_file(world, "train"), image_root(world, "captioning")
        # 0.5 / 1: the parent's masking settings, never used (DaVinci reads the whole caption).
        data = DaVinciCaptionTrainData(
            path,
            root,
            tokenizer,
            self.data_config(module, True),
            self.options["prompt"],
            0.5,
            1,
            cfg.seed,
            cfg.max_train_samples,
        )
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def _eval_data(self, module: TaskModule, tokenizer: Any, world: Path, split: str) -> CaptionEvalDataset:
        path, root = caption_file(world, split), image_root(world, "captioning")
        return CaptionEvalDataset(path, root, tokenizer, self.data_config(module, False), self.data.max_eval_samples)

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, DaVinciCaptionModule)
        split = resolve_split(split)
        data = self._eval_data(module, tokenizer, world, split)
        return evaluate_captions(self, module, data, world, split, out_dir)

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, DaVinciCaptionModule)
        data = self._eval_data(module, tokenizer, world, latency_split(world, self.name))
        return caption_latency_call(self, module, data, batch_size)


# ---------------------------------------------------------------------------------------------- retrieval
def likelihood_ranking_loss(scores: Tensor, idx: Tensor, temp: float) -> Tensor:
    """Symmetric softmax ranking of pair scores (B, B) (rows images, columns captions), ``idx`` (B,) image ids.

    Captions of one image are all positives (soft targets, as ITC with ids): each image's softmax over the
    batch's captions and each caption's softmax over the batch's images, averaged.
    """
    positives = (idx[:, None] == idx[None, :]).to(scores.dtype)  # (B, B), symmetric
    targets = positives / positives.sum(dim=1, keepdim=True)
    logits = scores / temp
    i2t = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
    t2i = -(F.log_softmax(logits.t(), dim=1) * targets).sum(dim=1).mean()
    return (i2t + t2i) / 2


class DaVinciRetrievalModule(DaVinciModule):
    """Generative retrieval: a pair's score is the decoder's mean log-prob of the caption given the image.

    The encoder sees the image + empty text; the decoder reads ``[CLS] <prompt> <caption> [SEP]`` and the
    score averages log p over the caption's tokens and its ``[SEP]`` (the prompt is given, never scored).
    Training: label-smoothed LM loss on the matched pairs (as captioning) plus ``rank_weight`` ×
    :func:`likelihood_ranking_loss` over all B × B pairs of the batch (rank-local; B² decoder rows).
    """

    def __init__(
        self, model: DaVinci, tokenizer: Any, prompt: str, label_smoothing: float, rank_weight: float, rank_temp: float
    ) -> None:
        super().__init__(model)
        self.label_smoothing, self.rank_weight, self.rank_temp = label_smoothing, rank_weight, rank_temp
        self.prompt_ids = tokenizer.encode(prompt.strip(), add_special_tokens=False) if prompt.strip() else []

    def prompted(self, text_ids: Tensor, text_atts: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[CLS] caption [SEP]`` (B, L) -> decoder ids / mask (B, P+L) with the prompt after ``[CLS]``, and the
        scored-target mask (B, P+L-1) (target t+1 of state t: the caption and ``[SEP]``, not the prompt)."""
        b, p = text_ids.shape[0], len(self.prompt_ids)
        prompt = torch.tensor(self.prompt_ids, dtype=text_ids.dtype, device=text_ids.device).expand(b, p)
        ids = torch.cat([text_ids[:, :1], prompt, text_ids[:, 1:]], dim=1)  # (B, 1+P+L-1)
        atts = torch.cat([text_atts[:, :1], torch.ones_like(prompt), text_atts[:, 1:]], dim=1)
        scored = atts[:, 1:].bool().clone()  # (B, P+L-1)
        scored[:, :p] = False
        return ids, atts, scored

    def hidden(self, ids: Tensor, atts: Tensor, states: Tensor, enc_atts: Tensor) -> Tensor:
        """Teacher-forced decoder states (N, L-1, H); state t predicts token t+1 (row n: caption n, states n)."""
        return self.model.decoder_states(ids[:, :-1], atts[:, :-1], states, enc_atts)

    def mean_logprob(self, hidden: Tensor, ids: Tensor, scored: Tensor) -> Tensor:
        """Mean log p(target) over each row's scored targets: hidden (N, L-1, H), ids (N, L) -> (N,)."""
        # The LM head (a joint-vocabulary matmul) runs on scored targets only, not on padding or the prompt.
        logits = self.model.decoder.cls(hidden[scored]).float()  # (T, V)
        targets = ids[:, 1:][scored]  # (T,)
        token_logp = logits.gather(1, targets[:, None])[:, 0] - logits.logsumexp(dim=1)  # (T,)
        sums = token_logp.new_zeros(ids.shape[0]).index_add(0, scored.nonzero()[:, 0], token_logp)
        return sums / scored.sum(dim=1).clamp(min=1)  # (N,)

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        states, enc_atts = self.encode_image(batch["image"])  # (B, T, H)
        ids, atts, scored = self.prompted(batch["text_ids"], batch["text_atts"])
        b = ids.shape[0]
        if self.rank_weight == 0:
            hidden = self.hidden(ids, atts, states, enc_atts)  # (B, L-1, H)
            matched = torch.arange(b, device=ids.device)
        else:  # every (image i, caption j): row i·B + j; the matched pairs are rows i·B + i
            pair_ids, pair_atts = ids.repeat(b, 1), atts.repeat(b, 1)  # (B², L)
            states2, enc_atts2 = states.repeat_interleave(b, 0), enc_atts.repeat_interleave(b, 0)  # (B², T, H)
            hidden = self.hidden(pair_ids, pair_atts, states2, enc_atts2)  # (B², L-1, H)
            matched = torch.arange(b, device=ids.device) * (b + 1)
        labels = ids[:, 1:].masked_fill(~scored, IGNORE_INDEX)  # (B, L-1)
        logits = self.model.decoder.cls(hidden[matched])  # (B, L-1, V)
        cls_id = self.model.config.cls_token_id
        losses = {"caption_loss": label_smoothed_loss(logits, labels, self.label_smoothing, cls_id)}
        if self.rank_weight == 0:
            return losses, {}
        scores = self.mean_logprob(hidden, ids.repeat(b, 1), scored.repeat(b, 1)).view(b, b)  # (B img, B cap)
        losses["rank_loss"] = self.rank_weight * likelihood_ranking_loss(scores, batch["idx"], self.rank_temp)
        return losses, {"rank_acc": float((scores.argmax(dim=1) == torch.arange(b, device=ids.device)).float().mean())}

    @torch.no_grad()
    def score_matrix(self, images: Tensor, text_ids: Tensor, text_atts: Tensor, pair_batch: int) -> Tensor:
        """Scores of every (image, caption): images (Ni, 3, R, R), captions (Nt, L) -> (Ni, Nt) mean log-probs.

        Each image is encoded once; the decoder runs over ``pair_batch`` captions at a time against its states.
        """
        states, enc_atts = self.encode_image(images)  # (Ni, T, H)
        ids, atts, scored = self.prompted(text_ids, text_atts)  # (Nt, L)
        rows = []
        for i in range(states.shape[0]):
            row = []
            for start in range(0, ids.shape[0], pair_batch):
                chunk = slice(start, start + pair_batch)
                c_ids, n = ids[chunk], ids[chunk].shape[0]
                hidden = self.hidden(
                    c_ids, atts[chunk], states[i : i + 1].expand(n, -1, -1), enc_atts[i : i + 1].expand(n, -1)
                )
                row.append(self.mean_logprob(hidden, c_ids, scored[chunk]))  # (n,)
            rows.append(torch.cat(row))
        return torch.stack(rows)  # (Ni, Nt)


class DaVinciRetrievalTask(DaVinciTask):
    """Image–text retrieval by caption likelihood on the X²-VLM retrieval files; ``r_mean`` (percent).

    Every image × caption pair is scored (no shortlist: no cheaper score is faithful to the likelihood), and
    the metrics are :func:`~grainvl.metrics.retrieval.retrieval_metrics` (official ``itm_eval``) on that matrix.
    """

    name = "retrieval"
    primary_metric = "r_mean"
    default_options: ClassVar[dict[str, Any]] = {
        "prompt": PROMPT,
        "label_smoothing": 0.1,
        "rank_weight": 0.0,
        "rank_temp": 0.1,
        "pair_batch": 256,  # decoder rows per pass at test time (one image against up to 256 captions)
        "top_k": 128,  # entries per ranked list in the prediction file (the metrics use the full matrix)
    }

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciRetrievalModule:  # type: ignore[override]
        o = self.options
        return DaVinciRetrievalModule(
            model, tokenizer, o["prompt"], o["label_smoothing"], o["rank_weight"], o["rank_temp"]
        )

    def data_config(self, module: TaskModule, train: bool) -> PretrainDataConfig:
        # Captions leave room for the prompt within the decoder's text positions.
        assert isinstance(module, DaVinciRetrievalModule)
        cfg = super().data_config(module, train)
        room = module.model.config.max_text_positions - len(module.prompt_ids)
        return dataclasses.replace(cfg, max_tokens=min(cfg.max_tokens, room), max_words=min(cfg.max_words, room))

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        files, root = data_files(world, self.name, "train"), image_root(world, self.name)
        dcfg = self.data_config(module, True)
        data = RetrievalTrainDataset(files, root, tokenizer, dcfg, False, cfg.seed, cfg.max_train_samples)
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_set(self, module: TaskModule, tokenizer: Any, world: Path, split: str) -> RetrievalEvalSet:
        files, root = data_files(world, self.name, split), image_root(world, self.name)
        return retrieval_eval_set(files, root, tokenizer, self.data_config(module, False), False, self.limit(False))

    @torch.no_grad()
    def score_rows(self, module: DaVinciRetrievalModule, data: RetrievalEvalSet) -> list[dict[str, Any]]:
        """This rank's image rows of the score matrix: ``{"row": image, "score": [Nt floats]}``."""
        device, gallery = module_device(module), data.data.images
        ids, atts = data.data.text_ids.to(device), data.data.text_atts.to(device)  # (Nt, L)
        mine, out = shard_indices(len(gallery)), []
        for start in range(0, len(mine), self.data.eval_batch_size):
            rows = mine[start : start + self.data.eval_batch_size]
            images = torch.stack([gallery[i] for i in rows]).to(device)  # (b, 3, R, R)
            scores = module.score_matrix(images, ids, atts, int(self.options["pair_batch"]))  # (b, Nt)
            out += [{"row": r, "score": s} for r, s in zip(rows, scores.cpu().tolist())]
        return out

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, DaVinciRetrievalModule)
        module.eval()
        split = resolve_split(split)
        data = self.eval_set(module, tokenizer, world, split)
        rows = gather_predictions(self.score_rows(module, data), "row")
        if not rows:  # ranks other than 0
            return {}
        scores = np.array([r["score"] for r in rows], dtype=np.float32)  # (Ni, Nt)
        img2txt, txt2img = data.data.image_text_index, data.data.text_image_index.tolist()
        metrics = retrieval_metrics(scores, scores.T, img2txt, txt2img)
        k = int(self.options["top_k"])  # ranked as retrieval_metrics ranks: np.argsort(row)[::-1]
        ranked = {
            "i2t": [np.argsort(row)[::-1][:k].tolist() for row in scores],
            "t2i": [np.argsort(row)[::-1][:k].tolist() for row in scores.T],
            "k_test": 0,
            "score": "caption_mean_logprob",
        }  # grainvl score retrieval's format (tasks/retrieval.py)
        write_json_result(out_dir, f"{self.name}_{split}.json", ranked)
        return metrics

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        """One batch of ``batch_size`` (image, caption) pairs scored by the decoder (the unit test-time work)."""
        assert isinstance(module, DaVinciRetrievalModule)
        data = self.eval_set(module, tokenizer, world, latency_split(world, self.name)).data
        n, device = len(data.images), module_device(module)
        images = torch.stack([data.images[i % n] for i in range(batch_size)]).to(device)  # (B, 3, R, R)
        texts = [data.image_text_index[i % n][0] for i in range(batch_size)]
        ids, atts, scored = module.prompted(data.text_ids[texts].to(device), data.text_atts[texts].to(device))

        def score() -> Tensor:
            states, enc_atts = module.encode_image(images)
            return module.mean_logprob(module.hidden(ids, atts, states, enc_atts), ids, scored)  # (B,)

        return inference_call(module, score)


# ---------------------------------------------------------------------------------------------- VQA
@torch.no_grad()
def rank_answers(
    decoder: nn.Module, answer_ids: Tensor, answer_atts: Tensor, states: Tensor, atts: Tensor, k: int
) -> tuple[Tensor, Tensor]:
    """Official ``rank_answer`` -> (answer indices (Q, k) best first, their log-likelihoods (Q, k)).

    ``decoder``: a :class:`~grainvl.models.decoder.TextDecoder` (``forward`` -> logits, ``sequence_logprob``).
    ``answer_ids`` (A, La) ``[CLS] answer [SEP] [PAD]..``; ``states`` (Q, T, H) with mask ``atts`` (Q, T).
    1. One decoder step from ``[CLS]``: log p(first answer token), (Q, A); keep the top k answers.
    2. The full log-likelihood of each kept answer, (Q, k); sort by it.
    """
    q, k = states.shape[0], min(k, answer_ids.shape[0])
    start = answer_ids[:1, :1].expand(q, 1)  # (Q, 1): [CLS]
    logits = decoder(start, torch.ones_like(start), states, atts)[:, 0]  # (Q, V)
    first = torch.log_softmax(logits.float(), dim=-1).index_select(1, answer_ids[:, 1])  # (Q, A)
    top_ids = first.topk(k, dim=1).indices  # (Q, k)
    ids, a_atts = answer_ids[top_ids].flatten(0, 1), answer_atts[top_ids].flatten(0, 1)  # (Q·k, La)
    scores = decoder.sequence_logprob(ids, a_atts, states.repeat_interleave(k, 0), atts.repeat_interleave(k, 0))
    scores, order = scores.view(q, k).sort(dim=1, descending=True)
    return top_ids.gather(1, order), scores


class DaVinciVQAModule(DaVinciModule):
    """Generative VQA: the answer list is ranked by the shared decoder; no parameters of its own."""

    def __init__(self, model: DaVinci, answers: list[str], tokenizer: Any, k_test: int) -> None:
        super().__init__(model)
        if not answers:
            raise ValueError("the VQA answer list is empty")
        self.answers, self.k_test = list(answers), k_test
        ids, atts = _pad([tokenizer.encode(a) for a in self.answers], tokenizer.pad_token_id or 0)  # (A, La)
        self.register_buffer("answer_ids", ids, persistent=False)
        self.register_buffer("answer_atts", atts, persistent=False)

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        states, atts = self.model.encode(batch["image"], batch["question_ids"], batch["question_atts"])
        counts = batch["answer_counts"]  # (B,): distinct answers per question
        logp = self.model.decoder.sequence_logprob(
            batch["answer_ids"],
            batch["answer_atts"],
            states.repeat_interleave(counts, dim=0),
            atts.repeat_interleave(counts, dim=0),
        )  # (A,)
        return {"vqa_loss": -(batch["answer_weights"] * logp).sum() / states.shape[0]}, {}

    @torch.no_grad()
    def rank(self, image: Tensor, question_ids: Tensor, question_atts: Tensor) -> tuple[Tensor, Tensor]:
        """-> (answer indices (B, k), their full log-likelihoods (B, k)), best first (:func:`rank_answers`)."""
        states, atts = self.model.encode(image, question_ids, question_atts)  # (B, T, H)
        return rank_answers(self.model.decoder, self.answer_ids, self.answer_atts, states, atts, self.k_test)

    def predict(self, image: Tensor, question_ids: Tensor, question_atts: Tensor) -> list[str]:
        best = self.rank(image, question_ids, question_atts)[0]
        return [self.answers[i] for i in best[:, 0].tolist()]


class DaVinciVQATask(DaVinciTask):
    """VQA (``annotations/vqa``, ``answer_list.json``); metric ``vqa_acc`` (percent, the official scorer)."""

    name = "vqa"
    primary_metric = "vqa_acc"
    default_options: ClassVar[dict[str, Any]] = {"k_test": 128, "answers": None}

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciVQAModule:  # type: ignore[override]
        if self.options["answers"] is None:  # recorded in task.json so a reload ranks the same list
            self.options["answers"] = answer_list(world)
        return DaVinciVQAModule(model, self.options["answers"], tokenizer, self.options["k_test"])

    def _dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, train: bool) -> VQADataset:
        roots = {"vg": image_root(world, "vqa", "vg")}
        dcfg, root = self.data_config(module, train), image_root(world, "vqa")
        return VQADataset(
            vqa_file(world, split), root, tokenizer, dcfg, train, self.data.seed, self.limit(train), None, roots
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
        assert isinstance(module, DaVinciVQAModule)
        split = resolve_split(split)
        return evaluate_answers(
            self, module, self._dataset(module, tokenizer, world, split, False), world, split, out_dir
        )

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, DaVinciVQAModule)
        data = self._dataset(module, tokenizer, world, latency_split(world, self.name), False)
        return answer_latency_call(self, module, data, batch_size)


# ---------------------------------------------------------------------------------------------- NLVR2 and VE
class DaVinciPairModule(DaVinciModule):
    """Sentence in the decoder per image, last-token states concatenated over ``images`` -> ``cls_head``."""

    def __init__(self, model: DaVinci, images: int, classes: int) -> None:
        super().__init__(model)
        self.images = images
        self.cls_head = build_mlp(images * model.config.hidden_size, classes)  # official MLP(n·H -> H -> C) shape

    def logits(self, image: Tensor, text_ids: Tensor, text_atts: Tensor) -> Tensor:
        """image (B, n, 3, R, R) or (B, 3, R, R) for n = 1; text (B, L) -> (B, classes)."""
        image = image if image.dim() == 5 else image[:, None]
        b, n = image.shape[:2]
        states, enc_atts = self.encode_image(image.transpose(0, 1).flatten(0, 1))  # (n·B, T, H): all firsts, ...
        text_ids, text_atts = text_ids.repeat(n, 1), text_atts.repeat(n, 1)  # (n·B, L), same order
        pooled = self.decoder_readout(text_ids, text_atts, states, enc_atts)  # (n·B, H)
        return self.cls_head(pooled.view(n, b, -1).transpose(0, 1).flatten(1))  # (B, n·H) -> (B, C)

    def forward(self, batch: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float]]:
        logits = self.logits(batch["image"], batch["text_ids"], batch["text_atts"])
        acc = float((logits.argmax(-1) == batch["label"]).float().mean())
        return {"cls_loss": F.cross_entropy(logits, batch["label"])}, {"train_acc": acc}


class _PairClassification(DaVinciTask):
    """Shared train / evaluate / latency of NLVR2 and VE (image(s), a sentence, a label)."""

    primary_metric = "acc"
    images: ClassVar[int]
    classes: ClassVar[int]

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciPairModule:  # type: ignore[override]
        return DaVinciPairModule(model, self.images, self.classes)

    @abc.abstractmethod
    def dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, train: bool) -> Any:
        """The split's dataset (each concrete task reads its own files)."""

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        return make_loader(
            self.dataset(module, tokenizer, world, "train", True), cfg.batch_size, cfg.seed, rank, world_size
        )

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, DaVinciPairModule)
        module.eval()
        if not self.split_files(world, split):
            print(f"{self.name}: no {resolve_split(split)!r} split: nothing scored", file=sys.stderr)
            return {}
        predictions = []
        for indices, _, batch in self.eval_batches(module, self.dataset(module, tokenizer, world, split, False)):
            pred = module.logits(batch["image"], batch["text_ids"], batch["text_atts"]).argmax(-1)
            labels = batch["label"].tolist()
            predictions += [{"index": i, "pred": p, "label": y} for i, p, y in zip(indices, pred.tolist(), labels)]
        name = f"{self.name}_{resolve_split(split)}.json"
        merged = self.publish(predictions, "index", out_dir, name, view=self.prediction_view)
        if not merged:
            return {}
        return {"acc": 100.0 * sum(p["pred"] == p["label"] for p in merged) / len(merged)}

    def prediction_view(self, rows: list[dict[str, Any]]) -> Any:
        return [p["pred"] for p in rows]

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, DaVinciPairModule)
        split = "test" if self.split_files(world, "test") else "train"
        b = self.latency_batch(module, self.dataset(module, tokenizer, world, split, False), batch_size)
        return inference_call(module, lambda: module.logits(b["image"], b["text_ids"], b["text_atts"]))


class DaVinciNLVR2Task(_PairClassification):
    """NLVR2 (``annotations/nlvr2``): both images, the sentence in the decoder; ``acc`` (percent)."""

    name = "nlvr2"
    images, classes = 2, 2

    def dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, train: bool) -> NLVRDataset:
        return NLVRDataset(
            data_files(world, self.name, split),
            image_root(world, self.name),
            tokenizer,
            self.data_config(module, train),
            train,
            self.data.seed,
            self.limit(train),
        )

    def prediction_view(self, rows: list[dict[str, Any]]) -> Any:
        return [bool(p["pred"]) for p in rows]  # ``grainvl score nlvr2``'s format


class DaVinciVETask(_PairClassification):
    """Visual entailment on the English XVNLI files (the SNLI-VE stand-in); ``acc`` (percent), 3 classes."""

    name = "ve"
    images, classes = 1, len(XVNLI_CLASSES)

    def split_files(self, world: Path, split: str) -> list[Path]:
        split = {"val": "dev"}.get(resolve_split(split), resolve_split(split))
        path = iglue_file(world, "xvnli", "en", split)
        return [path] if path is not None else []

    def dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, train: bool) -> XVNLIDataset:
        files = self.split_files(world, split)
        if not files:
            raise FileNotFoundError(f"ve: no English XVNLI {resolve_split(split)!r} file under {world}")
        return XVNLIDataset(
            files[0],
            image_root(world, "xvnli"),
            tokenizer,
            self.data_config(module, train),
            train,
            self.data.seed,
            self.limit(train),
        )

    def prediction_view(self, rows: list[dict[str, Any]]) -> Any:
        return [{"index": p["index"], "gold_label": XVNLI_CLASSES[p["pred"]]} for p in rows]


# ---------------------------------------------------------------------------------------------- linear probe
def probe_labels(record: dict[str, Any]) -> dict[str, str]:
    """shape / colour of the largest object (box area) and the object count of one region.jsonl record."""
    elems = record.get("elems") or []
    if not elems:
        raise ValueError("a region record with no objects ('elems')")
    largest = max(elems, key=lambda e: float(e["bb"][2]) * float(e["bb"][3]))
    shape = str(largest["caption"]).split()[-1]
    return {
        "shape": SHAPE_SYNONYMS.get(shape, shape),
        "colour": str(largest["attributes"]).split()[-1],  # "large dotted brown": size, texture, colour
        "count": str(len(elems)),
    }


class ProbeImages:
    """A split's images with their attribute labels (``annotations/pretrain/{split}/region.jsonl``)."""

    def __init__(self, path: Path, world: Path, resolution: int, max_records: int = 0) -> None:
        self.path, self.world = path, world
        self.items: list[tuple[str, dict[str, str], str]] = []  # (image, labels, where)
        for line, record in iter_jsonl(path):
            try:
                self.items.append((record["image"], probe_labels(record), f"line {line}"))
            except (KeyError, TypeError, ValueError, IndexError) as error:
                raise DataError(path, f"line {line}", f"not a region record with objects: {error}") from None
            if max_records and len(self.items) >= max_records:
                break
        if not self.items:
            raise DataError(path, "file", "no records")
        self.transform = build_transform("test", resolution, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        self.classes: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.sample(index, 0)

    def sample(self, index: int, epoch: int) -> dict[str, Any]:
        name, labels, where = self.items[index]
        image = self.transform(open_rgb(name, self.world, True, self.path, where))[0]  # (3, R, R) in [0, 1]
        # A label never seen in training is -1: always wrong, never a target (the OOD counts are new).
        targets = {a: self.classes[a].index(v) if v in self.classes[a] else -1 for a, v in labels.items()}
        return {"image": image, "targets": targets, "index": index}

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"image": torch.stack([s["image"] for s in samples])}
        for attribute in PROBE_ATTRIBUTES:
            out[attribute] = torch.tensor([s["targets"][attribute] for s in samples], dtype=torch.long)  # (B,)
        out["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
        return out


class DaVinciProbeModule(DaVinciModule):
    """Frozen DaVinci features (3H) -> one ``nn.Linear`` per attribute; only the linear layers train."""

    def __init__(
        self, model: DaVinci, tokenizer: Any, classes: dict[str, list[str]], prompt: str, feature_norm: bool = False
    ) -> None:
        super().__init__(model)
        model.requires_grad_(False)
        h = model.config.hidden_size
        # Optional (not in the official probe): MAE's linear-probe BatchNorm without affine parameters. A briefly
        # pre-trained model's features can vary across images by 0.3% of their size (measured on davinci-tiny after
        # 600 steps: std across images 0.0025 vs mean |x| 0.79); an N(0, 0.01) linear layer then stays at chance
        # for hundreds of steps while a standardised logistic regression reads colour and count from them.
        self.norm = nn.BatchNorm1d(3 * h, affine=False, eps=1e-6) if feature_norm else nn.Identity()  # MAE's eps
        self.heads = nn.ModuleDict({a: nn.Linear(3 * h, len(classes[a])) for a in PROBE_ATTRIBUTES})
        for head in self.heads.values():  # official fc init: N(0, 0.01), zero bias
            nn.init.normal_(head.weight, std=0.01)
            nn.init.zeros_(head.bias)
        self.prompt_ids = [model.config.cls_token_id, *tokenizer.encode(prompt.strip(), add_special_tokens=False)]

    def train(self, mode: bool = True) -> DaVinciProbeModule:
        super().train(mode)
        self.model.eval()  # frozen: no dropout in the features either
        return self

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """concat(encoder CLS, mean of the image-patch states, decoder last-token state): (B, 3H)."""
        states, atts = self.encode_image(images)  # (B, 1+N+2, H): [CLS img] patches [CLS] [SEP]
        prompt = torch.tensor(self.prompt_ids, device=images.device)[None].expand(images.shape[0], -1)  # (B, P)
        last = self.decoder_readout(prompt, torch.ones_like(prompt), states, atts)  # (B, H)
        return torch.cat([states[:, 0], states[:, 1:-2].mean(dim=1), last], dim=-1)

    def logits(self, images: Tensor) -> dict[str, Tensor]:
        feats = self.norm(self.features(images))  # (B, 3H)
        return {a: head(feats) for a, head in self.heads.items()}  # each (B, C_a)

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        logits = self.logits(batch["image"])
        losses = {f"{a}_loss": F.cross_entropy(logits[a], batch[a], ignore_index=-1) for a in PROBE_ATTRIBUTES}
        return losses, {}


class DaVinciLinearProbeTask(DaVinciTask):
    """Linear probe of the frozen model on per-image attributes; ``acc`` = mean of the three accuracies (percent)."""

    name = "linear_probe"
    primary_metric = "acc"
    default_options: ClassVar[dict[str, Any]] = {"prompt": PROMPT, "classes": None, "feature_norm": False}

    def split_files(self, world: Path, split: str) -> list[Path]:
        path = Path(world) / "annotations" / "pretrain" / resolve_split(split) / "region.jsonl"
        return [path] if path.is_file() else []

    def _data(self, module: TaskModule, world: Path, split: str, train: bool) -> ProbeImages:
        files = self.split_files(world, split)
        if not files:
            raise FileNotFoundError(f"linear_probe: no {resolve_split(split)} region.jsonl under {world}/annotations")
        assert isinstance(module.model, DaVinci)
        data = ProbeImages(files[0], Path(world), module.model.config.image_resolution, self.limit(train))
        data.classes = self.options["classes"]
        return data

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciProbeModule:  # type: ignore[override]
        if self.options["classes"] is None:  # the training labels, recorded in task.json for the reload
            train = ProbeImages(self.split_files(world, "train")[0], Path(world), model.config.image_resolution)
            self.options["classes"] = {a: sorted({lab[a] for _, lab, _ in train.items}) for a in PROBE_ATTRIBUTES}
        o = self.options
        return DaVinciProbeModule(model, tokenizer, o["classes"], o["prompt"], bool(o["feature_norm"]))

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        data = self._data(module, world, "train", True)
        return EpochLoader(data, min(cfg.batch_size, len(data) // world_size), data.collate, cfg.seed, rank, world_size)

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, DaVinciProbeModule)
        module.eval()
        predictions = []
        for indices, _, batch in self.eval_batches(module, self._data(module, world, split, False)):
            pred = {a: x.argmax(-1).tolist() for a, x in module.logits(batch["image"]).items()}
            for row, i in enumerate(indices):
                p = {"index": i, **{f"{a}": pred[a][row] for a in PROBE_ATTRIBUTES}}
                predictions.append({**p, **{f"{a}_label": int(batch[a][row]) for a in PROBE_ATTRIBUTES}})
        merged = self.publish(predictions, "index", out_dir, f"linear_probe_{resolve_split(split)}.json")
        if not merged:
            return {}
        metrics = {
            f"acc_{a}": 100.0 * float(np.mean([p[a] == p[f"{a}_label"] for p in merged])) for a in PROBE_ATTRIBUTES
        }
        return {"acc": float(np.mean(list(metrics.values()))), **metrics}

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, DaVinciProbeModule)
        images = self.latency_batch(module, self._data(module, world, "test", False), batch_size)["image"]
        return inference_call(module, lambda: module.logits(images))


# ---------------------------------------------------------------------------------------------- GLUE (text only)
class TextRows:
    """One split of a GLUE task folder as a dataset: ``{"ids", "atts", "target"}`` batches (text in both halves)."""

    def __init__(self, path: Path, texts: list[Any], targets: list[float], tokenizer: Any, max_length: int) -> None:
        self.path, self.texts, self.targets = path, texts, targets
        self.tokenizer, self.max_length = tokenizer, max_length

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[Any, float, int]:
        return self.sample(index, 0)

    def sample(self, index: int, epoch: int) -> tuple[Any, float, int]:
        return self.texts[index], self.targets[index], index

    def collate(self, items: list[tuple[Any, float, int]]) -> dict[str, Any]:
        enc = encode_texts(self.tokenizer, [t for t, _, _ in items], self.max_length)
        return {
            "ids": enc["input_ids"].long(),  # (B, L): [CLS] a [SEP] (b [SEP])
            "atts": enc["attention_mask"].long(),
            "target": torch.tensor([y for _, y, _ in items], dtype=torch.float),  # (B,)
            "index": torch.tensor([i for _, _, i in items], dtype=torch.long),
        }


class DaVinciGlueModule(DaVinciModule):
    """Text into the encoder and the decoder; the decoder's last-token state -> ``cls_head`` (MSE for one output)."""

    def __init__(self, model: DaVinci, outputs: int) -> None:
        super().__init__(model)
        self.cls_head = build_mlp(model.config.hidden_size, outputs)

    def logits(self, ids: Tensor, atts: Tensor) -> Tensor:
        states, enc_atts = self.model.encode(None, ids, atts)  # (B, L, H)
        return self.cls_head(self.decoder_readout(ids, atts, states, enc_atts))  # (B, C)

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        logits = self.logits(batch["ids"], batch["atts"])
        if logits.shape[1] == 1:
            return {"glue_loss": F.mse_loss(logits[:, 0], batch["target"])}, {}
        return {"glue_loss": F.cross_entropy(logits, batch["target"].long())}, {}


class DaVinciGlueTask(DaVinciTask):
    """One of the world's text tasks (``text/glue/<task>``): train on train.tsv, ``id`` = dev.tsv, no OOD.

    Primary metric ``accuracy`` (fraction, as ``tasks.text_classification``); a regression task reports
    ``pearson``/``spearman`` instead.
    """

    name = "glue"
    primary_metric = "accuracy"
    default_options: ClassVar[dict[str, Any]] = {"task": "", "max_length": 64}

    def task_dir(self, world: Path) -> Path:
        root = Path(world) / "text" / "glue"
        name = self.options["task"]
        if not name:  # the first task folder, recorded so the reload reads the same task
            found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            if not found:
                raise FileNotFoundError(f"glue: no task folders under {root} (make the world with text tasks)")
            self.options["task"] = name = found[0]
        return root / name

    def split_files(self, world: Path, split: str) -> list[Path]:
        file = {"train": "train.tsv", "test": "dev.tsv", "val": "dev.tsv"}.get(resolve_split(split))
        root = Path(world) / "text" / "glue"
        if file is None or not root.is_dir():
            return []
        path = self.task_dir(world) / file
        return [path] if path.is_file() else []

    def _rows(self, world: Path, tokenizer: Any, split: str) -> TextRows:
        task = load_glue_task(self.task_dir(world))
        train = resolve_split(split) == "train"
        texts, targets = (task.train_texts, task.train_targets) if train else (task.dev_texts, task.dev_targets)
        limit = self.limit(train) or len(texts)
        path = self.split_files(world, split)[0]
        return TextRows(path, texts[:limit], targets[:limit], tokenizer, self.options["max_length"])

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciGlueModule:  # type: ignore[override]
        task = load_glue_task(self.task_dir(world))
        return DaVinciGlueModule(model, task.num_outputs)

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        data = self._rows(world, tokenizer, "train")
        return EpochLoader(data, min(cfg.batch_size, len(data) // world_size), data.collate, cfg.seed, rank, world_size)

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, DaVinciGlueModule)
        module.eval()
        if resolve_split(split) == "train" or not self.split_files(world, split):
            print(f"glue: no {resolve_split(split)!r} split (id = dev.tsv, no OOD): nothing scored", file=sys.stderr)
            return {}
        task = load_glue_task(self.task_dir(world))
        predictions = []
        for indices, _, batch in self.eval_batches(module, self._rows(world, tokenizer, split)):
            out = module.logits(batch["ids"], batch["atts"])
            values = out[:, 0].tolist() if task.is_regression else out.argmax(-1).tolist()
            targets = batch["target"].tolist()
            predictions += [{"index": i, "pred": p, "target": t} for i, p, t in zip(indices, values, targets)]
        merged = self.publish(predictions, "index", out_dir, f"glue_{task.name}_{resolve_split(split)}.json")
        if not merged:
            return {}
        pred, target = np.array([p["pred"] for p in merged]), np.array([p["target"] for p in merged])
        if task.is_regression:
            return regression_metrics(pred, target)
        return classification_metrics(pred.astype(int), target.astype(int), task.labels)

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, DaVinciGlueModule)
        b = self.latency_batch(module, self._rows(world, tokenizer, "test"), batch_size)
        return inference_call(module, lambda: module.logits(b["ids"], b["atts"]))


# ---------------------------------------------------------------------------------------------- grounding
class DaVinciGroundingModule(GroundingModule):
    """Whole image + referring expression through DaVinci's encoder -> ``bbox_head`` on the image CLS state.

    Our addition (DaVinci has no grounding): the bidirectional encoder plays X-VLM's fusion over the text and
    the whole image, and the image CLS (encoder position 0, which attends to every patch and every word) is
    what the head reads, as X-VLM's box head reads the fusion ``[CLS]``. The decoder is not used.
    ``forward`` (L1 + GIoU, ``losses.bbox.bbox_loss``) is :class:`GroundingModule`'s.
    """

    model: DaVinci

    def __init__(self, model: DaVinci) -> None:
        super().__init__(model)
        self.bbox_head = build_mlp(model.config.hidden_size, 4)  # X-VLM's bbox_head shape
        for layer in self.bbox_head.modules():  # X-VLM's head init: N(0, 0.02), zero bias (LayerNorm 1, 0)
            if isinstance(layer, nn.Linear):
                nn.init.normal_(layer.weight, std=model.config.initializer_range)
                nn.init.zeros_(layer.bias)

    def predict(self, image: Tensor, text_ids: Tensor, text_atts: Tensor) -> Tensor:
        """image (B, 3, R, R) in [0, 1], expression (B, L) -> (B, 4) normalised (cx, cy, w, h) in (0, 1)."""
        states, _ = self.model.encode(image, text_ids, text_atts)  # (B, 1+N+L, H): [CLS img] patches text
        return self.bbox_head(states[:, 0]).sigmoid()  # (B, 4)


class DaVinciGroundingTask(GroundingTask):
    """RefCOCO+ box grounding with DaVinci's encoder (our addition; no paper number to compare with).

    Evaluation, the prediction file (``grainvl score grounding``'s format) and the metrics (``acc@0.5``,
    ``miou``) are :class:`GroundingTask`'s; only the module and the data geometry (DaVinci's: the preset's
    resolution, pixels in [0, 1], its tokenizer; ``careful_hflip`` as X²-VLM's) differ. Not a :class:`DaVinciTask`:
    its files are the layout's ``grounding`` files, so the fine-tuning preflight validates them as for X²-VLM.
    """

    def build(self, model: DaVinci, world: Path, tokenizer: Any) -> DaVinciGroundingModule:  # type: ignore[override]
        return DaVinciGroundingModule(model)

    def data_config(self, module: TaskModule, augment: bool) -> PretrainDataConfig:
        assert isinstance(module.model, DaVinci)
        cfg = davinci_data_config(module.model, augment=augment)
        return dataclasses.replace(cfg, careful_hflip=bool(self.options["careful_hflip"]))
