"""Top-k inner-product search over embedding galleries: one-shot searches and a built index.

Two ways to search, one per use:

* **One-shot** (:func:`topk_search`): a gallery searched once, as an evaluation does. Nothing is
  built: :func:`chunked_topk` (torch mm over gallery chunks) or :func:`faiss_topk` (``faiss.knn``,
  which reads the caller's array in place). ``backend="auto"`` takes whichever measured faster for
  the number of queries (the thresholds below; figures in docs/metrics.md, "Retrieval at scale").
* **Built once, queried many times** (:class:`GalleryIndex`): serving and the retrieval benchmark.
  Kinds: ``exact-torch`` (the gallery as a contiguous float32 tensor, searched by
  :func:`chunked_topk`), ``exact-faiss`` (a FAISS ``IndexFlatIP``) and ``ivf``, an approximate
  FAISS IVF-Flat index whose ``nprobe`` is tuned at build time to reach a recall@k against exact
  search. FAISS kinds save to and load from one file (``faiss.write_index``, written atomically).

Use normalised embeddings for cosine similarity; every function ranks by inner product.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grainvl.errors import DataError
from grainvl.utils.fileio import atomic_file, open_input

# topk_search(backend="auto"); measured on 100k x 256 unit vectors, one thread (docs/metrics.md).
# Below this many items both backends take under a millisecond a query; one backend for all of them
# keeps a small evaluation's tie order from depending on how many queries it has.
FAISS_MIN_ITEMS = 10_000
FAISS_SCAN_MAX_QUERIES = 3  # up to 3 queries faiss's per-query SIMD scan beats torch's mm (11 vs 18 ms at 3)

INDEX_KINDS = ("exact-torch", "exact-faiss", "ivf")
TRAIN_POINTS_PER_CELL = 64  # k-means sample per IVF cell: above faiss's 39 minimum, below its 256 cap
TUNE_QUERIES = 200  # gallery rows searched to tune nprobe when no queries are given
SEARCH_BATCH = 4096  # queries per faiss call, to bound the (batch, k) result buffers


def _as_float_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(x)
    return t if t.is_floating_point() else t.float()


def _as_float32_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A C-contiguous float32 numpy view of ``x`` (copied only when its dtype or layout needs it)."""
    return np.ascontiguousarray(torch.as_tensor(x).detach().cpu().float().numpy())


