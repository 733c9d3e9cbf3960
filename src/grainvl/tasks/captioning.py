"""Image captioning as X²-VLM does it: "MLM for generation" with the model's own text + fusion stack.

X²-VLM's ``XVLMForMLMCaptioning`` (xvlm.md §4.1; UniLM s2s-ft; Gu et al. 2021, "FG-free") needs no
separate decoder. Training (``apply_FG_free``): the caption ``[CLS] a picture of <caption> [SEP]``
gets ~60% of its caption tokens (``[SEP]`` included, the prompt never) chosen as targets; a
``[MASK]`` is inserted before each chosen token with the *same position id*, the attention mask is
causal and nobody but the ``[MASK]`` itself attends to a ``[MASK]``, and the ``[MASK]`` states
predict their tokens through the tied MLM head (label smoothing 0.1). Generation is then the
same computation: append a ``[MASK]`` at the next position, read its prediction, replace it by the
chosen token, repeat, with the per-layer history states of earlier tokens cached
(:func:`~grainvl.models.decoder.incremental_forward`) and beam search (beam 3, minimum length 5,
trigram blocking, GNMT length penalty; :func:`~grainvl.models.decoder.beam_search`).

Metrics: pycocoevalcap BLEU-1..4, METEOR, ROUGE-L, CIDEr (PTB tokenizer) through
``grainvl.metrics.captioning.caption_scores``, reported as pycocoevalcap's fractions
(CIDEr 1.331 = the "133.1" papers print; the one scale of docs/metrics.md),
on ``coco_karpathy_{split}.json`` against ``coco_karpathy_{split}_gt.json``;
predictions are the COCO results file ``[{"image_id", "caption"}]`` (``caption_result_{split}.json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from grainvl.data.downstream import make_loader
from grainvl.data.downstream_gen import CaptionEvalDataset, CaptionTrainDataset
from grainvl.data.formats.coco_caption import read_caption_gt
from grainvl.data.iterators import StatefulIterator
from grainvl.data.masking import IGNORE_INDEX
from grainvl.losses.mlm import gather_labelled
from grainvl.metrics.captioning import caption_scores, coco_caption_inputs
from grainvl.models.decoder import SearchConfig, beam_search, greedy_search, incremental_forward
from grainvl.models.layers import SharedTokens
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

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


def caption_file(world: Path, split: str, gt: bool = False) -> Path:
    """``coco_karpathy_{split}.json`` (world, official folders or a config's file); ``gt``: its ``_gt`` COCO file."""
    path = data_files(world, "captioning", split)[0]
    return path.with_name(f"{path.name.removesuffix('.json')}_gt.json") if gt else path


def label_smoothed_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float, ignore_id: int) -> torch.Tensor:
    """The official ``LabelSmoothingLoss`` (KL to a smoothed one-hot), averaged over the real targets.

    logits (B, M, V) and labels (B, M) with -100 for padding, or (N, V) and (N,). The smoothed target puts
    ``1 - smoothing`` on the label and ``smoothing / (V - 2)`` on every other token except ``ignore_id`` (``[CLS]``), 0.
    """
    real = labels.ne(IGNORE_INDEX)  # (B, M) or (N,)
    if bool(real.all()):  # already the real targets (gather_labelled's rows): no boolean-index copy and backward
        logits, target = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)  # (T, V), (T,)
    else:
        logits, target = logits[real], labels[real]  # (T, V), (T,)
    logp = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
    if smoothing == 0:
        return -logp.gather(1, target[:, None]).mean()
    vocab = logp.shape[-1]
    other = smoothing / (vocab - 2)
    on_target = logp.gather(1, target[:, None])[:, 0]  # (T,)
    # sum_v q_v log p_v over the smoothed q, then KL = sum q log q - that (the first term is constant).
    cross = (1 - smoothing) * on_target + other * (logp.sum(dim=1) - on_target - logp[:, ignore_id])
    entropy = (1 - smoothing) * math.log(1 - smoothing) + smoothing * math.log(other)
    return (entropy - cross).mean()


