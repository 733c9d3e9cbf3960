"""Pre-training objectives (ITC, ITM, MLM, box) and region pooling on small hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from grainvl.data.region import box_patch_mask, box_target_cxcywh, region_features
from grainvl.losses import (
    bbox_loss,
    box_cxcywh_to_xyxy,
    box_iou_xywh,
    box_xyxy_to_cxcywh,
    clamp_temperature_,
    gather_labelled,
    gather_masked,
    generalized_box_iou,
    itc_loss,
    itm_labels,
    itm_loss,
    itm_pairs,
    mlm_loss,
    sample_hard_negatives,
)
from grainvl.losses.taco import sample_negative_index, sample_positive_index, taco_loss


def _ce(logits: list[float], target: int) -> float:
    """-log softmax(logits)[target] in plain math."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def _soft_ce(logits: list[float], targets: list[float]) -> float:
    log_z = math.log(sum(math.exp(v) for v in logits))
    return -sum(t * (v - log_z) for v, t in zip(logits, targets))


# ---------------------------------------------------------------------------------------------
# ITC


def test_itc_two_by_two_hand_computed() -> None:
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    temp = torch.tensor(0.5)
    # logits = image @ text.T / 0.5 = [[2, 1.2], [0, 1.6]]
    i2t = (_ce([2.0, 1.2], 0) + _ce([0.0, 1.6], 1)) / 2
    t2i = (_ce([2.0, 0.0], 0) + _ce([1.2, 1.6], 1)) / 2
    expected = (i2t + t2i) / 2
    assert itc_loss(image, text, temp).item() == pytest.approx(expected, abs=1e-6)
    # In one process, gathering is the identity.
    assert itc_loss(image, text, temp, gather=False).item() == pytest.approx(expected, abs=1e-6)


def test_itc_soft_targets_with_idx() -> None:
    image = F.normalize(torch.tensor([[1.0, 0.2], [0.3, 1.0], [-1.0, 0.4]]), dim=-1)
    text = F.normalize(torch.tensor([[0.9, 0.1], [0.5, 0.7], [-0.2, -1.0]]), dim=-1)
    temp = torch.tensor(0.1)
    idx = torch.tensor([7, 7, 3])
    logits = (image @ text.t() / temp).tolist()
    targets = [[0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]  # same id 7 shares mass
    cols = [[logits[i][j] for i in range(3)] for j in range(3)]
    i2t = sum(_soft_ce(logits[i], targets[i]) for i in range(3)) / 3
    t2i = sum(_soft_ce(cols[j], targets[j]) for j in range(3)) / 3
    loss = itc_loss(image, text, temp, idx=idx)
    assert loss.item() == pytest.approx((i2t + t2i) / 2, abs=1e-5)
    # All-distinct ids are exactly the hard-label loss.
    distinct = itc_loss(image, text, temp, idx=torch.tensor([0, 1, 2]))
    assert distinct.item() == pytest.approx(itc_loss(image, text, temp).item(), abs=1e-6)


def test_itc_gradient_reaches_temperature_and_features() -> None:
    image = F.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(4, 3), dim=-1).requires_grad_()
    temp = torch.nn.Parameter(torch.tensor(0.07))
    itc_loss(image, text, temp).backward()
    assert image.grad is not None and text.grad is not None and temp.grad is not None
    assert temp.grad.abs().item() > 0


def test_itc_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="equal shape"):
        itc_loss(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(0.1))
    with pytest.raises(ValueError, match="idx"):
        itc_loss(torch.randn(3, 4), torch.randn(3, 4), torch.tensor(0.1), idx=torch.arange(2))


def test_clamp_temperature_in_place() -> None:
    temp = torch.nn.Parameter(torch.tensor(1e-5))
    clamp_temperature_(temp)
    assert temp.item() == pytest.approx(0.001)
    temp.data.fill_(0.9)
    clamp_temperature_(temp)
    assert temp.item() == pytest.approx(0.5)
    temp.data.fill_(0.07)
    clamp_temperature_(temp)
    assert temp.item() == pytest.approx(0.07)


# ---------------------------------------------------------------------------------------------
# ITM