def _check_pair(q_shape: tuple[int, ...], g_shape: tuple[int, ...]) -> None:
    if len(q_shape) != 2 or len(g_shape) != 2 or q_shape[1] != g_shape[1]:
        raise ValueError(f"expected (Q, D) and (G, D) embeddings, got {tuple(q_shape)} and {tuple(g_shape)}")


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
    _check_pair(tuple(q.shape), tuple(g.shape))
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
    query: torch.Tensor | np.ndarray, gallery: torch.Tensor | np.ndarray, k: int, batch: int = SEARCH_BATCH
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k with ``faiss.knn`` (faiss-cpu, multi-threaded, float32).

    No index is built: ``faiss.knn`` reads a float32 C-contiguous gallery in place, where an
    ``IndexFlatIP`` would first copy it (about 0.5 µs an item, 0.6 s at 1M x 256, on every call).
    Returns ``(scores, indices)``, both (Q, k) numpy arrays, best first. Queries are searched
    ``batch`` at a time to bound memory.
    """
    # Imported here: faiss is an optional backend of the retrieval search.
    import faiss

    q, g = _as_float32_array(query), _as_float32_array(gallery)
    _check_pair(q.shape, g.shape)
    k = min(k, g.shape[0])
    found = [faiss.knn(q[s : s + batch], g, k, faiss.METRIC_INNER_PRODUCT) for s in range(0, q.shape[0], batch)]
    return np.concatenate([s for s, _ in found]), np.concatenate([i for _, i in found])


def auto_backend(n_queries: int, n_items: int, dim: int) -> str:
    """The one-shot backend that measured faster for (n_queries, dim) queries on n_items items.

    ``faiss.knn`` scans the gallery once per query with SIMD code until the batch holds
    ``faiss.cvar.distance_compute_blas_threshold`` values (128,000 in faiss 1.15: 500 queries of
    256), then switches to blocked BLAS. Its scan beats torch's mm for up to
    :data:`FAISS_SCAN_MAX_QUERIES` queries; between that and the BLAS switch, torch's mm amortises
    the gallery over the queries and wins (3x at 256 queries); past the switch faiss wins again
    (1.8x at 512 queries, 1.5x at 1000, 3x at 2000).
    """
    if n_items < FAISS_MIN_ITEMS:
        return "torch"
    # Imported here: faiss is an optional backend of the retrieval search.
    import faiss

    blas = n_queries * dim >= faiss.cvar.distance_compute_blas_threshold
    return "faiss" if n_queries <= FAISS_SCAN_MAX_QUERIES or blas else "torch"


def topk_search(
    query: torch.Tensor | np.ndarray,
    gallery: torch.Tensor | np.ndarray,
    k: int,
    backend: str = "auto",
    chunk: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k gallery items per query by inner product, one-shot (nothing is kept between calls).

    ``backend`` is "torch" (:func:`chunked_topk`), "faiss" (:func:`faiss_topk`) or "auto"
    (:func:`auto_backend`). Returns numpy ``(scores, indices)``, both (Q, k). To search one gallery
    many times, build a :class:`GalleryIndex` instead.
    """
    if backend not in ("auto", "torch", "faiss"):
        raise ValueError(f"backend should be auto, torch or faiss, got {backend!r}")
    if backend == "auto":
        backend = auto_backend(len(query), len(gallery), query.shape[-1])
    if backend == "faiss":
        return faiss_topk(query, gallery, k)
    scores, indices = chunked_topk(query, gallery, k, chunk=chunk)
    return scores.cpu().numpy(), indices.cpu().numpy()