class CaptionModule(TaskModule):
    """The X²-VLM model used as a UniLM-style generator; no parameters of its own."""

    def __init__(self, model: XVLM, tokenizer: Any, prompt: str, label_smoothing: float, search: SearchConfig) -> None:
        super().__init__(model)
        if model.config.text.layout != "single":
            raise ValueError("captioning needs the X²-VLM text layout 'single' (text and fusion layers in one stack)")
        self.tokenizer = tokenizer
        self.prompt_ids = [tokenizer.cls_token_id, *tokenizer.encode(prompt.strip(), add_special_tokens=False)]
        self.label_smoothing, self.search = label_smoothing, search

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        vis, vis_atts = self.model.encode_image(batch["image"])  # (B, 1+N, Dv)
        hidden = self.model.bert(
            batch["text_ids"],
            batch["text_atts"],  # (B, L, L): causal, [MASK] columns hidden
            mode="multimodal",
            encoder_hidden_states=vis,
            encoder_attention_mask=vis_atts,
            position_ids=batch["position_ids"],
        )  # (B, L, H)
        rows, labels = gather_labelled(hidden, batch["masked_pos"], batch["masked_ids"])  # (N, H), (N,)
        logits = self.model.mlm_logits(rows)  # (N, V): the real masked tokens only, not the padding of max_masks
        loss = label_smoothed_loss(logits, labels, self.label_smoothing, self.tokenizer.cls_token_id)
        return {"caption_loss": loss}, {}

    def stepper(
        self, image: torch.Tensor
    ) -> tuple[Callable[[torch.Tensor | None], torch.Tensor], Callable[[torch.Tensor], None]]:
        """``(step, reorder)`` for :func:`~grainvl.models.decoder.beam_search` over images (B, 3, R, R).

        ``step(None)`` runs the prompt and a ``[MASK]`` at the next position; ``step(tokens)`` runs each
        row's chosen token and a new ``[MASK]``; both return log p(next token) (rows, V) read at the
        ``[MASK]``. The per-layer inputs of real tokens are cached; the ``[MASK]``'s never are.
        """
        vis, vis_atts = self.model.encode_image(image)  # (B, 1+N, Dv)
        b, device = image.shape[0], image.device
        # Cross-attention keys/values of the image tokens, projected once per caption and reused by every step
        # (and every beam: reordering moves only the row index), instead of once per generated token.
        shared = SharedTokens(vis, torch.arange(b, device=device), cache={})
        prompt = torch.tensor(self.prompt_ids, device=device)
        mask_id = self.tokenizer.mask_token_id
        state: dict[str, Any] = {"history": None, "vis": shared, "atts": vis_atts, "next": len(self.prompt_ids)}

        def step(tokens: torch.Tensor | None) -> torch.Tensor:
            if tokens is None:  # the prompt and the first [MASK]
                ids = torch.cat([prompt, prompt.new_tensor([mask_id])])[None].expand(b, -1)
                positions = torch.arange(ids.shape[1], device=device)[None].expand(b, -1)
            else:  # the token chosen for position next-1, and a [MASK] at position next
                ids = torch.stack([tokens, torch.full_like(tokens, mask_id)], dim=1)  # (N, 2)
                positions = torch.tensor([state["next"] - 1, state["next"]], device=device)[None].expand(
                    len(tokens), -1
                )
            out, inputs = incremental_forward(
                self.model.bert, ids, positions, state["history"], state["vis"], state["atts"]
            )
            new = [x[:, :-1] for x in inputs]  # the [MASK] never enters the history
            history = state["history"]
            state["history"] = new if history is None else [torch.cat([h, x], dim=1) for h, x in zip(history, new)]
            state["next"] += 1
            return torch.log_softmax(self.model.mlm_logits(out[:, -1]).float(), dim=-1)  # (N, V)

        def reorder(rows: torch.Tensor) -> None:
            state["history"] = [h[rows] for h in state["history"]]
            state["vis"], state["atts"] = state["vis"].select(rows), state["atts"][rows]

        return step, reorder

    @torch.no_grad()
    def generate(self, image: torch.Tensor, search: SearchConfig | None = None) -> list[str]:
        """Captions for images (B, 3, R, R): beam search (greedy when ``num_beams`` is 1) after the prompt."""
        search = search or self.search
        decode = greedy_search if search.num_beams == 1 else beam_search
        step, reorder = self.stepper(image)
        sequences = decode(step, reorder, image.shape[0], self.tokenizer.sep_token_id, search)
        return [self.tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in sequences]


