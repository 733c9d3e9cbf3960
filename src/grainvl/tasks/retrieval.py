"""Image–text and video–text retrieval: fine-tuning with ITC + ITM, evaluation by ITC top-k then ITM re-ranking.

Fine-tuning (X²-VLM ``Retrieval.py`` / ``XVLMForRetrieval``, xvlm.md §4.1): ITC with the image id
as soft positives (captions of one image are all positives) plus ITM on hard negatives that never
share the positive's id; the loss is their sum.

Evaluation (official ``evaluation`` + ``itm_eval``, davinci_cclm_vlue.md §C.3):

1. Embed every gallery item (image or video) and every caption once.
2. ITC similarities, computed in row chunks so only ``chunk × gallery`` floats live at a time;
   each row keeps its top ``k_test`` candidates (``k_test`` is clipped to the gallery size).
3. ``score="itm"`` (official X²-VLM): each candidate's score is the ITM match logit
   ``itm_head(fused)[:, 1]``; every other entry counts as -100 (so it ranks after the candidates).
   ``score="combined"``: ITM logit + ITC cosine similarity (BLIP's re-ranking; our option).
   ``score="itc"`` (or ``k_test=0``): ITC similarity alone, no fusion pass.
4. Text retrieval ranks an image's best ground-truth caption; image retrieval a caption's image.
   R@1/5/10 both ways, ``txt_r_mean``, ``img_r_mean``, ``r_mean`` (percent).

Ranks come from each row's re-scored candidates through
:func:`grainvl.metrics.retrieval.retrieval_metrics_from_candidates`: the official -100-filled row is
rebuilt one row at a time and ranked with ``np.argsort(row)[::-1]``, so ties (the -100 fills when
``k_test < 10`` included) fall as in the official code; ITC top-k is a chunked search (FAISS from
100k items on), so the full ``N × T`` score matrix is never built. Under a process group each
rank re-ranks its share of the rows (:func:`~grainvl.tasks.base.shard_indices`) and rank 0 merges them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from grainvl.data.downstream import RetrievalEvalSet, RetrievalTrainDataset, make_loader, retrieval_eval_set
from grainvl.data.iterators import StatefulIterator
from grainvl.losses.itc import itc_loss
from grainvl.losses.itm import hard_negative_itm_loss
from grainvl.metrics.retrieval import retrieval_metrics_from_candidates, topk_search
from grainvl.models.xvlm import XVLM
from grainvl.tasks.base import (
    DataOptions,
    DownstreamTask,
    TaskModule,
    data_files,
    gather_predictions,
    image_root,
    latency_split,
    model_data_config,
    module_device,
    resolve_split,
    shard_indices,
    write_json_result,
)
from grainvl.utils.distributed import get_rank

SCORE_MODES = ("itm", "combined", "itc")


# ---------------------------------------------------------------------------------------------- training
class RetrievalModule(TaskModule):
    """ITC (image ids as soft positives) + ITM with id-aware hard negatives; ``batch["video"]`` for video."""

    def __init__(self, model: XVLM, itm: bool = True) -> None:
        super().__init__(model)
        self.itm = itm

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        m = self.model
        vis, vis_atts = m.encode_video(batch["video"]) if "video" in batch else m.encode_image(batch["image"])
        text = m.encode_text(batch["text_ids"], batch["text_atts"])  # (B, L, H)
        vis_feat, text_feat = m.image_feat(vis), m.text_feat(text)  # (B, E)
        idx = batch["idx"]  # (B,)
        losses = {"itc_loss": itc_loss(vis_feat, text_feat, m.temp, idx=idx)}
        if self.itm:
            losses["itm_loss"] = hard_negative_itm_loss(
                m, vis, vis_atts, text, batch["text_atts"], vis_feat, text_feat, idx
            )
        return losses, {"temp": float(m.temp.detach())}


# ---------------------------------------------------------------------------------------------- evaluation core
@torch.no_grad()
def embed(model: XVLM, data: RetrievalEvalSet, batch_size: int) -> dict[str, torch.Tensor]:
    """Gallery tokens (N, 1+P, D) and features (N, E); text states (T, L, H), masks and features (T, E)."""
    encode = model.encode_video if data.video else model.encode_image
    device = module_device(model)
    vis = torch.cat([encode(items.to(device))[0] for items in data.data.images.batches(batch_size)])
    ids, atts = data.data.text_ids.to(device), data.data.text_atts.to(device)
    text = torch.cat(
        [model.encode_text(ids[i : i + batch_size], atts[i : i + batch_size]) for i in range(0, len(ids), batch_size)]
    )
    return {
        "vis": vis,
        "vis_feat": model.image_feat(vis),
        "text": text,
        "text_atts": atts,
        "text_feat": model.text_feat(text),
    }


@torch.no_grad()
def itm_scores(
    model: XVLM, emb: dict[str, torch.Tensor], text_index: torch.Tensor, vis_index: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """ITM match logits ``itm_head(fuse(text, vision))[:, 1]`` of (text, vision) index pairs, batched. (P,)"""
    out = []
    for start in range(0, len(text_index), batch_size):
        t, v = text_index[start : start + batch_size], vis_index[start : start + batch_size]
        vis = emb["vis"][v]
        vis_atts = torch.ones(vis.shape[:2], dtype=torch.long, device=vis.device)
        fused = model.fuse(emb["text"][t], emb["text_atts"][t], vis, vis_atts)
        out.append(model.itm_logits(fused)[:, 1])
    return torch.cat(out) if out else torch.zeros(0)


@torch.no_grad()
def rerank_rows(
    model: XVLM,
    emb: dict[str, torch.Tensor],
    rows: list[int],
    top_values: torch.Tensor,
    top_indices: torch.Tensor,
    rows_are_text: bool,
    score: str,
    batch_size: int,
) -> list[dict[str, Any]]:
    """Re-score each row's ITC candidates with ITM (``score`` = itm | combined); one record per row."""
    if not rows:
        return []
    k = top_indices.shape[1]
    row_t = torch.tensor(rows)
    cols = top_indices[row_t]  # (R, k)
    rows_rep = row_t[:, None].expand(-1, k)  # (R, k)
    text_index, vis_index = (rows_rep, cols) if rows_are_text else (cols, rows_rep)
    logits = itm_scores(model, emb, text_index.reshape(-1), vis_index.reshape(-1), batch_size).view(len(rows), k)
    if score == "combined":
        logits = logits + top_values[row_t].to(logits.device)
    return [{"row": r, "index": cols[i].tolist(), "score": logits[i].tolist()} for i, r in enumerate(rows)]


