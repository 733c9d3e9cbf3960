"""Retrieval metrics at scale: chunked top-k, FAISS and the built gallery indexes against the full-matrix reference."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from grainvl.errors import DataError
from grainvl.metrics import retrieval as R
from grainvl.metrics import search as S


def _world(n_images: int = 40, per_image: int = 5, dim: int = 16, seed: int = 0):
    """Random unit embeddings where each caption is a noisy copy of its image (so R@k is neither 0 nor 100)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(n_images, dim))
    txt2img = [i for i in range(n_images) for _ in range(per_image)]
    texts = images[txt2img] + 1.5 * rng.normal(size=(len(txt2img), dim))
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    img2txt = [list(range(i * per_image, (i + 1) * per_image)) for i in range(n_images)]
    return images.astype(np.float32), texts.astype(np.float32), img2txt, txt2img


@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_chunked_topk_equals_full_matrix(chunk: int) -> None:
    images, texts, _, _ = _world()
    q, g = torch.from_numpy(texts), torch.from_numpy(images)
    full = (q @ g.T).topk(10, dim=1)
    scores, index = R.chunked_topk(q, g, 10, chunk=chunk)
    assert torch.equal(index, full.indices)
    assert torch.allclose(scores, full.values)


def test_chunked_topk_clips_k_to_the_gallery() -> None:
    images, texts, _, _ = _world(n_images=4)
    _, index = R.chunked_topk(texts, images, k=10, chunk=3)
    assert index.shape == (len(texts), 4)
    assert sorted(index[0].tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="embeddings"):
        R.chunked_topk(texts, images[:, :3], k=2)


def test_metrics_from_topk_equal_full_matrix() -> None:
    images, texts, img2txt, txt2img = _world()
    sim = images @ texts.T  # (N_img, N_txt)
    full = R.retrieval_metrics(sim, sim.T, img2txt, txt2img)
    assert 0 < full["txt_r1"] < 100 and 0 < full["img_r1"] < 100  # a case that can tell them apart
    chunked = R.embedding_retrieval_metrics(images, texts, img2txt, txt2img, backend="torch", chunk=9)
    assert chunked == pytest.approx(full)
    official_order = ["txt_r1", "txt_r5", "txt_r10", "txt_r_mean", "img_r1", "img_r5", "img_r10", "img_r_mean"]
    assert list(full) == [*official_order, "r_mean"]


def test_faiss_equals_exact_search() -> None:
    images, texts, img2txt, txt2img = _world(n_images=300, per_image=2, dim=32, seed=1)
    exact = (torch.from_numpy(texts) @ torch.from_numpy(images).T).topk(10, dim=1)
    scores, index = R.faiss_topk(texts, images, 10, batch=97)
    np.testing.assert_array_equal(index, exact.indices.numpy())
    np.testing.assert_allclose(scores, exact.values.numpy(), rtol=1e-5, atol=1e-5)
    via_faiss = R.embedding_retrieval_metrics(images, texts, img2txt, txt2img, backend="faiss")
    via_torch = R.embedding_retrieval_metrics(images, texts, img2txt, txt2img, backend="torch")
    assert via_faiss == pytest.approx(via_torch)