class CaptioningTask(DownstreamTask):
    """COCO-Karpathy-style captioning (world: ``annotations/captioning/``); primary metric ``CIDEr``."""

    name = "captioning"
    primary_metric = "CIDEr"
    default_options: ClassVar[dict[str, Any]] = {
        "prompt": "a picture of ",
        "label_smoothing": 0.1,
        "mask_prob": 0.6,
        "max_masks": 18,
        "num_beams": 3,
        "max_length": 20,  # VLUE's baseline decodes 20 tokens; X²-VLM's COCO config 50
        "min_length": 5,
        "length_penalty": 0.0,
        "no_repeat_ngram": 3,
        "meteor": True,  # False skips METEOR (it keeps a Java process running)
    }

    def search_config(self) -> SearchConfig:
        o = self.options
        return SearchConfig(o["num_beams"], o["max_length"], o["min_length"], o["length_penalty"], o["no_repeat_ngram"])

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> CaptionModule:
        return CaptionModule(
            model, tokenizer, self.options["prompt"], self.options["label_smoothing"], self.search_config()
        )

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        o = self.options
        # max_tokens covers [CLS] prompt caption [SEP], as the official config (40) does.
        dcfg = model_data_config(module.model, augment=cfg.augment)
        data = CaptionTrainDataset(
            caption_file(world, "train"),
            image_root(world, "captioning"),
            tokenizer,
            dcfg,
            o["prompt"],
            o["mask_prob"],
            o["max_masks"],
            cfg.seed,
            cfg.max_train_samples,
        )
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def _eval_data(self, module: TaskModule, tokenizer: Any, world: Path, split: str) -> CaptionEvalDataset:
        dcfg = model_data_config(module.model, augment=False)
        path, root = caption_file(world, split), image_root(world, "captioning")
        return CaptionEvalDataset(path, root, tokenizer, dcfg, self.data.max_eval_samples)

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, CaptionModule)
        split = resolve_split(split)
        data = self._eval_data(module, tokenizer, world, split)
        return evaluate_captions(self, module, data, world, split, out_dir)

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, CaptionModule)
        data = self._eval_data(module, tokenizer, world, latency_split(world, self.name))
        return caption_latency_call(self, module, data, batch_size)


def evaluate_captions(
    task: DownstreamTask, module: TaskModule, data: CaptionEvalDataset, world: Path, split: str, out_dir: Path | None
) -> dict[str, float]:
    """Caption every image of ``data`` with ``module.generate`` (images -> strings), publish
    ``caption_result_{split}.json`` (official format) and score it: every captioning task (X²-VLM, DaVinci)."""
    module.eval()
    predictions = []
    for _, _, batch in task.eval_batches(module, data):
        captions = module.generate(batch["image"])
        predictions += [{"image_id": i, "caption": c} for i, c in zip(batch["image_id"], captions)]
    merged = task.publish(predictions, "image_id", out_dir, f"caption_result_{split}.json")
    if not merged:
        return {}
    return caption_metrics(merged, caption_file(world, split, gt=True), task.options["meteor"])


def caption_latency_call(
    task: DownstreamTask, module: TaskModule, data: CaptionEvalDataset, batch_size: int
) -> Callable[[], Any]:
    """One ``module.generate`` call on the first ``batch_size`` images of ``data``, for latency."""
    image = task.latency_batch(module, data, batch_size)["image"]
    return inference_call(module, lambda: module.generate(image))


def caption_metrics(results: list[dict[str, Any]], gt_path: Path, meteor: bool = True) -> dict[str, float]:
    """pycocoevalcap scores (fractions) of ``results`` against the GT file, restricted to the captioned images."""

    gt = read_caption_gt(gt_path)
    captioned = {r["image_id"] for r in results}
    gt = {**gt, "images": [i for i in gt["images"] if i["id"] in captioned]}
    gt["annotations"] = [a for a in gt["annotations"] if a["image_id"] in captioned]
    gts, res = coco_caption_inputs(gt, results)
    scores = caption_scores(gts, res, meteor=meteor)
    return scores  # pycocoevalcap fractions, the one scale of docs/metrics.md
