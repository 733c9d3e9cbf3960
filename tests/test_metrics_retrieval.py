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
