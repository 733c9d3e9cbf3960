"""Retrieval metrics (official itm_eval semantics) and chance levels on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from grainvl.tasks.zeroshot import chance_retrieval, retrieval_metrics


def test_retrieval_metrics_hand_case() -> None:
    # 2 images, 4 texts: image 0 owns texts 0,1; image 1 owns texts 2,3.
    i2t = np.array([[0.1, 0.9, 0.5, 0.0], [0.8, 0.1, 0.2, 0.3]])
    img2txt, txt2img = [[0, 1], [2, 3]], [0, 0, 1, 1]
    m = retrieval_metrics(i2t, i2t.T, img2txt, txt2img)
    # TR: image 0's best true text (1) is ranked 1st; image 1's best true text (3) is 2nd.
    assert m["txt_r1"] == 50.0 and m["txt_r5"] == 100.0
    # IR: text 0 scores image 1 higher (0.8 > 0.1): rank 2; text 1: rank 1; text 2 scores image 0 higher
    # (0.5 > 0.2): rank 2; text 3: rank 1.
    assert m["img_r1"] == 50.0 and m["img_r5"] == 100.0
    assert m["r_mean"] == pytest.approx((m["txt_r_mean"] + m["img_r_mean"]) / 2)


def test_chance_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    n_images, per_image = 10, 5
    img2txt = [list(range(i * per_image, (i + 1) * per_image)) for i in range(n_images)]
    txt2img = [t // per_image for t in range(n_images * per_image)]
    sims = [retrieval_metrics(s, s.T, img2txt, txt2img) for s in rng.random((400, n_images, n_images * per_image))]
    expected = chance_retrieval(n_images, per_image)
    for key in ("txt_r1", "txt_r5", "img_r1", "img_r5"):
        assert np.mean([m[key] for m in sims]) == pytest.approx(expected[key], abs=2.5)
