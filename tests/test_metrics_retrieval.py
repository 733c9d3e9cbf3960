"""Retrieval metrics at scale: chunked top-k and FAISS equal the full-matrix reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grainvl.metrics import retrieval as R


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


def test_auto_backend_switches_to_faiss_for_large_galleries(monkeypatch: pytest.MonkeyPatch) -> None:
    images, texts, _, _ = _world(n_images=20)
    used = []
    real = R.faiss_topk
    monkeypatch.setattr(R, "faiss_topk", lambda *a, **k: used.append(True) or real(*a, **k))
    R.topk_search(texts, images, 5)
    assert not used  # 20 items: torch path
    monkeypatch.setattr(R, "FAISS_MIN_ITEMS", 20)
    _, index = R.topk_search(texts, images, 5)
    assert used and index.shape == (len(texts), 5)
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