def test_hard_negatives_never_pick_positives_or_same_idx() -> None:
    generator = torch.Generator().manual_seed(0)
    batch = 120
    sim = torch.randn(batch, batch, generator=generator) * 5
    sim.fill_diagonal_(50.0)  # the positives dominate the softmax: they must still never be drawn
    idx = torch.randint(0, 40, (batch,), generator=generator)  # ~3 samples per id
    for _ in range(20):
        neg_image, neg_text = sample_hard_negatives(sim, sim.t(), idx=idx, generator=generator)
        assert (idx[neg_image] != idx).all()
        assert (idx[neg_text] != idx).all()
        neg_image, neg_text = sample_hard_negatives(sim, sim.t(), generator=generator)
        assert (neg_image != torch.arange(batch)).all() and (neg_text != torch.arange(batch)).all()


def test_hard_negatives_follow_softmax_distribution() -> None:
    # 4000 texts share id 0 and one image each with id 0; images 1..3 carry ids 1..3. Every text's
    # row therefore draws from the same distribution over images 1..3: softmax(2, 1, 0) + 1e-5
    # (the id-0 columns get −1e4, i.e. no softmax mass, and are zeroed afterwards).
    draws = 4000
    batch = draws + 3
    idx = torch.cat([torch.zeros(draws, dtype=torch.long), torch.tensor([1, 2, 3])])
    sim_t2i = torch.full((batch, batch), -1e4)
    sim_t2i[:, draws:] = torch.tensor([2.0, 1.0, 0.0])
    soft = [math.exp(v) / (math.exp(2.0) + math.exp(1.0) + 1.0) + 1e-5 for v in (2.0, 1.0, 0.0)]
    expected = [w / sum(soft) for w in soft]
    neg_image, _ = sample_hard_negatives(sim_t2i.t(), sim_t2i, idx=idx, generator=torch.Generator().manual_seed(1))
    counts = torch.bincount(neg_image[:draws], minlength=batch)
    assert counts[:draws].sum() == 0
    for k in range(3):
        assert counts[draws + k].item() / draws == pytest.approx(expected[k], abs=0.03)


def test_hard_negatives_floor_keeps_underflowing_rows_valid() -> None:
    # softmax underflows to exactly 0 off the diagonal; the 1e-5 floor still leaves a valid draw.
    sim = torch.eye(3) * 1e4
    neg_image, neg_text = sample_hard_negatives(sim, sim, generator=torch.Generator().manual_seed(0))
    assert (neg_image != torch.arange(3)).all() and (neg_text != torch.arange(3)).all()


def test_hard_negatives_fall_back_to_other_samples_when_all_share_an_id() -> None:
    # A tiny dataset wrapping into its next epoch can put one image twice in a batch: rows whose
    # every candidate shares their id fall back to "any other sample"; other rows keep the id rule.
    idx = torch.tensor([4, 4, 5])
    for seed in range(20):
        neg_image, _ = sample_hard_negatives(
            torch.zeros(3, 3), torch.zeros(3, 3), idx=idx, generator=torch.Generator().manual_seed(seed)
        )
        assert (neg_image[:2] == 2).all() and neg_image[2] in (0, 1)
    degenerate = sample_hard_negatives(torch.zeros(2, 2), torch.zeros(2, 2), idx=torch.tensor([4, 4]))
    assert degenerate[0].tolist() == [1, 0]
    with pytest.raises(ValueError, match="at least two samples"):
        sample_hard_negatives(torch.zeros(1, 1), torch.zeros(1, 1))


def test_itm_pairs_official_order() -> None:
    neg_image = torch.tensor([2, 0, 1])
    neg_text = torch.tensor([1, 2, 0])
    text_index, image_index = itm_pairs(neg_image, neg_text)
    assert text_index.tolist() == [0, 1, 2, 0, 1, 2, 1, 2, 0]
    assert image_index.tolist() == [0, 1, 2, 2, 0, 1, 0, 1, 2]
    assert itm_labels(3).tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]


def test_itm_loss_hand_computed() -> None:
    logits = torch.tensor([[0.0, 1.0], [1.0, 0.0], [2.0, -1.0]])  # B = 1: labels 1, 0, 0
    expected = (_ce([0.0, 1.0], 1) + _ce([1.0, 0.0], 0) + _ce([2.0, -1.0], 0)) / 3
    assert itm_loss(logits).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="3B, 2"):
        itm_loss(torch.zeros(4, 2))


# ---------------------------------------------------------------------------------------------
# MLM


