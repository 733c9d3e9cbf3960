"""ITC retrieval at scale: exact torch.mm search, an exact FAISS flat index and the approximate IVF
index, side by side in one run (issue 20 §3).

    python benchmarks/bench_retrieval.py [--items 1000000] [--threads 2] [--queries 100] [--gallery anchored]

The query side is the real text tower of ``--model`` (xvlm-small) at batch 1: tokenise one caption,
run the text layers, the ITC projection and the normalisation, then search the gallery for its top
10. Per query: p50/p90 of (a) the text tower, (b) the search, (c) the ITC stage (a + b), for each
index; and each index's build time, payload bytes and recall@10 against exact search.

The gallery is ``--items`` random unit vectors of the model's ITC embedding size. With
``--gallery uniform`` they are uniform on the sphere, which has no neighbourhood structure at all:
every item is about as far from a query as every other, so the IVF index finds the exact top 10
only by scanning most of the gallery (tuned, it searches most of its cells). Real
ITC galleries are clustered and their images lie near the captions that describe them, so the
default, ``--gallery anchored``, draws each item around the text tower's embedding of one of
``--anchors`` generated captions (normalise(anchor + spread * noise / sqrt(D)); ``--spread 1``
puts an item at cosine 0.71 from its anchor). The benchmark's query captions are other captions of
the same generator, never anchors, and the IVF index's nprobe is tuned on a third, disjoint set of
captions, so the recall it reports is measured on queries it was not tuned on.

Then the IVF index saved and loaded back (the build is done once per gallery), and the one-shot
searches (``topk_search``, nothing built) that ``backend="auto"`` chooses from, at 1, 256 and 1000
queries.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch

from grainvl.bench.efficiency import percentile
from grainvl.metrics.search import GalleryIndex, auto_backend, recall_at_k, topk_search
from grainvl.models.factory import get_tokenizer, load_model
from grainvl.models.xvlm import XVLM

K = 10
TUNE_CAPTIONS = 256  # captions the IVF nprobe is tuned on (2,560 neighbours: recall to about +-0.005)
WARMUP = 5
# Generated captions: every combination is a distinct caption (16 x 10 x 8 x 10 = 12,800).
SUBJECTS = [
    "dog", "cat", "man", "woman", "child", "horse", "bird", "car",
    "bus", "boat", "train", "elephant", "giraffe", "cake", "pizza", "bicycle",
]  # fmt: skip
ATTRIBUTES = ["red", "small", "large", "white", "black", "old", "young", "happy", "wet", "brown"]
ACTIONS = ["standing", "sitting", "running", "sleeping", "waiting", "playing", "parked", "lying"]
PLACES = [
    "on the beach", "in a park", "on a city street", "in a kitchen", "near a lake",
    "in the snow", "on a table", "in a field", "at a station", "under a tree",
]  # fmt: skip


def captions(seed: int) -> list[str]:
    """Every generated caption, in a seeded random order (anchors, tuning and query captions are slices)."""
    all_captions = [f"a {a} {s} {v} {p}" for s, a, v, p in itertools.product(SUBJECTS, ATTRIBUTES, ACTIONS, PLACES)]
    return [all_captions[i] for i in np.random.default_rng(seed).permutation(len(all_captions))]


@torch.no_grad()
def text_embed(model: XVLM, tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """ITC text embeddings (B, E), unit length: text layers, ``text_proj`` of [CLS], normalise."""
    enc = tokenizer(texts, padding="longest", truncation=True, max_length=model.config.max_tokens, return_tensors="pt")
    return model.text_feat(model.encode_text(enc["input_ids"], enc["attention_mask"]))


def make_gallery(args: argparse.Namespace, anchors: torch.Tensor | None, dim: int) -> np.ndarray:
    """(items, dim) float32 unit vectors, filled in blocks so no float64 copy of the gallery exists."""
    rng = np.random.default_rng(args.seed)
    gallery = np.empty((args.items, dim), dtype=np.float32)
    for start in range(0, args.items, 100_000):
        block = gallery[start : start + 100_000]  # (B, D) view
        rng.standard_normal(out=block, dtype=np.float32)
        if anchors is not None:  # an item: its anchor plus noise of norm ~spread
            block *= args.spread / np.sqrt(dim)
            block += anchors.numpy()[rng.integers(0, len(anchors), len(block))]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
    return gallery


def build_indexes(gallery: np.ndarray, tune: torch.Tensor, args: argparse.Namespace) -> dict:
    """{kind: (index, build seconds)} for the two exact kinds and the IVF index."""
    built = {}
    for kind in ("exact-torch", "exact-faiss", "ivf"):
        start = time.perf_counter()
        index = GalleryIndex.build(gallery, kind, target_recall=args.target_recall, k=K, tune_queries=tune)
        built[kind] = (index, time.perf_counter() - start)
        line = f"built {kind} in {built[kind][1]:.1f} s"
        if index.tuned_recall is not None:
            line += f", nprobe {index.nprobe} of {index.nlist} cells: recall@{K} {index.tuned_recall:.3f} (tuning)"
        print(line, flush=True)
    return built


def run_queries(model: XVLM, tokenizer: Any, texts: list[str], indexes: dict) -> tuple[list[float], dict, dict]:
    """Per query at batch 1: text-tower ms, {kind: search ms}, {kind: (Q, K) indices}."""
    tower_ms: list[float] = []
    search_ms: dict[str, list[float]] = {kind: [] for kind in indexes}
    found: dict[str, list[np.ndarray]] = {kind: [] for kind in indexes}
    for text in texts:
        start = time.perf_counter()
        query = text_embed(model, tokenizer, [text])  # (1, E)
        tower_ms.append(1000 * (time.perf_counter() - start))
        for kind, (index, _) in indexes.items():
            start = time.perf_counter()
            _, ids = index.search(query, K)  # (1, K)
            search_ms[kind].append(1000 * (time.perf_counter() - start))
            found[kind].append(ids[0])
    return tower_ms, search_ms, {kind: np.stack(lists) for kind, lists in found.items()}


def report(tower_ms: list[float], search_ms: dict, found: dict, indexes: dict) -> dict[str, dict[str, float]]:
    """Print the side-by-side table; return its numbers per kind."""
    exact = found["exact-torch"]
    rows = {}
    print(
        f"{'index':<13}{'build s':>9}{'payload MB':>12}{'nprobe':>8}{'recall@10':>11}"
        f"{'search p50':>12}{'p90':>7}{'ITC p50':>10}{'p90':>7}  (ms per query, batch 1)"
    )
    for kind, (index, build_s) in indexes.items():
        stage = [t + s for t, s in zip(tower_ms, search_ms[kind])]
        rows[kind] = {
            "build_s": build_s,
            "bytes": index.nbytes,
            "recall": recall_at_k(found[kind], exact),
            "search_p50": percentile(search_ms[kind], 50),
            "search_p90": percentile(search_ms[kind], 90),
            "itc_p50": percentile(stage, 50),
            "itc_p90": percentile(stage, 90),
        }
        r = rows[kind]
        print(
            f"{kind:<13}{build_s:>9.1f}{index.nbytes / 1e6:>12.1f}{index.nprobe or '-':>8}{r['recall']:>11.3f}"
            f"{r['search_p50']:>12.2f}{r['search_p90']:>7.2f}{r['itc_p50']:>10.2f}{r['itc_p90']:>7.2f}"
        )
    print(f"text tower alone: p50 {percentile(tower_ms, 50):.2f} ms, p90 {percentile(tower_ms, 90):.2f} ms")
    return rows


def print_ratios(rows: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    approx = rows["ivf"]
    for exact in ("exact-torch", "exact-faiss"):
        e = rows[exact]
        print(
            f"{exact} / ivf: search p50 {e['search_p50'] / approx['search_p50']:.1f}x, "
            f"ITC stage p50 {e['itc_p50'] / approx['itc_p50']:.2f}x, p90 {e['itc_p90'] / approx['itc_p90']:.2f}x, "
            f"payload {e['bytes'] / approx['bytes']:.2f}x"
        )
    met = approx["itc_p50"] <= 20 and approx["itc_p90"] <= 40 and approx["recall"] >= args.target_recall
    print(
        f"issue targets for ivf (ITC stage p50 <= 20 ms, p90 <= 40 ms, recall@10 >= {args.target_recall}): "
        f"{'met' if met else 'NOT met'} ({approx['itc_p50']:.1f} / {approx['itc_p90']:.1f} ms, "
        f"recall {approx['recall']:.3f})"
    )


def one_shot(gallery: np.ndarray, query: torch.Tensor) -> None:
    """``topk_search`` without an index, both backends: 1 query (p50 of 20 calls after one to warm up);
    256 and 1000 queries (one call each: seconds at 1M items), either side of faiss's switch from its
    per-query scan to BLAS."""
    print(f"one-shot topk_search on {len(gallery):,} items (nothing built; auto's thresholds compare these):")
    for n_queries in (1, 256, 1000):
        queries = query if n_queries == 1 else torch.from_numpy(gallery[:n_queries])
        times = {}
        for backend in ("torch", "faiss"):
            calls = 21 if n_queries == 1 else 1
            ms = []
            for _ in range(calls):
                start = time.perf_counter()
                topk_search(queries, gallery, K, backend=backend)
                ms.append(1000 * (time.perf_counter() - start))
            times[backend] = percentile(ms[1:] or ms, 50)  # one query: the first call warms up
        print(
            f"  Q={n_queries:<5} torch {times['torch']:>9.1f} ms   faiss {times['faiss']:>9.1f} ms   "
            f"torch/faiss {times['torch'] / times['faiss']:.2f}   auto picks {auto_backend(n_queries, *gallery.shape)}"
        )


def save_and_load(index: GalleryIndex, query: torch.Tensor) -> None:
    """Save the index to a temp folder, load it back, and check it finds what it found before."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "gallery.ivf.faiss"
        start = time.perf_counter()
        index.save(path)
        saved = time.perf_counter() - start
        start = time.perf_counter()
        loaded = GalleryIndex.load(path)
        load_s = time.perf_counter() - start
        same = np.array_equal(loaded.search(query, K)[1], index.search(query, K)[1])
        print(
            f"saved the ivf index ({path.stat().st_size / 1e6:.1f} MB) in {saved:.2f} s, loaded it in {load_s:.2f} s, "
            f"nprobe {loaded.nprobe} kept, same results after loading: {same}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000, help="gallery size")
    parser.add_argument("--queries", type=int, default=100, help="query captions, one at a time")
    parser.add_argument("--threads", type=int, default=2, help="torch and faiss threads")
    parser.add_argument("--model", default="xvlm-small")
    parser.add_argument("--gallery", choices=("anchored", "uniform"), default="anchored")
    parser.add_argument("--anchors", type=int, default=4096, help="anchor captions of the anchored gallery")
    parser.add_argument("--spread", type=float, default=1.0, help="noise norm around an anchor")
    parser.add_argument("--target-recall", type=float, default=0.95, help="recall@10 the IVF nprobe is tuned to")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = load_model(args.model).eval()
    tokenizer = get_tokenizer(model.config)
    texts = captions(args.seed)
    n_anchors = args.anchors if args.gallery == "anchored" else 0
    if n_anchors + TUNE_CAPTIONS + WARMUP + args.queries > len(texts):
        parser.error(f"anchors + queries must leave room in the {len(texts)} generated captions")
    tune_texts = texts[n_anchors : n_anchors + TUNE_CAPTIONS]
    query_texts = texts[n_anchors + TUNE_CAPTIONS :][: WARMUP + args.queries]
    start = time.perf_counter()
    anchors = None
    if n_anchors:  # (A, E) text embeddings of the anchor captions, 256 at a time
        anchors = torch.cat(
            [text_embed(model, tokenizer, texts[i : min(i + 256, n_anchors)]) for i in range(0, n_anchors, 256)]
        )
    dim = model.config.embed_dim
    gallery = make_gallery(args, anchors, dim)
    print(
        f"{args.model}: ITC size {dim}; {args.gallery} gallery of {args.items:,} unit vectors "
        f"({gallery.nbytes / 1e6:.0f} MB, made in {time.perf_counter() - start:.1f} s); "
        f"{args.threads} threads; {args.queries} query captions at batch 1"
    )
    indexes = build_indexes(gallery, text_embed(model, tokenizer, tune_texts), args)
    run_queries(model, tokenizer, query_texts[:WARMUP], indexes)  # warm-up, not counted
    tower_ms, search_ms, found = run_queries(model, tokenizer, query_texts[WARMUP:], indexes)
    rows = report(tower_ms, search_ms, found, indexes)
    print_ratios(rows, args)
    query = text_embed(model, tokenizer, query_texts[:1])
    save_and_load(indexes["ivf"][0], query)
    del indexes  # frees the exact-faiss copy of the gallery before the one-shot runs
    one_shot(gallery, query)


if __name__ == "__main__":
    main()
