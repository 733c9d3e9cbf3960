"""Image-text retrieval metrics: R@1/5/10 in both directions and their means, at any gallery size.

:func:`retrieval_metrics` is the official ``itm_eval`` (X-VLM / VLUE ``Retrieval.py``) on full score
matrices: text retrieval (``txt_*``) ranks, for each image, its best-placed ground-truth caption;
image retrieval (``img_*``) ranks each caption's single image; ranks come from a descending
``np.argsort`` exactly as the official code takes them (ties go the way its sort leaves them).

Large galleries never need the full (N_img, N_txt) matrix: :func:`chunked_topk` keeps a running
top-k over gallery chunks (memory O(Q·(k + chunk))), :func:`faiss_topk` searches an exact
inner-product FAISS index (the path :func:`topk_search` takes from :data:`FAISS_MIN_ITEMS` items
on), and :func:`retrieval_metrics_from_topk` turns ranked top-k lists (k >= 10) into the same
numbers. Ranked lists are also the prediction format of ``grainvl score retrieval``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

KS = (1, 5, 10)
FAISS_MIN_ITEMS = 100_000  # galleries this large go through FAISS in topk_search(backend="auto")


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


def _as_float_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.float()


@torch.no_grad()
def chunked_topk(
    query: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, k: int, chunk: int = 8192
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``query @ gallery.T`` without the full matrix.

    Args:
        query: (Q, D) embeddings; gallery: (G, D) embeddings (same device).
        k: how many to keep per query (clipped to G).
        chunk: gallery rows scored at a time; peak memory is O(Q·(k + chunk)) scores.

    Returns:
        ``(scores, indices)``, both (Q, k), best first; equal to ``(query @ gallery.T).topk(k)``
        up to the order of exactly tied scores.
    """
    q, g = _as_float_tensor(query), _as_float_tensor(gallery)
    if q.dim() != 2 or g.dim() != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (Q, D) and (G, D) embeddings, got {tuple(q.shape)} and {tuple(g.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    k = min(k, g.shape[0])
    best_scores = torch.empty(q.shape[0], 0, dtype=q.dtype, device=q.device)  # (Q, <=k)
    best_index = torch.empty(q.shape[0], 0, dtype=torch.long, device=q.device)  # (Q, <=k)
    for start in range(0, g.shape[0], chunk):
        block = q @ g[start : start + chunk].T  # (Q, C)
        cand_scores = torch.cat([best_scores, block], dim=1)  # (Q, <=k + C)
        block_index = torch.arange(start, start + block.shape[1], device=q.device).expand(q.shape[0], -1)
        cand_index = torch.cat([best_index, block_index], dim=1)
        top = cand_scores.topk(min(k, cand_scores.shape[1]), dim=1)
        best_scores, best_index = top.values, cand_index.gather(1, top.indices)
    return best_scores, best_index


def faiss_topk(
    query: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, k: int, batch: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with a FAISS ``IndexFlatIP`` (faiss-cpu, multi-threaded, float32).

    Use normalised embeddings for cosine similarity. Returns ``(scores, indices)``, both (Q, k)
    numpy arrays, best first. Queries are searched ``batch`` at a time to bound memory.
    """
    # Imported here: faiss is an optional backend of the retrieval search.
    import faiss

    q = np.ascontiguousarray(torch.as_tensor(query).detach().cpu().float().numpy())
    g = np.ascontiguousarray(torch.as_tensor(gallery).detach().cpu().float().numpy())
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(f"expected (Q, D) and (G, D) embeddings, got {q.shape} and {g.shape}")
    k = min(k, g.shape[0])
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    scores, indices = [], []
    for start in range(0, q.shape[0], batch):
        s, i = index.search(q[start : start + batch], k)
        scores.append(s)
        indices.append(i)
    return np.concatenate(scores), np.concatenate(indices)


def topk_search(
    query: torch.Tensor | np.ndarray,
    gallery: torch.Tensor | np.ndarray,
    k: int,
    backend: str = "auto",
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery items per query by inner product; ``backend`` is "torch" (:func:`chunked_topk`),
    "faiss" (:func:`faiss_topk`) or "auto" (FAISS from :data:`FAISS_MIN_ITEMS` gallery items on).
    Returns numpy ``(scores, indices)``, both (Q, k)."""
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend should be auto, torch or faiss, got {backend!r}")
    n_items = len(gallery)
    if backend == "faiss" or (backend == "auto" and n_items >= FAISS_MIN_ITEMS):
        return faiss_topk(query, gallery, k)
    scores, indices = chunked_topk(query, gallery, k, chunk=chunk)
    return scores.cpu().numpy(), indices.cpu().numpy()


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