def test_gather_masked_picks_positions() -> None:
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)
    pos = torch.tensor([[1, 4], [0, 2]])
    out = gather_masked(hidden, pos)
    assert out.shape == (2, 2, 3)
    assert torch.equal(out[0, 1], hidden[0, 4]) and torch.equal(out[1, 1], hidden[1, 2])


def test_mlm_loss_hand_computed_ignores_padding() -> None:
    logits = torch.tensor([[[1.0, 2.0, 0.5], [9.0, 9.0, 9.0], [0.0, 0.0, 3.0]]])  # (1, 3, V=3)
    labels = torch.tensor([[2, -100, 0]])
    expected = (_ce([1.0, 2.0, 0.5], 2) + _ce([0.0, 0.0, 3.0], 0)) / 2
    assert mlm_loss(logits, labels).item() == pytest.approx(expected, abs=1e-6)


def test_gather_labelled_equals_the_padded_logits_loss_and_gradients() -> None:
    # The official path projects every gathered row, padding included; ours only the real masked tokens.
    # Same loss and the same gradients for the encoder output and the head, also where a text has no mask
    # and where padding points at a real token (position 3 of text 0 is both padded and, at m=0, real).
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(3, 6, 4, generator=generator, requires_grad=True)
    head = torch.nn.Linear(4, 7)
    pos = torch.tensor([[3, 1, 3, 0], [0, 0, 0, 0], [2, 5, 4, 0]])
    ids = torch.tensor([[6, 2, -100, -100], [-100, -100, -100, -100], [1, 0, 4, -100]])
    padded = mlm_loss(head(gather_masked(hidden, pos)), ids)
    grads = torch.autograd.grad(padded, [hidden, head.weight, head.bias])
    rows, labels = gather_labelled(hidden, pos, ids)
    assert rows.shape == (5, 4) and labels.tolist() == [6, 2, 1, 0, 4]
    assert torch.equal(rows[2], hidden[2, 2]) and torch.equal(rows[1], hidden[0, 1])
    ours = mlm_loss(head(rows), labels)
    assert ours.item() == pytest.approx(padded.item(), abs=1e-6)
    for a, b in zip(torch.autograd.grad(ours, [hidden, head.weight, head.bias]), grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    none, no_labels = gather_labelled(hidden, pos, torch.full_like(ids, -100))
    loss = mlm_loss(head(none), no_labels)
    loss.backward()
    assert none.shape == (0, 4) and loss.item() == 0.0 and torch.isfinite(hidden.grad).all()
    with pytest.raises(ValueError, match="differ"):
        gather_labelled(hidden, pos, ids[:, :2])


def test_mlm_loss_without_targets_is_zero_not_nan() -> None:
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = mlm_loss(logits, torch.full((2, 3), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_global_mean_losses_are_unchanged_in_one_process() -> None:
    # Without a process group the DDP global mean must give today's value and gradient bit for bit.
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 6, generator=generator, requires_grad=True)
    labels = torch.tensor([[1, 5, -100, -100], [0, -100, -100, -100], [2, 3, 4, -100]])
    reference = F.cross_entropy(logits.reshape(-1, 6), labels.reshape(-1), ignore_index=-100)
    (reference_grad,) = torch.autograd.grad(reference, logits)
    for global_mean in (False, True):
        loss = mlm_loss(logits, labels, global_mean=global_mean)
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.equal(loss, reference) and torch.equal(grad, reference_grad)

    hidden = torch.randn(3, 5, 4, generator=generator, requires_grad=True)
    embeddings = torch.randn(3, 5, 4, generator=generator)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    lengths = mask.sum(1)
    positive = sample_positive_index(lengths, 5, generator=generator)
    negative = sample_negative_index(lengths, 5, 3, generator=generator)
    kwargs = {"positive_index": positive, "negative_index": negative, "num_negatives": 3}
    local = taco_loss(hidden, embeddings, mask, **kwargs)
    assert torch.equal(taco_loss(hidden, embeddings, mask, global_mean=True, **kwargs), local)


# ---------------------------------------------------------------------------------------------
# Boxes


def _giou_xyxy(a: list[float], b: list[float]) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_giou_identical_overlapping_disjoint() -> None:
    a = torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.2, 0.2, 0.4, 0.4], [0.05, 0.05, 0.15, 0.15]])
    b = torch.tensor([[0.2, 0.2, 0.4, 0.4], [0.3, 0.3, 0.5, 0.5], [0.7, 0.7, 0.9, 0.9]])
    giou = generalized_box_iou(a, b)
    assert giou[0].item() == pytest.approx(1.0)
    # overlap 0.01, union 0.07, hull 0.09: 1/7 − 0.02/0.09
    assert giou[1].item() == pytest.approx(1 / 7 - 0.02 / 0.09, abs=1e-6)
    # disjoint: union 0.05, hull 0.85² → negative
    assert giou[2].item() == pytest.approx(-(0.85**2 - 0.05) / 0.85**2, abs=1e-6)
    assert giou[2].item() < 0


