"""Image-text retrieval metrics: R@1/5/10 in both directions and their means, at any gallery size.

:func:`retrieval_metrics` is the official ``itm_eval`` (X-VLM / VLUE ``Retrieval.py``) on full score
matrices: text retrieval (``txt_*``) ranks, for each image, its best-placed ground-truth caption;
image retrieval (``img_*``) ranks each caption's single image; ranks come from a descending
``np.argsort`` exactly as the official code takes them (ties go the way its sort leaves them).

Large galleries never need the full (N_img, N_txt) matrix: :func:`topk_search` (from
:mod:`grainvl.metrics.search`, with the built :class:`~grainvl.metrics.search.GalleryIndex` for
galleries searched many times) gives each query's top-k, and :func:`retrieval_metrics_from_topk`
turns ranked top-k lists (k >= 10) into the same numbers. Ranked lists are also the prediction
format of ``grainvl score retrieval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

# The search moved to metrics.search; FAISS_MIN_ITEMS, chunked_topk and faiss_topk are re-exported
# for the callers that import them from here (grainvl.metrics).
from grainvl.metrics.search import FAISS_MIN_ITEMS, chunked_topk, faiss_topk, topk_search  # noqa: F401

KS = (1, 5, 10)


def _summarise(tr_ranks: np.ndarray, ir_ranks: np.ndarray) -> dict[str, float]:
    """Official ``itm_eval`` summary of 0-based ranks (a rank >= 10, or inf, misses every R@k), with
    the official key order (it is what ``grainvl score retrieval`` prints)."""
    tr = {k: 100.0 * len(np.where(tr_ranks < k)[0]) / len(tr_ranks) for k in KS}
    ir = {k: 100.0 * len(np.where(ir_ranks < k)[0]) / len(ir_ranks) for k in KS}
    tr_mean, ir_mean = (tr[1] + tr[5] + tr[10]) / 3, (ir[1] + ir[5] + ir[10]) / 3
    return {
        **{f"txt_r{k}": v for k, v in tr.items()},
        "txt_r_mean": tr_mean,
        **{f"img_r{k}": v for k, v in ir.items()},
        "img_r_mean": ir_mean,
        "r_mean": (tr_mean + ir_mean) / 2,
    }


def retrieval_metrics(
    scores_i2t: np.ndarray, scores_t2i: np.ndarray, img2txt: Sequence[Sequence[int]], txt2img: Sequence[int]
) -> dict[str, float]:
    """R@1/5/10 in both directions and their means, in percent (official ``itm_eval``).

    Args:
        scores_i2t: (N_img, N_txt) scores, higher is better.
        scores_t2i: (N_txt, N_img) scores (the transpose, unless re-ranked separately).
        img2txt: for each image, the indices of its ground-truth captions.
        txt2img: for each caption, the index of its image.

    Note the argument order: ``img2txt`` before ``txt2img`` (the official function takes
    ``txt2img, img2txt``); kept from the first version of this function for its callers.
    """
    if len(scores_i2t) != len(img2txt) or len(scores_t2i) != len(txt2img):
        raise ValueError(
            f"score rows ({len(scores_i2t)} images, {len(scores_t2i)} texts) do not match "
            f"img2txt ({len(img2txt)}) / txt2img ({len(txt2img)})"
        )
    tr_ranks = np.array([_best_rank(row, img2txt[i]) for i, row in enumerate(scores_i2t)], dtype=float)
    ir_ranks = np.array([_best_rank(row, [txt2img[t]]) for t, row in enumerate(scores_t2i)], dtype=float)
    return _summarise(tr_ranks, ir_ranks)


def _best_rank(row: np.ndarray, targets: Sequence[int]) -> int:
    """``itm_eval``'s rank: position in ``np.argsort(row)[::-1]`` (numpy's default sort, so exact ties
    come out as the official code's do), the smallest over the ground-truth indices."""
    order = np.argsort(row)[::-1]
    return min(int(np.where(order == t)[0][0]) for t in targets)


FILL_SCORE = -100.0  # the official score matrices start as torch.full(..., -100.0)


def dense_rows(
    index: Sequence[Sequence[int]], scores: Sequence[Sequence[float]], gallery: int, fill: float = FILL_SCORE
):
    """Yield, one row at a time, the official float32 score row: ``fill`` everywhere except each
    query's candidates (``index``), which get their ``scores``."""
    if len(index) != len(scores):
        raise ValueError(f"{len(index)} candidate lists for {len(scores)} score lists")
    for cand, vals in zip(index, scores):
        if len(cand) != len(vals):
            raise ValueError(f"{len(cand)} candidates with {len(vals)} scores")
        row = np.full(gallery, fill, dtype=np.float32)
        row[np.asarray(cand, dtype=np.int64)] = np.asarray(vals, dtype=np.float32)
        yield row