def default_nlist(n_items: int) -> int:
    """IVF cells for a gallery: the power of two at or below 2·sqrt(G), with at least
    :data:`TRAIN_POINTS_PER_CELL` gallery items per cell to train on (1024 at 1M, 512 at 100k)."""
    cap = min(2 * math.sqrt(n_items), n_items / TRAIN_POINTS_PER_CELL)
    return 2 ** int(math.log2(cap)) if cap >= 1 else 1


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean fraction of each exact (Q, k) top-k list that the (Q, k) ``found`` lists contain."""
    if found.shape != exact.shape:
        raise ValueError(f"found {found.shape} and exact {exact.shape} lists differ in shape")
    hits = sum(len(np.intersect1d(f, e)) for f, e in zip(found, exact))
    return hits / exact.size if exact.size else 1.0


class GalleryIndex:
    """A gallery of (G, D) embeddings indexed once and searched many times by inner product.

    Build with :meth:`build`, search with :meth:`search`, keep with :meth:`save` / :meth:`load`.
    ``tuned_recall`` is the recall@k that the ``ivf`` kind reached against exact search on its
    tuning queries when it was built (None for the exact kinds and for a loaded index).
    """

    def __init__(self, kind: str, store: Any, dim: int, size: int, tuned_recall: float | None = None) -> None:
        self.kind, self.dim, self.size, self.tuned_recall = kind, dim, size, tuned_recall
        self._store = store  # exact-torch: the (G, D) float32 tensor; otherwise the faiss index

    @classmethod
    def build(
        cls,
        gallery: torch.Tensor | np.ndarray,
        kind: str = "ivf",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        target_recall: float = 0.95,
        k: int = 10,
        tune_queries: torch.Tensor | np.ndarray | None = None,
        seed: int = 0,
    ) -> GalleryIndex:
        """Index ``gallery`` (G, D).

        For ``ivf``: ``nlist`` cells (default :func:`default_nlist`), k-means trained on a sample of
        :data:`TRAIN_POINTS_PER_CELL` items a cell. ``nprobe`` (cells searched per query), if not
        given, is the smallest power of two whose recall@``k`` against exact search reaches
        ``target_recall`` on ``tune_queries`` (Q, D), or, without them, on :data:`TUNE_QUERIES`
        gallery rows searched leave-one-out (each row's own entry dropped from both lists).
        Tune with queries like the ones you will serve: recall depends on where they fall.

        ``exact-torch`` shares a float32 C-contiguous ``gallery`` instead of copying it (1 GB at
        1M x 256): do not write to it afterwards. The FAISS kinds hold their own copy.
        """
        if kind not in INDEX_KINDS:
            raise ValueError(f"index kind should be one of {', '.join(INDEX_KINDS)}, got {kind!r}")
        g = _as_float32_array(gallery)  # (G, D)
        if g.ndim != 2 or g.shape[0] == 0:
            raise ValueError(f"expected a non-empty (G, D) gallery, got shape {g.shape}")
        if kind == "exact-torch":
            return cls(kind, torch.from_numpy(g), g.shape[1], g.shape[0])
        # Imported here: faiss is an optional backend of the retrieval search.
        import faiss

        if kind == "exact-faiss":
            flat = faiss.IndexFlatIP(g.shape[1])
            flat.add(g)
            return cls(kind, flat, g.shape[1], g.shape[0])
        if not 0 < target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
        ivf = _train_ivf(g, nlist or default_nlist(len(g)), seed)
        index = cls(kind, ivf, g.shape[1], g.shape[0])
        if nprobe is not None:
            index.nprobe = nprobe
        else:
            index.tuned_recall = index._tune_nprobe(g, target_recall, k, tune_queries, seed)
        return index

    @property
    def nlist(self) -> int | None:
        """Cells of an ``ivf`` index (None for the exact kinds)."""
        return int(self._store.nlist) if self.kind == "ivf" else None

    @property
    def nprobe(self) -> int | None:
        """Cells an ``ivf`` index searches per query (None for the exact kinds)."""
        return int(self._store.nprobe) if self.kind == "ivf" else None

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        if self.kind != "ivf":
            raise ValueError(f"nprobe applies to the ivf kind, not {self.kind}")
        if not 1 <= value <= self._store.nlist:
            raise ValueError(f"nprobe must be in [1, {self._store.nlist}], got {value}")
        self._store.nprobe = value

    @property
    def nbytes(self) -> int:
        """Bytes of the searched payload: the vectors (and, for ivf, the item ids and centroids)."""
        if self.kind == "exact-torch":
            return self._store.numel() * self._store.element_size()
        vectors = self._store.ntotal * self._store.code_size
        if self.kind == "exact-faiss":
            return vectors
        ids = 8 * self._store.ntotal  # int64 id per stored vector
        return vectors + ids + self._store.quantizer.ntotal * self.dim * 4

    def search(self, query: torch.Tensor | np.ndarray, k: int, chunk: int = 8192) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per query (Q, D): numpy ``(scores, indices)``, both (Q, min(k, G)), best
        first. ``chunk``: gallery rows per mm for ``exact-torch``. An ``ivf`` search whose probed
        cells hold fewer than k items pads its lists with index -1."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.size)
        if self.kind == "exact-torch":
            scores, indices = chunked_topk(torch.as_tensor(query).float(), self._store, k, chunk=chunk)
            return scores.numpy(), indices.numpy()
        q = _as_float32_array(query)  # (Q, D)
        _check_pair(q.shape, (self.size, self.dim))
        found = [self._store.search(q[s : s + SEARCH_BATCH], k) for s in range(0, q.shape[0], SEARCH_BATCH)]
        if not found:
            return np.empty((0, k), np.float32), np.empty((0, k), np.int64)
        return np.concatenate([s for s, _ in found]), np.concatenate([i for _, i in found])

    def save(self, path: str | Path) -> None:
        """Write a FAISS kind to ``path`` (``faiss.write_index`` to a temp file, then a rename); an
        ``ivf`` index keeps its nprobe. An ``exact-torch`` index is only its embeddings: keep those."""
        if self.kind == "exact-torch":
            raise ValueError("an exact-torch index is its embeddings: save those and build it again")
        # Imported here: faiss is an optional backend of the retrieval search.
        import faiss

        with atomic_file(Path(path)) as tmp:
            faiss.write_index(self._store, str(tmp))

    @classmethod
    def load(cls, path: str | Path) -> GalleryIndex:
        """An index written by :meth:`save`: ``exact-faiss`` (a flat index) or ``ivf`` (IVF-Flat),
        inner product. A missing, unreadable or other kind of file is a DataError."""
        # Imported here: faiss is an optional backend of the retrieval search.
        import faiss

        path = Path(path)
        with open_input(path, "rb") as f:
            try:  # streamed through Python's reader, so a missing file fails as every input does
                store = faiss.read_index(faiss.PyCallbackIOReader(f.read))
            except RuntimeError as e:
                detail = re.sub(r"^Error in .*? at \S+:\d+: ", "", str(e))
                raise DataError(path, None, f"not a readable FAISS index ({detail})") from None
        if isinstance(store, faiss.IndexIVFFlat):
            kind = "ivf"
        elif isinstance(store, faiss.IndexFlat):
            kind = "exact-faiss"
        else:
            raise DataError(path, None, f"a {type(store).__name__} index; expected IndexFlatIP or IndexIVFFlat")
        if store.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise DataError(
                path, None, f"metric {store.metric_type} is not inner product, which gallery indexes rank by"
            )
        return cls(kind, store, store.d, store.ntotal)

    def _tune_nprobe(
        self, gallery: np.ndarray, target: float, k: int, queries: torch.Tensor | np.ndarray | None, seed: int
    ) -> float:
        """Set the smallest power-of-two nprobe reaching ``target`` recall@k; returns the recall reached."""
        leave_one_out = queries is None
        if leave_one_out:
            rows = np.random.default_rng(seed).choice(len(gallery), min(TUNE_QUERIES, len(gallery)), replace=False)
            q = gallery[rows]  # (T, D)
        else:
            q = _as_float32_array(queries)
            _check_pair(q.shape, gallery.shape)
        depth = min(k + leave_one_out, len(gallery))
        _, exact = chunked_topk(q, torch.from_numpy(gallery), depth)
        exact = exact.numpy()  # (T, depth)
        nlist, recall = int(self._store.nlist), 0.0
        for nprobe in sorted({min(2**i, nlist) for i in range(int(math.log2(nlist)) + 2)}):
            self._store.nprobe = nprobe
            _, found = self.search(q, depth)
            if leave_one_out:
                found, exact_kept = _drop_rows_self(found, rows, k), _drop_rows_self(exact, rows, k)
            else:
                exact_kept = exact
            recall = recall_at_k(found, exact_kept)
            if recall >= target:
                break
        return recall


def _drop_rows_self(lists: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """(T, k+1) lists of gallery rows searched as queries -> (T, k): each row's own id removed
    (or the last entry, when the row did not find itself)."""
    kept = [np.delete(lst, np.flatnonzero(lst == r)[:1]) if r in lst else lst[:-1] for lst, r in zip(lists, rows)]
    return np.stack([lst[:k] for lst in kept])


def _train_ivf(gallery: np.ndarray, nlist: int, seed: int) -> Any:
    """An IVF-Flat inner-product index with ``nlist`` cells, trained on a sample and holding ``gallery``."""
    # Imported here: faiss is an optional backend of the retrieval search.
    import faiss

    if not 1 <= nlist <= len(gallery):
        raise ValueError(f"nlist must be in [1, {len(gallery)}] for {len(gallery)} items, got {nlist}")
    index = faiss.index_factory(gallery.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = seed
    n_train = min(len(gallery), TRAIN_POINTS_PER_CELL * nlist)
    sample = np.random.default_rng(seed).choice(len(gallery), n_train, replace=False)
    index.train(gallery[np.sort(sample)])  # (n_train, D)
    index.add(gallery)
    return index