def test_giou_matches_transformers_reference() -> None:
    from transformers.loss.loss_for_object_detection import generalized_box_iou as reference

    generator = torch.Generator().manual_seed(0)
    xy = torch.rand(16, 2, generator=generator)
    a = torch.cat([xy, xy + torch.rand(16, 2, generator=generator)], dim=1)
    xy = torch.rand(16, 2, generator=generator)
    b = torch.cat([xy, xy + torch.rand(16, 2, generator=generator)], dim=1)
    assert torch.allclose(generalized_box_iou(a, b), torch.diag(reference(a, b)), atol=1e-6)


def test_bbox_loss_three_boxes_hand_computed() -> None:
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]])
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.4, 0.4, 0.2, 0.2], [0.8, 0.8, 0.2, 0.2]])
    l1_rows = [0.0, 0.1 + 0.1, 0.7 + 0.7 + 0.1 + 0.1]
    giou_rows = [
        1.0,
        _giou_xyxy([0.2, 0.2, 0.4, 0.4], [0.3, 0.3, 0.5, 0.5]),
        _giou_xyxy([0.05, 0.05, 0.15, 0.15], [0.7, 0.7, 0.9, 0.9]),
    ]
    l1, giou = bbox_loss(pred, target)
    assert l1.item() == pytest.approx(sum(l1_rows) / 3, abs=1e-6)
    assert giou.item() == pytest.approx(sum(1 - g for g in giou_rows) / 3, abs=1e-6)
    # Whole-image entries are excluded from both sums and from the count.
    l1, giou = bbox_loss(pred, target, is_image=torch.tensor([False, True, False]))
    assert l1.item() == pytest.approx((l1_rows[0] + l1_rows[2]) / 2, abs=1e-6)
    assert giou.item() == pytest.approx((2 - giou_rows[0] - giou_rows[2]) / 2, abs=1e-6)
    l1, giou = bbox_loss(pred, target, is_image=torch.ones(3, dtype=torch.bool))
    assert l1.item() == 0.0 and giou.item() == 0.0


def test_bbox_loss_degenerate_prediction_is_finite() -> None:
    pred = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.2, 0.2, 0.0, 0.3]], requires_grad=True)
    target = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.6, 0.6, 0.2, 0.2]])
    l1, giou = bbox_loss(pred, target)
    (l1 + giou).backward()
    assert torch.isfinite(giou) and torch.isfinite(pred.grad).all()
    # A zero-area box inside the target: IoU 0, hull = target → GIoU term 1 − (0 − 0) = 1.
    assert generalized_box_iou(box_cxcywh_to_xyxy(pred[:1]), box_cxcywh_to_xyxy(target[:1])).item() == pytest.approx(
        0.0, abs=1e-6
    )
    # Inverted corners are read as a zero-area box instead of failing.
    inverted = torch.tensor([[0.4, 0.4, 0.1, 0.1]])
    assert torch.isfinite(generalized_box_iou(inverted, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))).all()


def test_box_format_round_trip() -> None:
    boxes = torch.tensor([[0.5, 0.4, 0.2, 0.6]])
    assert torch.allclose(box_xyxy_to_cxcywh(box_cxcywh_to_xyxy(boxes)), boxes)
    assert torch.allclose(box_cxcywh_to_xyxy(boxes), torch.tensor([[0.4, 0.1, 0.6, 0.7]]))


def test_box_iou_xywh_conventions() -> None:
    pred = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [3.0, 3.0, 4.0, 4.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [8.0, 0.0, 10.0, 10.0], [9.0, 0.0, 10.0, 10.0], [3.0, 3.0, 4.0, 4.0]])
    continuous = box_iou_xywh(pred, gt, inclusive=False)
    inclusive = box_iou_xywh(pred, gt, inclusive=True)
    assert continuous.tolist() == pytest.approx([1.0, 20 / 180, 10 / 190, 1.0])
    # Inclusive pixels: 8..9 overlap → 2 columns; 9..9 is a single shared column, which the
    # official strict check counts as no overlap.
    assert inclusive.tolist() == pytest.approx([1.0, 20 / 180, 0.0, 1.0])
    assert box_iou_xywh(pred[1], gt[1]).dim() == 0