def _ranked(records: list[dict[str, Any]]) -> list[list[int]]:
    """Each row's candidates sorted by score, best first (stable: ITC order breaks exact ties)."""
    return [[r["index"][i] for i in np.argsort(-np.asarray(r["score"]), kind="stable")] for r in records]


@torch.no_grad()
def evaluate_retrieval(
    model: XVLM,
    data: RetrievalEvalSet,
    k_test: int = 128,
    score: str = "itm",
    batch_size: int = 32,
    chunk: int = 8192,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics and the ranked top lists (see the module docstring). Collective under a process group.

    Returns ``(metrics, predictions)``; on ranks other than 0 both are empty.
    """
    if score not in SCORE_MODES:
        raise ValueError(f"score must be one of {SCORE_MODES}, got {score!r}")
    model.eval()
    emb = embed(model, data, batch_size)
    n_vis, n_text = emb["vis_feat"].shape[0], emb["text_feat"].shape[0]
    img2txt, txt2img = data.data.image_text_index, data.data.text_image_index.tolist()
    rerank = score != "itc" and k_test > 0
    # ITC candidates: the top k_test for re-ranking, else the top 10 that R@10 needs.
    k_i2t, k_t2i = (min(k_test, n_text), min(k_test, n_vis)) if rerank else (min(10, n_text), min(10, n_vis))
    i2t_v, i2t_i = (torch.from_numpy(a) for a in topk_search(emb["vis_feat"], emb["text_feat"], k_i2t, chunk=chunk))
    t2i_v, t2i_i = (torch.from_numpy(a) for a in topk_search(emb["text_feat"], emb["vis_feat"], k_t2i, chunk=chunk))
    if rerank:
        i2t = rerank_rows(model, emb, shard_indices(n_vis), i2t_v, i2t_i, False, score, batch_size)
        t2i = rerank_rows(model, emb, shard_indices(n_text), t2i_v, t2i_i, True, score, batch_size)
        i2t, t2i = gather_predictions(i2t, "row"), gather_predictions(t2i, "row")
    elif get_rank() == 0:  # ITC only: nothing to share, rank 0 has every list already
        i2t = [{"row": r, "index": i2t_i[r].tolist(), "score": i2t_v[r].tolist()} for r in range(n_vis)]
        t2i = [{"row": r, "index": t2i_i[r].tolist(), "score": t2i_v[r].tolist()} for r in range(n_text)]
    else:
        i2t = t2i = []
    if get_rank() != 0:
        return {}, {}
    ranked_i2t, ranked_t2i = _ranked(i2t), _ranked(t2i)
    # The official ranking: -100 outside each row's candidates, np.argsort ties included.
    metrics = retrieval_metrics_from_candidates(
        [r["index"] for r in i2t],
        [r["score"] for r in i2t],
        [r["index"] for r in t2i],
        [r["score"] for r in t2i],
        img2txt,
        txt2img,
    )
    return metrics, _prediction_file(ranked_i2t, ranked_t2i, k_test, score)


def _prediction_file(
    ranked_i2t: list[list[int]], ranked_t2i: list[list[int]], k_test: int, score: str
) -> dict[str, Any]:
    """``grainvl score retrieval``'s format: ``{"i2t": [[text index] per image], "t2i": [[image index] per
    caption]}``, best first, numbered as the test file (images and captions in file order)."""
    return {"i2t": ranked_i2t, "t2i": ranked_t2i, "k_test": k_test, "score": score}


# ---------------------------------------------------------------------------------------------- the task
class RetrievalTask(DownstreamTask):
    """COCO/Flickr-style image–text retrieval (world: ``annotations/retrieval/coco_{split}.json``)."""

    name = "retrieval"
    primary_metric = "r_mean"
    video = False
    # k_test: the official X-VLM configs use 256 (COCO) / 128 (Flickr); it is clipped to the gallery.
    default_options: ClassVar[dict[str, Any]] = {"k_test": 128, "score": "itm", "itm": True, "chunk": 8192}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.options["score"] not in SCORE_MODES:
            raise ValueError(f"score must be one of {SCORE_MODES}, got {self.options['score']!r}")

    def file(self, world: Path, split: str) -> list[Path]:
        """The split's annotation files (world layout, official names, or a config's explicit files)."""
        return data_files(world, self.name, split)

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> RetrievalModule:
        return RetrievalModule(model, itm=bool(self.options["itm"]))

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        dcfg = model_data_config(module.model, augment=cfg.augment)
        dataset = RetrievalTrainDataset(
            self.file(world, "train"),
            image_root(world, self.name),
            tokenizer,
            dcfg,
            self.video,
            cfg.seed,
            cfg.max_train_samples,
        )
        return make_loader(dataset, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_set(self, module: TaskModule, tokenizer: Any, world: Path, split: str) -> RetrievalEvalSet:
        dcfg = model_data_config(module.model, augment=False)
        path = self.file(world, resolve_split(split))
        root = image_root(world, self.name)
        return retrieval_eval_set(path, root, tokenizer, dcfg, self.video, self.data.max_eval_samples)

    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        data = self.eval_set(module, tokenizer, world, split)
        metrics, predictions = evaluate_retrieval(
            module.model,
            data,
            k_test=int(self.options["k_test"]),
            score=self.options["score"],
            batch_size=self.data.eval_batch_size,
            chunk=int(self.options["chunk"]),
        )
        write_json_result(out_dir, f"{self.name}_{resolve_split(split)}.json", predictions)
        return metrics

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        """One query batch: encode ``batch_size`` items and captions, ITC similarities, ITM on the pairs."""
        data = self.eval_set(module, tokenizer, world, latency_split(world, self.name))
        n = len(data.data.images)
        device = module_device(module)
        items = torch.stack([data.data.images[i % n] for i in range(batch_size)]).to(device)
        texts = [data.data.image_text_index[i % n][0] for i in range(batch_size)]
        text_ids, text_atts = data.data.text_ids[texts].to(device), data.data.text_atts[texts].to(device)
        model = module.model
        encode = model.encode_video if self.video else model.encode_image

        @torch.no_grad()
        def call() -> torch.Tensor:
            model.eval()
            vis, vis_atts = encode(items)
            text = model.encode_text(text_ids, text_atts)
            sim = model.image_feat(vis) @ model.text_feat(text).t()  # (B, B)
            itm = model.itm_logits(model.fuse(text, text_atts, vis, vis_atts))[:, 1]
            return sim.diagonal() + itm

        return call


class VideoRetrievalTask(RetrievalTask):
    """MSR-VTT-style text–video retrieval (world: ``annotations/msrvtt/msrvtt_ret_{split}.json``)."""

    name = "video_retrieval"
    video = True