def test_auto_backend_picks_by_queries_and_items(monkeypatch: pytest.MonkeyPatch) -> None:
    import faiss

    images, texts, _, _ = _world(n_images=20)  # 100 captions of 16 values
    used = []
    real = S.faiss_topk
    monkeypatch.setattr(S, "faiss_topk", lambda *a, **k: used.append(True) or real(*a, **k))
    R.topk_search(texts[:1], images, 5)
    assert not used  # 20 items: torch path, even for one query
    monkeypatch.setattr(S, "FAISS_MIN_ITEMS", 20)
    _, index = R.topk_search(texts[:3], images, 5)  # up to 3 queries: faiss's scan
    assert used == [True] and index.shape == (3, 5)
    R.topk_search(texts[:4], images, 5)  # 4 queries, below faiss's BLAS switch: torch's mm
    assert used == [True]
    # from Q x D >= faiss's BLAS threshold on: faiss
    many = np.tile(texts, (faiss.cvar.distance_compute_blas_threshold // texts.size + 1, 1))
    _, index = R.topk_search(many, images, 5)
    assert used == [True, True] and index.shape == (len(many), 5)
    assert [S.auto_backend(q, 10**6, 256) for q in (1, 3, 4, 499, 500)] == ["faiss", "faiss", "torch", "torch", "faiss"]
    with pytest.raises(ValueError, match="backend"):
        R.topk_search(texts, images, 5, backend="annoy")


def test_first_hit_ranks_and_unlisted_targets() -> None:
    ranks = R.first_hit_ranks([[3, 1, 2], [0, 1, 2], [5, 6, 7]], [[1, 2], [0], [9]])
    assert ranks.tolist() == [1.0, 0.0, float("inf")]
    m = R.retrieval_metrics_from_topk([[3, 1, 2]], [[0], [1]], [[1]], [0, 0])
    assert m["txt_r1"] == 0.0 and m["txt_r5"] == 100.0
    assert m["img_r1"] == 50.0  # text 1's list does not contain its image


def test_caption_index_numbers_as_the_official_dataset() -> None:
    records = [{"image": "a.jpg", "caption": ["x", "y"]}, {"image": "b.jpg", "caption": ["z"]}]
    texts, img2txt, txt2img = R.caption_index(records)
    assert texts == ["x", "y", "z"] and img2txt == [[0, 1], [2]] and txt2img == [0, 0, 1]


def test_zeroshot_reexport_is_the_same_function() -> None:
    from grainvl.tasks import zeroshot

    assert zeroshot.retrieval_metrics is R.retrieval_metrics


def _official_rank(row: np.ndarray, targets: list[int]) -> int:
    """itm_eval's rank, written from its statement: min over gt of np.where(argsort(row)[::-1] == t)."""
    inds = np.argsort(row)[::-1]
    return min(int(np.where(inds == t)[0][0]) for t in targets)


def test_hand_ranks_best_ground_truth_and_means() -> None:
    # 2 images x 4 captions; image 0 owns captions 0, 1; image 1 owns 2, 3. No ties.
    s_i2t = np.array([[0.1, 0.9, 0.5, 0.3], [0.8, 0.7, 0.2, 0.1]])
    # image 0: order 1,2,3,0 -> best gt (caption 1) at 0; image 1: order 0,1,2,3 -> best gt at 2.
    s_t2i = np.array([[0.9, 0.1], [0.2, 0.3], [0.5, 0.6], [0.7, 0.4]])
    # captions: 0 -> image 0 first (rank 0); 1 -> image 1 first (rank 1); 2 -> rank 0; 3 -> rank 1.
    m = R.retrieval_metrics(s_i2t, s_t2i, [[0, 1], [2, 3]], [0, 0, 1, 1])
    assert m["txt_r1"] == 50.0 and m["txt_r5"] == 100.0 and m["txt_r10"] == 100.0
    assert m["img_r1"] == 50.0 and m["img_r5"] == 100.0
    assert m["txt_r_mean"] == pytest.approx(250 / 3) and m["img_r_mean"] == pytest.approx(250 / 3)
    assert m["r_mean"] == pytest.approx(250 / 3)
    assert list(m) == [
        "txt_r1",
        "txt_r5",
        "txt_r10",
        "txt_r_mean",
        "img_r1",
        "img_r5",
        "img_r10",
        "img_r_mean",
        "r_mean",
    ]


@pytest.mark.parametrize("k_test", [1, 3, 5, 12])
def test_candidates_with_minus_100_fill_match_the_dense_official_rows(k_test: int) -> None:
    # Ties among the -100 fills decide R@10 when k_test < 10: whatever order numpy's default sort
    # gives them, the rebuilt rows must give the ranks the official dense matrix gives.
    rng = np.random.default_rng(k_test)
    n_img, n_txt = 30, 60
    img2txt = [[2 * i, 2 * i + 1] for i in range(n_img)]
    txt2img = [t // 2 for t in range(n_txt)]
    sims = rng.normal(size=(n_img, n_txt)).astype(np.float32)
    itm = rng.normal(size=(n_img, n_txt)).astype(np.float32)
    i2t_idx = np.argsort(-sims, axis=1)[:, :k_test]
    t2i_idx = np.argsort(-sims.T, axis=1)[:, :k_test]
    dense_i2t = np.full((n_img, n_txt), -100.0, dtype=np.float32)
    dense_t2i = np.full((n_txt, n_img), -100.0, dtype=np.float32)
    for i, cand in enumerate(i2t_idx):
        dense_i2t[i, cand] = itm[i, cand]
    for t, cand in enumerate(t2i_idx):
        dense_t2i[t, cand] = itm[cand, t]
    expected = R.retrieval_metrics(dense_i2t, dense_t2i, img2txt, txt2img)
    ours = R.retrieval_metrics_from_candidates(
        i2t_idx.tolist(),
        [itm[i, c].tolist() for i, c in enumerate(i2t_idx)],
        t2i_idx.tolist(),
        [itm[c, t].tolist() for t, c in enumerate(t2i_idx)],
        img2txt,
        txt2img,
    )
    assert ours == expected
    # ... and the ranks are the official statement's.
    tr = [_official_rank(row, img2txt[i]) for i, row in enumerate(dense_i2t)]
    assert expected["txt_r10"] == 100.0 * sum(r < 10 for r in tr) / n_img
    if k_test < 10:  # a gt outside the candidates can still score at R@10 among the ties
        assert expected["txt_r10"] >= R.retrieval_metrics_from_topk(i2t_idx, t2i_idx, img2txt, txt2img)["txt_r10"]


def test_all_tied_row_uses_argsort_order() -> None:
    # Every caption at -100 (no candidate): the rank is the gt's place in argsort(row)[::-1].
    row = np.full(12, -100.0, dtype=np.float32)
    for gt in range(12):
        m = R.retrieval_metrics_from_candidates([[]], [[]], [[0]] * 12, [[1.0]] * 12, [[gt]], [0] * 12)
        assert m["txt_r1"] == (100.0 if _official_rank(row, [gt]) == 0 else 0.0)
        assert m["txt_r10"] == (100.0 if _official_rank(row, [gt]) < 10 else 0.0)


def test_candidates_below_minus_100_rank_after_the_fill() -> None:
    # A candidate scored under the fill ranks after every non-candidate, as in the dense matrix.
    m = R.retrieval_metrics_from_candidates([[0]], [[-150.0]], [[0]], [[1.0]], [[0]], [0])
    assert m["txt_r1"] == 100.0  # a gallery of one: rank 0 whatever the score
    m = R.retrieval_metrics_from_candidates([[0]], [[-150.0]], [[0]] * 12, [[1.0]] * 12, [[0]], [0] * 12)
    assert m["txt_r10"] == 0.0  # caption 0 is last of 12


def _clustered(n: int, clusters: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit vectors scattered around ``clusters`` random centres (each about as far from its
    centre as the centre is from the origin), and 200 new queries drawn the same way."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    points = centres[rng.integers(0, clusters, n + 200)] + rng.normal(size=(n + 200, dim))
    points = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)
    return points[:n], points[n:]


@pytest.mark.parametrize("kind", ["exact-torch", "exact-faiss"])
def test_exact_gallery_indexes_equal_brute_force(kind: str) -> None:
    images, texts, _, _ = _world(n_images=300, per_image=2, dim=32, seed=2)
    exact = (torch.from_numpy(texts) @ torch.from_numpy(images).T).topk(10, dim=1)
    index = S.GalleryIndex.build(images, kind)
    assert (index.kind, index.size, index.dim, index.nprobe) == (kind, 300, 32, None)
    assert index.nbytes == images.nbytes
    scores, found = index.search(texts.astype(np.float64), 10)  # float64 queries are searched as float32
    np.testing.assert_array_equal(found, exact.indices.numpy())
    np.testing.assert_allclose(scores, exact.values.numpy(), rtol=1e-5, atol=1e-5)
    assert index.search(texts[:3], 1000)[1].shape == (3, 300)  # k clipped to the gallery


def test_ivf_index_reaches_its_recall_on_new_queries() -> None:
    gallery, queries = _clustered(6000, clusters=8, dim=32, seed=3)
    index = S.GalleryIndex.build(gallery, "ivf", target_recall=0.95)
    assert index.kind == "ivf" and index.tuned_recall >= 0.95
    assert index.nprobe < index.nlist  # approximate: 8 of its 64 cells searched (one cluster spans several)
    _, exact = S.chunked_topk(queries, gallery, 10)
    _, found = index.search(queries, 10)
    assert S.recall_at_k(found, exact.numpy()) >= 0.95
    # one cell searched: the recall falls far below (0.38), so the tuning measured something
    index.nprobe = 1
    assert S.recall_at_k(index.search(queries, 10)[1], exact.numpy()) < 0.6
    vectors, ids, centroids = 6000 * 32 * 4, 6000 * 8, index.nlist * 32 * 4
    assert index.nbytes == vectors + ids + centroids


def test_ivf_searching_every_cell_is_exact_and_tune_queries_are_used() -> None:
    gallery, queries = _clustered(2000, clusters=20, dim=16, seed=4)
    index = S.GalleryIndex.build(gallery, "ivf", nlist=16, nprobe=16)
    assert index.tuned_recall is None and index.nprobe == 16
    _, exact = S.chunked_topk(queries, gallery, 10)
    np.testing.assert_array_equal(index.search(queries, 10)[1], exact.numpy())
    tuned = S.GalleryIndex.build(gallery, "ivf", nlist=16, target_recall=1.0, tune_queries=queries)
    assert tuned.tuned_recall == 1.0
    np.testing.assert_array_equal(tuned.search(queries, 10)[1], exact.numpy())


@pytest.mark.parametrize("kind", ["exact-faiss", "ivf"])
def test_gallery_index_save_load_round_trip(kind: str, tmp_path) -> None:
    gallery, queries = _clustered(3000, clusters=30, dim=16, seed=5)
    index = S.GalleryIndex.build(gallery, kind)
    if kind == "ivf":
        index.nprobe = 3
    path = tmp_path / "gallery.faiss"
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.faiss"]  # no temp file left behind
    loaded = S.GalleryIndex.load(path)
    assert (loaded.kind, loaded.size, loaded.dim, loaded.nprobe) == (kind, 3000, 16, index.nprobe)
    assert loaded.nbytes == index.nbytes
    for before, after in zip(index.search(queries, 10), loaded.search(queries, 10)):
        np.testing.assert_array_equal(before, after)


def test_gallery_index_load_errors(tmp_path) -> None:
    import faiss

    with pytest.raises(DataError, match="file not found"):
        S.GalleryIndex.load(tmp_path / "missing.faiss")
    (tmp_path / "notes.faiss").write_text("not an index")
    with pytest.raises(DataError, match="not a readable FAISS index"):
        S.GalleryIndex.load(tmp_path / "notes.faiss")
    S.GalleryIndex.build(np.eye(4, dtype=np.float32), "exact-faiss").save(tmp_path / "flat.faiss")
    (tmp_path / "cut.faiss").write_bytes((tmp_path / "flat.faiss").read_bytes()[:60])
    with pytest.raises(DataError, match="not a readable FAISS index"):
        S.GalleryIndex.load(tmp_path / "cut.faiss")
    l2 = faiss.IndexFlatL2(4)
    l2.add(np.eye(4, dtype=np.float32))
    faiss.write_index(l2, str(tmp_path / "l2.faiss"))
    with pytest.raises(DataError, match="inner product"):
        S.GalleryIndex.load(tmp_path / "l2.faiss")
    faiss.write_index(faiss.IndexHNSWFlat(4, 8, faiss.METRIC_INNER_PRODUCT), str(tmp_path / "hnsw.faiss"))
    with pytest.raises(DataError, match="IndexHNSWFlat"):
        S.GalleryIndex.load(tmp_path / "hnsw.faiss")


def test_gallery_index_argument_errors(tmp_path) -> None:
    gallery = np.eye(8, dtype=np.float32)
    with pytest.raises(ValueError, match="index kind"):
        S.GalleryIndex.build(gallery, "hnsw")
    with pytest.raises(ValueError, match="non-empty"):
        S.GalleryIndex.build(np.zeros((0, 8), np.float32), "exact-faiss")
    with pytest.raises(ValueError, match="target_recall"):
        S.GalleryIndex.build(gallery, "ivf", target_recall=0.0)
    with pytest.raises(ValueError, match="nlist"):
        S.GalleryIndex.build(gallery, "ivf", nlist=9)
    for kind in S.INDEX_KINDS:
        index = S.GalleryIndex.build(gallery, kind, nlist=2)
        with pytest.raises(ValueError, match="embeddings"):
            index.search(np.ones((2, 7), np.float32), 3)
        with pytest.raises(ValueError, match="k must be"):
            index.search(gallery, 0)
    with pytest.raises(ValueError, match="nprobe must be in"):
        S.GalleryIndex.build(gallery, "ivf", nlist=2, nprobe=3)
    with pytest.raises(ValueError, match="applies to the ivf kind"):
        S.GalleryIndex.build(gallery, "exact-faiss").nprobe = 2
    with pytest.raises(ValueError, match="exact-torch index is its embeddings"):
        S.GalleryIndex.build(gallery, "exact-torch").save(tmp_path / "x.faiss")


def test_default_nlist_and_recall_at_k() -> None:
    assert [S.default_nlist(n) for n in (1_000_000, 100_000, 500, 10)] == [1024, 512, 4, 1]
    assert S.recall_at_k(np.array([[1, 2, -1], [4, 5, 6]]), np.array([[2, 1, 3], [7, 8, 9]])) == pytest.approx(2 / 6)
    lists = np.array([[5, 1, 2], [3, 4, 6]])
    np.testing.assert_array_equal(S._drop_rows_self(lists, np.array([5, 9]), 2), [[1, 2], [3, 4]])


@pytest.mark.slow
def test_retrieval_benchmark_runs_side_by_side() -> None:
    # The benchmark at toy size: every index kind in one table, the IVF file reloads to the same results.
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_retrieval.py"
    args = ["--items", "3000", "--queries", "5", "--anchors", "64", "--threads", "1"]
    done = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    table = [line.split() for line in done.stdout.splitlines() if line.startswith(S.INDEX_KINDS) and " / " not in line]
    rows = {cells[0]: cells for cells in table}
    assert set(rows) == set(S.INDEX_KINDS)
    assert rows["exact-faiss"][4] == "1.000"  # exact FAISS finds exactly torch's top 10
    assert float(rows["ivf"][4]) >= 0.95
    assert "same results after loading: True" in done.stdout
    assert "exact-torch / ivf: search p50" in done.stdout and "Q=1000" in done.stdout