# ---------------------------------------------------------------------------------------------
# Regions


def test_box_patch_mask_hand_boxes() -> None:
    boxes = torch.tensor(
        [
            [0.0, 0.0, 16.0, 16.0],  # exactly the first patch
            [10.0, 20.0, 30.0, 10.0],  # cols 0..2 (ceil(40/16)=3), row 1 (ceil(30/16)=2)
            [63.0, 63.0, 0.0, 0.0],  # empty box in the last patch: still one patch
            [0.0, 0.0, 64.0, 64.0],  # the whole image
        ]
    )
    mask = box_patch_mask(boxes, resolution=64, patch_size=16)
    assert mask.shape == (4, 17) and mask.dtype == torch.float32
    assert (mask[:, 0] == 1).all()
    on = [set((row[1:].nonzero().flatten() + 1).tolist()) for row in mask]
    assert on[0] == {1}
    assert on[1] == {1 + 4 + 0, 1 + 4 + 1, 1 + 4 + 2}
    assert on[2] == {16}
    assert on[3] == set(range(1, 17))


def test_box_patch_mask_matches_vit_patch_order() -> None:
    # Patches a box's pixels fall into, found by pooling a pixel mask over P×P cells and flattening the
    # grid like a ViT patch embedding (row-major): must equal the official floor/ceil rule.
    generator = torch.Generator().manual_seed(0)
    res, patch = 48, 8
    for _ in range(50):
        x, y = torch.randint(0, res - 1, (2,), generator=generator).tolist()
        w = torch.randint(1, res - x + 1, (1,), generator=generator).item()
        h = torch.randint(1, res - y + 1, (1,), generator=generator).item()
        pixels = torch.zeros(1, 1, res, res)
        pixels[..., y : y + h, x : x + w] = 1
        expected = F.avg_pool2d(pixels, patch).flatten(1) > 0  # (1, G²)
        mask = box_patch_mask(torch.tensor([[x, y, w, h]], dtype=torch.float32), res, patch)
        assert torch.equal(mask[:, 1:].bool(), expected), (x, y, w, h)


def test_box_patch_mask_rejects_bad_resolution() -> None:
    with pytest.raises(ValueError, match="multiple"):
        box_patch_mask(torch.zeros(1, 4), resolution=50, patch_size=16)


def test_box_target_cxcywh() -> None:
    target = box_target_cxcywh(torch.tensor([[16.0, 32.0, 32.0, 16.0]]), resolution=64)
    assert target.tolist() == [[0.5, 0.625, 0.5, 0.25]]


def test_region_features_masked_mean() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 1 + 16, 5, generator=generator)  # (I, 1+N, D)
    boxes = torch.tensor([[0.0, 0.0, 30.0, 20.0], [40.0, 40.0, 20.0, 20.0], [0.0, 0.0, 64.0, 64.0]])
    region_image = torch.tensor([1, 0, 1])
    mask = box_patch_mask(boxes, 64, 16)
    out = region_features(images, region_image, mask)
    assert out.shape == (3, 17, 5)
    for r in range(3):
        chosen = [n for n in range(1, 17) if mask[r, n] == 1]
        manual = sum(images[region_image[r], n] for n in chosen) / len(chosen)
        assert torch.allclose(out[r, 0], manual, atol=1e-6)
        assert torch.equal(out[r, 1:], images[region_image[r], 1:])
    # The whole-image box gives the plain patch mean (the image-level "CLS" of X²-VLM).
    assert torch.allclose(out[2, 0], images[1, 1:].mean(0), atol=1e-6)


def test_region_features_gradient_only_through_box_patches() -> None:
    images = torch.randn(1, 17, 3, requires_grad=True)
    mask = box_patch_mask(torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 64, 16)
    region_features(images, torch.tensor([0]), mask)[:, 0].sum().backward()
    grad_norm = images.grad[0].norm(dim=-1)  # (17,)
    assert grad_norm[1] > 0 and grad_norm[0] == 0 and (grad_norm[2:] == 0).all()
