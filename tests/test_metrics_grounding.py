"""IoU edge cases under the official inclusive-pixel convention (X-VLM/VLUE ``computeIoU``), and accuracy."""

from __future__ import annotations

import numpy as np
import pytest

from grainvl.metrics.classification import accuracy, f1_score, macro_f1
from grainvl.metrics.grounding import denormalize_cxcywh, grounding_accuracy, iou_xywh


def test_partial_overlap_by_hand() -> None:
    # Last pixels 9 and 14: intersection x 5..9 (5 px) x y 0..9 (10 px) = 50; union 100 + 100 - 50.
    assert iou_xywh([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(1 / 3)
    assert iou_xywh([0, 0, 10, 10], [0, 0, 5, 5]) == pytest.approx(0.25)


def test_identical_boxes() -> None:
    assert iou_xywh([3, 4, 10, 20], [3, 4, 10, 20]) == 1.0
    # One pixel wide: first and last pixel coincide, the strict x0 < x1 test fails (official).
    assert iou_xywh([3, 4, 1, 20], [3, 4, 1, 20]) == 0.0
    assert iou_xywh([3, 4, 1, 20], [3, 4, 1, 20], inclusive=False) == 1.0


def test_touching_and_single_pixel_overlap() -> None:
    assert iou_xywh([0, 0, 10, 10], [10, 0, 10, 10]) == 0.0  # touching edges
    assert iou_xywh([0, 0, 10, 10], [10, 0, 10, 10], inclusive=False) == 0.0
    # Sharing one pixel column (x = 9): zero under the official rule, 10/190 continuously.
    assert iou_xywh([0, 0, 10, 10], [9, 0, 10, 10]) == 0.0
    assert iou_xywh([0, 0, 10, 10], [9, 0, 10, 10], inclusive=False) == pytest.approx(10 / 190)


def test_zero_area_boxes_do_not_divide_by_zero() -> None:
    # The official code raises ZeroDivisionError for two zero-area boxes; we score 0.
    assert iou_xywh([5, 5, 0, 0], [5, 5, 0, 0]) == 0.0
    assert iou_xywh([5, 5, 0, 10], [0, 0, 10, 10]) == 0.0


def test_accuracy_threshold_is_inclusive() -> None:
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]])
    pred = np.array([[0, 0, 10, 5], [0, 0, 10, 4], [0, 0, 10, 10]])  # IoU 0.5, 0.4, 1
    assert iou_xywh(pred, gt).tolist() == pytest.approx([0.5, 0.4, 1.0])
    assert grounding_accuracy(pred, gt) == pytest.approx(200 / 3)
    assert grounding_accuracy(pred, gt, thr=0.45) == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="shape"):
        iou_xywh(pred, gt[:2])


def test_denormalize_is_the_official_conversion() -> None:
    # (cx, cy, w, h) = (0.5, 0.5, 0.5, 0.5) on a 100 x 50 image: centre (50, 25), size 50 x 25.
    assert denormalize_cxcywh([0.5, 0.5, 0.5, 0.5], 100, 50).tolist() == [25.0, 12.5, 50.0, 25.0]
    boxes = denormalize_cxcywh([[0.5, 0.5, 1.0, 1.0], [0.25, 0.75, 0.5, 0.5]], [10, 20], [10, 40])
    assert boxes.tolist() == [[0.0, 0.0, 10.0, 10.0], [0.0, 20.0, 10.0, 20.0]]


def test_classification_metrics_by_hand() -> None:
    y, p = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert accuracy(p, y) == 60.0
    assert f1_score(p, y, positive=1) == pytest.approx(100 * 4 / 6)  # tp 2, fp 1, fn 1
    assert f1_score(p, y, positive=0) == pytest.approx(50.0)  # tp 1, fp 1, fn 1
    assert macro_f1(p, y) == pytest.approx((100 * 4 / 6 + 50) / 2)
    assert f1_score([0, 0], [0, 0], positive=1) == 0.0  # never predicted nor present (zero_division=0)
    with pytest.raises(ValueError, match="predictions"):
        accuracy([1], [1, 0])


def test_official_conversion_then_inclusive_iou_threshold() -> None:
    # grounding_eval_bbox: coord[0::2] *= width; coord[1::2] *= height; then centre -> corner.
    # (0.5, 0.5, 0.5, 0.5) on a 200 x 100 image -> [50, 25, 100, 50].
    box = denormalize_cxcywh([0.5, 0.5, 0.5, 0.5], 200, 100)
    assert box.tolist() == [50.0, 25.0, 100.0, 50.0]
    # computeIoU(ref, pred): last pixel x + w - 1; strict x0 < x1; union of plain areas.
    # [0,0,10,10] vs [5,0,10,10]: inter x 5..9 (5 px) x y 0..9 (10 px) = 50; union 150 -> 1/3.
    assert iou_xywh([0, 0, 10, 10], [5, 0, 10, 10]) == pytest.approx(1 / 3)
    # [0,0,10,10] vs [0,0,10,5]: inter 10 x 5 = 50; union 100 + 50 - 50 = 100 -> exactly 0.5: correct.
    assert iou_xywh([0, 0, 10, 10], [0, 0, 10, 5]) == 0.5
    assert grounding_accuracy([[0, 0, 10, 5], [5, 0, 10, 10]], [[0, 0, 10, 10], [0, 0, 10, 10]]) == 50.0