def retrieval_metrics_from_candidates(
    i2t_index: Sequence[Sequence[int]],
    i2t_scores: Sequence[Sequence[float]],
    t2i_index: Sequence[Sequence[int]],
    t2i_scores: Sequence[Sequence[float]],
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int],
    fill: float = FILL_SCORE,
) -> dict[str, float]:
    """The official X-VLM evaluation from each query's re-ranked candidates: the (N_img, N_txt) and
    (N_txt, N_img) float32 matrices filled with -100 outside the ITC top-``k_test`` are rebuilt one
    row at a time and ranked by :func:`retrieval_metrics`'s ``np.argsort(row)[::-1]``. So a ground
    truth outside the candidates still gets the rank the official code gives it among the -100 ties
    (it matters for ``k_test < 10``), and ties among candidates break the official way too."""
    n_img, n_txt = len(img2txt), len(txt2img)
    if len(i2t_index) != n_img or len(t2i_index) != n_txt:
        raise ValueError(f"{len(i2t_index)}/{len(t2i_index)} candidate lists for {n_img} images/{n_txt} texts")
    tr = [_best_rank(row, img2txt[i]) for i, row in enumerate(dense_rows(i2t_index, i2t_scores, n_txt, fill))]
    ir = [_best_rank(row, [txt2img[t]]) for t, row in enumerate(dense_rows(t2i_index, t2i_scores, n_img, fill))]
    return _summarise(np.array(tr, dtype=float), np.array(ir, dtype=float))


def first_hit_ranks(ranked: np.ndarray | Sequence[Sequence[int]], targets: Sequence[Sequence[int]]) -> np.ndarray:
    """0-based position of the first target in each ranked list; ``inf`` when none is listed.

    Args:
        ranked: (Q, k) gallery indices, best first (or Q lists, possibly of different lengths).
        targets: for each query, its ground-truth gallery indices.
    """
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} queries")
    ranks = np.full(len(targets), np.inf)
    for q, (row, wanted) in enumerate(zip(ranked, targets)):
        hits = np.flatnonzero(np.isin(np.asarray(row), np.asarray(list(wanted))))
        if hits.size:
            ranks[q] = hits[0]
    return ranks


def retrieval_metrics_from_topk(
    i2t_topk: np.ndarray | Sequence[Sequence[int]],
    t2i_topk: np.ndarray | Sequence[Sequence[int]],
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int],
) -> dict[str, float]:
    """:func:`retrieval_metrics` from ranked lists: (N_img, k) text indices and (N_txt, k) image
    indices, best first. Lists of at least 10 entries (or the whole gallery) give the same numbers
    as the full matrices."""
    tr_ranks = first_hit_ranks(i2t_topk, img2txt)
    ir_ranks = first_hit_ranks(t2i_topk, [[i] for i in txt2img])
    return _summarise(tr_ranks, ir_ranks)


def embedding_retrieval_metrics(
    image_embeds: torch.Tensor | np.ndarray,
    text_embeds: torch.Tensor | np.ndarray,
    img2txt: Sequence[Sequence[int]],
    txt2img: Sequence[int],
    backend: str = "auto",
    chunk: int = 8192,
) -> dict[str, float]:
    """Retrieval metrics of dot-product (ITC) similarity, with top-10 searches in both directions
    instead of the (N_img, N_txt) matrix."""
    k = max(KS)
    _, i2t = topk_search(image_embeds, text_embeds, k, backend=backend, chunk=chunk)
    _, t2i = topk_search(text_embeds, image_embeds, k, backend=backend, chunk=chunk)
    return retrieval_metrics_from_topk(i2t, t2i, img2txt, txt2img)


def caption_index(records: Sequence[dict]) -> tuple[list[str], list[list[int]], list[int]]:
    """Texts, ``img2txt`` and ``txt2img`` of an ALBEF/VLUE retrieval test file, numbered as the
    official ``re_eval_dataset`` numbers them: images in file order, captions in file order, one
    running caption index over the whole file."""
    texts: list[str] = []
    img2txt: list[list[int]] = []
    txt2img: list[int] = []
    for i, record in enumerate(records):
        captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
        img2txt.append(list(range(len(texts), len(texts) + len(captions))))
        texts.extend(captions)
        txt2img.extend([i] * len(captions))
    return texts, img2txt, txt2img
