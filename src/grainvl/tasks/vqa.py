"""VQA v2 (and VLUE's OOD VQA) as X²-VLM does it: a generative answer decoder that ranks a closed answer list.

``head="decoder"`` (default, official ``XVLMForVQA``, xvlm.md §4.1): the question is fused with the
image by all text + fusion layers; a :class:`~grainvl.models.decoder.TextDecoder` (6 layers in the
official config = the number of fusion layers, initialised from them) reads those question states
through cross-attention and models the answer ``[CLS] answer [SEP]`` left to right. Training
minimises ``-sum_answers weight * log p(answer)`` / batch, the weights being each distinct answer's
share of the annotators (VG answers 0.5); like every task head outside ``model.``, the decoder trains
at ``lr * lr_mult`` (the official ``large_lr_for_dec``). Evaluation ranks ``answer_list.json``: the first-token
probability of every answer picks the ``k_test`` best, whose full log-likelihoods decide.

``head="classifier"``: the alternative many VQA models use, ``build_mlp(H, |answers|)`` on the fusion
``[CLS]``, trained with the same targets as a soft-label cross-entropy over the list (answers outside
the list carry no signal) and predicting the arg-max.

Metrics: ``vqa_acc``, the official VQA accuracy (``grainvl.metrics.vqa.vqa_accuracy``) against the
split's ``v2_mscoco_{split}_annotations.json`` (10 answers each) on ID and OOD alike, so the gap is
measured on one metric; on the OOD split also ``vlue_exact_match``, VLUE's single-answer exact match
on ``vlue/vqa_vlue_test.json``. Predictions are the official result file
``[{"question_id", "answer"}]`` (``vqa_result_{split}.json``).

Deviation (documented in docs/tasks.md): the official ``rank_answer`` adds the first token's
log-probability a second time to the sequence log-likelihood that already contains it; we rank by
the answer's log-likelihood (``rank_first_token_twice=True`` restores the official score).
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from grainvl.data.downstream import make_loader
from grainvl.data.downstream_gen import VQADataset, tokenize
from grainvl.data.formats import albef, vlue, vqa_v2
from grainvl.data.iterators import StatefulIterator
from grainvl.data.layout import derived_answer_list, layout_for
from grainvl.metrics.vqa import exact_match_accuracy, vqa_accuracy
from grainvl.models.decoder import TextDecoder, fusion_decoder_shapes
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

HEADS = ("decoder", "classifier")


def vqa_file(world: Path, split: str) -> list[Path]:
    """The split's files: X-VLM ``vqa_{split}.json`` (or a config's list), else a VQA v2 questions/annotations pair."""
    return data_files(world, "vqa", split)


def answer_list_file(world: Path) -> Path | None:
    """``answer_list.json`` (configured, the world's or an official folder's); None: derived from the answers."""
    return layout_for(world).answer_list()


def answer_list(world: Path) -> list[str]:
    """The candidate answers: ``answer_list.json``, else (as the official list was made) the 3,129 most
    frequent answers of the training annotations, or of the training records' answers."""
    path = answer_list_file(world)
    if path is not None:
        return albef.read_answer_list(path)
    train = vqa_file(world, "train")
    annotations = [p for p in train if p.name.endswith("_annotations.json")]
    if annotations:
        answers = derived_answer_list(annotations)
    else:
        counts: Counter[str] = Counter()
        for path in train:
            for record in albef.read_vqa(path):
                given = record.get("answer")
                given = [given] if isinstance(given, str) else list(given or [])
                if given:
                    counts[Counter(given).most_common(1)[0][0]] += 1
        answers = sorted(counts, key=lambda a: (-counts[a], a))[:3129]
    print(f"vqa: no answer_list.json; using the {len(answers)} most frequent training answers", file=sys.stderr)
    return answers


