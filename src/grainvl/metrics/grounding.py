"""Visual grounding accuracy: a predicted box is correct when its IoU with the ground truth is >= 0.5.

The official evaluations (X-VLM ``dataset/utils.py::computeIoU``, used unchanged by
``grounding_eval_bbox`` for RefCOCO+ and by VLUE's ``grounding_eval_bbox_vlue``) use the
**inclusive-pixel** convention on ``[x, y, w, h]`` boxes:

* the last pixel of a box is ``x + w - 1``;
* the boxes intersect only when ``x0 < x1`` and ``y0 < y1`` *strictly* (``x0, x1`` the intersection's
  first and last pixel), and the intersection is then ``(x1 - x0 + 1) * (y1 - y0 + 1)``;
* the union is ``w1*h1 + w2*h2 - inter`` (plain areas, no ``+1``).

Consequences (tested): touching boxes score 0; boxes overlapping by a single pixel row or column
score 0 (``x0 == x1``); identical boxes score 1 unless they are at most one pixel wide or high (then
0: the strict test fails). Where the official code divides by zero (two zero-area boxes), we return 0.
``inclusive=False`` gives the continuous IoU instead.

The box head predicts a normalised ``(cx, cy, w, h)``; :func:`denormalize_cxcywh` turns it into
pixels the official way (scale by image width/height, then move the centre to the corner).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from grainvl.losses.bbox import box_iou_xywh

IOU_THRESHOLD = 0.5

BoxesLike = torch.Tensor | np.ndarray | Sequence[Sequence[float]] | Sequence[float]


def _as_boxes(boxes: BoxesLike) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(boxes, dtype=np.float64) if not isinstance(boxes, torch.Tensor) else boxes)
    if t.shape[-1:] != (4,) or t.dim() > 2:
        raise ValueError(f"expected [x, y, w, h] boxes of shape (4,) or (N, 4), got {tuple(t.shape)}")
    return t.to(torch.float64)


def iou_xywh(a: BoxesLike, b: BoxesLike, inclusive: bool = True) -> float | np.ndarray:
    """IoU of ``[x, y, w, h]`` pixel boxes: a float for two boxes, an (N,) array for two (N, 4) arrays
    (paired row by row). ``inclusive`` (default) is the official RefCOCO/VLUE convention."""
    a_t, b_t = _as_boxes(a), _as_boxes(b)
    if a_t.shape != b_t.shape:
        raise ValueError(f"expected boxes of equal shape, got {tuple(a_t.shape)} and {tuple(b_t.shape)}")
    iou = box_iou_xywh(a_t, b_t, inclusive=inclusive)
    return float(iou) if iou.dim() == 0 else iou.numpy()


def grounding_accuracy(
    pred_boxes: BoxesLike, gt_boxes: BoxesLike, thr: float = IOU_THRESHOLD, inclusive: bool = True
) -> float:
    """Percentage of (N, 4) ``[x, y, w, h]`` predictions with IoU >= ``thr`` against their ground truth."""
    iou = np.atleast_1d(iou_xywh(pred_boxes, gt_boxes, inclusive=inclusive))
    if iou.size == 0:
        raise ValueError("no boxes to score")
    return 100.0 * float(np.mean(iou >= thr))


def denormalize_cxcywh(pred: BoxesLike, width: float | Sequence[float], height: float | Sequence[float]) -> np.ndarray:
    """(N, 4) or (4,) normalised ``(cx, cy, w, h)`` → ``[x, y, w, h]`` pixels of images ``width`` x ``height``."""
    p = _as_boxes(pred).numpy().copy()
    scale = np.stack([np.asarray(width, dtype=np.float64), np.asarray(height, dtype=np.float64)], axis=-1)
    p[..., 0::2] *= scale[..., :1]  # x-coordinates (cx, w) by the width
    p[..., 1::2] *= scale[..., 1:]  # y-coordinates (cy, h) by the height
    p[..., 0] -= p[..., 2] / 2
    p[..., 1] -= p[..., 3] / 2
    return p