class VQAModule(TaskModule):
    """The model + either ``text_decoder`` (answer ranking) or ``cls_head`` (classifier over the answer list)."""

    def __init__(
        self,
        model: XVLM,
        answers: list[str],
        tokenizer: Any,
        head: str = "decoder",
        num_dec_layers: int | None = None,
        k_test: int = 128,
        rank_first_token_twice: bool = False,
        decoder_shapes: dict[str, list[int]] | None = None,
    ) -> None:
        """``decoder_shapes``: per-layer shapes of the answer decoder (:meth:`TextDecoder.layer_shapes`) when
        they are not those of the fusion layers it is built from (a pruned decoder, or a decoder over a
        backbone pruned differently); None: the fusion layers' shapes, as the official initialisation."""
        super().__init__(model)
        if head not in HEADS:
            raise ValueError(f"vqa head must be one of {HEADS}, got {head!r}")
        if decoder_shapes is not None and head != "decoder":
            raise ValueError(f"decoder_shapes needs head='decoder', got head={head!r}")
        if not answers:
            raise ValueError("the VQA answer list is empty")
        self.head, self.answers, self.k_test = head, list(answers), k_test
        self.answer_index = {a: i for i, a in enumerate(self.answers)}
        self.rank_first_token_twice = rank_first_token_twice
        if head == "decoder":
            self.text_decoder = TextDecoder.from_fusion_layers(model.bert, model.mlm, num_dec_layers, decoder_shapes)
            ids, atts = tokenize(tokenizer, self.answers, None)  # (A, La): [CLS] answer [SEP] [PAD]...
            self.register_buffer("answer_ids", ids, persistent=False)
            self.register_buffer("answer_atts", atts, persistent=False)
        else:
            self.cls_head = build_mlp(model.config.text.hidden_size, len(self.answers))
            self.cls_head.apply(_init_linear)

    # ------------------------------------------------------------------ decoder surgery (compression)
    def replace_decoder(self, decoder: TextDecoder) -> None:
        """Use ``decoder`` (e.g. :func:`grainvl.compress.shrink.shrink_decoder` of the current one) as the answer
        decoder. Its shapes reach ``task.json`` through :meth:`VQATask.save_head` (:meth:`saved_decoder_shapes`),
        so :func:`~grainvl.recipes.finetune.load_finetuned` rebuilds it."""
        if self.head != "decoder":
            raise ValueError(f"replace_decoder needs head='decoder', got head={self.head!r}")
        shape = (decoder.config.num_layers, decoder.config.hidden_size, decoder.config.vocab_size)
        expected = (
            self.text_decoder.config.num_layers,
            self.model.config.text.hidden_size,
            self.model.bert.config.vocab_size,
        )
        if shape != expected or decoder.bert.fusion_start != 0:
            raise ValueError(
                f"the new decoder's (layers, hidden size, vocabulary) {shape} must be {expected}, with cross-attention "
                f"in every layer (fusion_start 0, got {decoder.bert.fusion_start})"
            )
        self.text_decoder = decoder

    def saved_decoder_shapes(self) -> dict[str, list[int]] | None:
        """The ``decoder_shapes`` option that rebuilds this module's decoder: None when its shapes are those of
        the backbone's fusion layers it would be built from (every unpruned run), else its per-layer shapes."""
        if self.head != "decoder":
            return None
        shapes = self.text_decoder.layer_shapes()
        default = fusion_decoder_shapes(self.model.bert, self.text_decoder.config.num_layers)
        return None if shapes == default else shapes

    # ------------------------------------------------------------------ shared pieces
    def question_states(
        self, image: torch.Tensor, question_ids: torch.Tensor, question_atts: torch.Tensor
    ) -> torch.Tensor:
        """All text + fusion layers on the question with the image: (B, L, H)."""
        vis, vis_atts = self.model.encode_image(image)  # (B, 1+N, Dv)
        return self.model.encode_multimodal(question_ids, question_atts, vis, vis_atts)

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        states = self.question_states(batch["image"], batch["question_ids"], batch["question_atts"])  # (B, L, H)
        b = states.shape[0]
        if self.head == "classifier":
            logp = torch.log_softmax(self.cls_head(states[:, 0]).float(), dim=-1)  # (B, A)
            return {"vqa_loss": -(batch["answer_targets"] * logp).sum() / b}, {}
        counts = batch["answer_counts"]  # (B,): answers per question
        answer_states = states.repeat_interleave(counts, dim=0)  # (A, L, H)
        answer_q_atts = batch["question_atts"].repeat_interleave(counts, dim=0)
        logp = self.text_decoder.sequence_logprob(
            batch["answer_ids"], batch["answer_atts"], answer_states, answer_q_atts
        )
        return {"vqa_loss": -(batch["answer_weights"] * logp).sum() / b}, {}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def rank_answers(
        self, states: torch.Tensor, question_atts: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Official answer ranking -> (answer indices (Q, k) best first, their scores (Q, k)).

        1. One decoder step from ``[CLS]``: log p(first token) of every answer, (Q, A); keep the top k.
        2. The full log-likelihood of each kept answer given the question, (Q, k); sort by it.
        """
        q, num_answers = states.shape[0], self.answer_ids.shape[0]
        k = min(k, num_answers)
        start = self.answer_ids[:1, :1].expand(q, 1)  # (Q, 1): the start token [CLS]
        logits = self.text_decoder(start, torch.ones_like(start), states, question_atts)[:, 0]  # (Q, V)
        first = torch.log_softmax(logits.float(), dim=-1).index_select(1, self.answer_ids[:, 1])  # (Q, A)
        top_first, top_ids = first.topk(k, dim=1)  # (Q, k)
        ids = self.answer_ids[top_ids].flatten(0, 1)  # (Q*k, La)
        atts = self.answer_atts[top_ids].flatten(0, 1)
        scores = self.text_decoder.sequence_logprob(
            ids, atts, states.repeat_interleave(k, dim=0), question_atts.repeat_interleave(k, dim=0)
        ).view(q, k)  # (Q, k): log p(answer | question, image), first token included
        if self.rank_first_token_twice:
            scores = scores + top_first  # the official score (first token counted twice)
        scores, order = scores.sort(dim=1, descending=True)
        return top_ids.gather(1, order), scores

    @torch.no_grad()
    def predict(self, image: torch.Tensor, question_ids: torch.Tensor, question_atts: torch.Tensor) -> list[str]:
        """The predicted answer string of each question."""
        states = self.question_states(image, question_ids, question_atts)
        if self.head == "classifier":
            best = self.cls_head(states[:, 0]).argmax(dim=-1)  # (B,)
        else:
            best = self.rank_answers(states, question_atts, self.k_test)[0][:, 0]
        return [self.answers[i] for i in best.tolist()]


class VQATask(DownstreamTask):
    """VQA on ``annotations/vqa/vqa_{split}.json`` with ``answer_list.json``; metric ``vqa_acc`` (percent)."""

    name = "vqa"
    primary_metric = "vqa_acc"
    default_options: ClassVar[dict[str, Any]] = {
        "head": "decoder",  # "decoder" (X²-VLM answer ranking) or "classifier"
        "num_dec_layers": None,  # None: as many as the fusion layers (official 6); or half of them
        "k_test": 128,  # answers kept by the first-token step before full re-ranking (official 128)
        "rank_first_token_twice": False,  # True: the official ranking score (see module docstring)
        "answers": None,  # the answer list; filled from the world's answer_list.json at build and saved
        # Per-layer decoder shapes {"layer_heads", "layer_cross_heads", "layer_intermediate"} when they differ from
        # the fusion layers' (a pruned decoder or backbone); written by save_head, None: the fusion layers' shapes.
        "decoder_shapes": None,
    }

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> VQAModule:
        if self.options["answers"] is None:
            self.options["answers"] = answer_list(world)
        o = self.options
        return VQAModule(
            model,
            o["answers"],
            tokenizer,
            o["head"],
            o["num_dec_layers"],
            o["k_test"],
            o["rank_first_token_twice"],
            o["decoder_shapes"],
        )

    def save_head(self, module: TaskModule, directory: str | Path) -> None:
        """As every task, after recording the decoder's shapes (``decoder_shapes``) when they are not the
        backbone's fusion layers' (a decoder pruned, replaced or over a backbone pruned differently)."""
        assert isinstance(module, VQAModule)
        self.options["decoder_shapes"] = module.saved_decoder_shapes()
        super().save_head(module, directory)

    def _dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, train: bool) -> VQADataset:
        assert isinstance(module, VQAModule)
        dcfg = model_data_config(module.model, augment=self.data.augment and train)
        index = module.answer_index if module.head == "classifier" else None
        limit = self.data.max_train_samples if train else self.data.max_eval_samples
        roots = {"vg": image_root(world, "vqa", "vg")}
        root = image_root(world, "vqa")
        return VQADataset(vqa_file(world, split), root, tokenizer, dcfg, train, self.data.seed, limit, index, roots)

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        return make_loader(
            self._dataset(module, tokenizer, world, "train", True), cfg.batch_size, cfg.seed, rank, world_size
        )

    @torch.no_grad()
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        assert isinstance(module, VQAModule)
        split = resolve_split(split)
        return evaluate_answers(
            self, module, self._dataset(module, tokenizer, world, split, False), world, split, out_dir
        )

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        assert isinstance(module, VQAModule)
        data = self._dataset(module, tokenizer, world, latency_split(world, self.name), False)
        return answer_latency_call(self, module, data, batch_size)


def predict_answers(task: DownstreamTask, module: TaskModule, data: VQADataset) -> list[tuple[Any, str]]:
    """``(question id, answer)`` for every question of ``data`` (this rank's share), answered by ``module.predict``
    (image, question ids, mask -> answer strings) in eval mode."""
    module.eval()
    pairs: list[tuple[Any, str]] = []
    for _, _, batch in task.eval_batches(module, data):
        answers = module.predict(batch["image"], batch["question_ids"], batch["question_atts"])
        pairs += list(zip(batch["question_id"], answers))
    return pairs


def evaluate_answers(
    task: DownstreamTask, module: TaskModule, data: VQADataset, world: Path, split: str, out_dir: Path | None
) -> dict[str, float]:
    """Answer every question of ``data`` (:func:`predict_answers`), publish ``vqa_result_{split}.json`` (official
    format) and score it: what every VQA task (X²-VLM, DaVinci) does."""
    predictions = [{"question_id": q, "answer": a} for q, a in predict_answers(task, module, data)]
    merged = task.publish(predictions, "question_id", out_dir, f"vqa_result_{split}.json")
    if not merged:
        return {}
    return vqa_metrics({p["question_id"]: p["answer"] for p in merged}, Path(world), split, data)


def answer_latency_call(
    task: DownstreamTask, module: TaskModule, data: VQADataset, batch_size: int
) -> Callable[[], Any]:
    """One batch-1 (or ``batch_size``) ``module.predict`` call on the first questions of ``data``, for latency."""
    batch = task.latency_batch(module, data, batch_size)
    return inference_call(module, lambda: module.predict(batch["image"], batch["question_ids"], batch["question_atts"]))


def vqa_metrics(predictions: dict[int, str], world: Path, split: str, data: VQADataset) -> dict[str, float]:
    """``vqa_acc`` from the official annotations (or the records' answer lists); ``vlue_exact_match`` on OOD."""

    metrics: dict[str, float] = {}
    annotations = layout_for(world).vqa_annotations(split)
    if annotations is not None:
        truth = {
            a["question_id"]: [x["answer"] for x in a["answers"]]
            for a in vqa_v2.read_vqa_annotations(annotations)["annotations"]
        }
    else:  # X-VLM files with answer lists (val), e.g. a real dataset without the official annotation file
        truth = {r["question_id"]: list(r["answer"]) for r in data.records if isinstance(r.get("answer"), list)}
    truth = {q: a for q, a in truth.items() if q in predictions}
    if truth:
        metrics["vqa_acc"] = vqa_accuracy({q: predictions[q] for q in truth}, truth)
    vlue_file = world / "annotations" / "vlue" / "vqa_vlue_test.json"
    if split == "test_ood" and vlue_file.is_file():
        single = {r["question_id"]: r["answer"] for r in vlue.read_vlue_vqa(vlue_file)}
        scored = {q: a for q, a in predictions.items() if q in single}
        if scored:
            metrics["vlue_exact_match"] = exact_match_accuracy(scored, single)
    return metrics
