"""Box regression losses (L1 + GIoU) and the IoU used by grounding evaluation.

X²-VLM regresses the box of the object a region text describes: the fusion encoder attends from the
text to the *whole* image, ``bbox_head(CLS).sigmoid()`` gives ``(cx, cy, w, h)`` in ``[0, 1]`` of the
image side, and the loss is ``L1 + (1 − GIoU)``, each summed and divided by the number of boxes, with
whole-image entries (``is_image``) excluded (xvlm.md §2.4).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Guards the union and enclosing-box areas of zero-area boxes against 0/0.
AREA_EPS = 1e-7


def box_cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) ``(cx, cy, w, h)`` → (..., 4) ``(x0, y0, x1, y1)``."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) ``(x0, y0, x1, y1)`` → (..., 4) ``(cx, cy, w, h)``."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def generalized_box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise generalised IoU of paired boxes (Rezatofighi et al., 2019).

    Args:
        a, b: (N, 4) boxes ``(x0, y0, x1, y1)``; row ``i`` of ``a`` is compared with row ``i`` of ``b``.

    Returns:
        (N,) ``IoU − (C − U) / C`` in ``[−1, 1]``, ``U`` the union and ``C`` the smallest enclosing box.

    Degenerate boxes (``x1 < x0`` or ``y1 < y0``) are read as zero-area boxes at their start corner
    instead of failing, and the areas are floored at 1e-7, so the result (and its gradient) is always
    finite. The official code instead sets the whole batch's GIoU loss to zero when any box is
    degenerate (xvlm.md §2.4); with sigmoid ``(cx, cy, w, h)`` predictions that never happens.
    """
    if a.shape != b.shape or a.dim() != 2 or a.shape[1] != 4:
        raise ValueError(f"expected two (N, 4) box tensors, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = torch.cat([a[:, :2], torch.maximum(a[:, 2:], a[:, :2])], dim=1)  # (N, 4), x1 >= x0
    b = torch.cat([b[:, :2], torch.maximum(b[:, 2:], b[:, :2])], dim=1)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])  # (N,)
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # (N,)
    inter_wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)  # (N, 2)
    inter = inter_wh[:, 0] * inter_wh[:, 1]
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=AREA_EPS)
    hull_wh = torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])  # (N, 2), >= 0
    hull = (hull_wh[:, 0] * hull_wh[:, 1]).clamp(min=AREA_EPS)
    return iou - (hull - union) / hull


def bbox_loss(
    pred: torch.Tensor, target: torch.Tensor, is_image: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """L1 and GIoU box losses, each summed over boxes and divided by the number of real boxes.

    Args:
        pred: (N, 4) predicted ``(cx, cy, w, h)`` in ``[0, 1]`` (sigmoid output).
        target: (N, 4) target ``(cx, cy, w, h)`` in ``[0, 1]``.
        is_image: (N,) bool (or 0/1) marking whole-image entries (target ``[0.5, 0.5, 1, 1]``), which
            the official code excludes from both terms; None counts every entry.

    Returns:
        ``(l1, giou)``: ``Σ |pred − target| / n`` (summed over the 4 coordinates) and
        ``Σ (1 − GIoU) / n`` with ``n`` the number of entries not marked ``is_image``. When every
        entry is a whole image both are 0 (the official code divides by zero there).
    """
    if pred.shape != target.shape or pred.dim() != 2 or pred.shape[1] != 4:
        raise ValueError(f"expected (N, 4) pred and target, got {tuple(pred.shape)} and {tuple(target.shape)}")
    l1 = F.l1_loss(pred, target, reduction="none").sum(dim=1)  # (N,)
    giou = 1 - generalized_box_iou(box_cxcywh_to_xyxy(pred), box_cxcywh_to_xyxy(target))  # (N,)
    if is_image is None:
        keep = torch.ones_like(l1)
    else:
        if is_image.shape != (pred.shape[0],):
            raise ValueError(f"is_image must have shape ({pred.shape[0]},), got {tuple(is_image.shape)}")
        keep = 1 - is_image.to(l1.dtype)  # (N,)
    num_boxes = keep.sum().clamp(min=1)
    return (l1 * keep).sum() / num_boxes, (giou * keep).sum() / num_boxes


def box_iou_xywh(pred: torch.Tensor, gt: torch.Tensor, inclusive: bool = False) -> torch.Tensor:
    """Element-wise IoU of paired ``(x, y, w, h)`` pixel boxes, for grounding accuracy (IoU ≥ 0.5).

    Args:
        pred, gt: (N, 4) or (4,) boxes ``(x, y, w, h)``.
        inclusive: use the inclusive-pixel convention of the official RefCOCO/VLUE evaluation
            (``computeIoU``): the last pixel is ``x + w − 1``, the intersection counts only when
            ``x0 < x1`` *strictly* (boxes sharing a single pixel row/column score 0), its size is
            ``x1 − x0 + 1``, and the union still uses ``w·h`` areas. False gives the continuous IoU.

    Returns:
        (N,) (or scalar for (4,) inputs) float64 IoU in ``[0, 1]``, computed in float64 so that pixel
        coordinates near the 0.5 threshold are not decided by float32 rounding.
    """
    squeeze = pred.dim() == 1
    pred, gt = pred.reshape(-1, 4).to(torch.float64), gt.reshape(-1, 4).to(torch.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"expected boxes of equal shape, got {tuple(pred.shape)} and {tuple(gt.shape)}")
    last = 1.0 if inclusive else 0.0
    x0 = torch.maximum(pred[:, 0], gt[:, 0])
    y0 = torch.maximum(pred[:, 1], gt[:, 1])
    x1 = torch.minimum(pred[:, 0] + pred[:, 2] - last, gt[:, 0] + gt[:, 2] - last)
    y1 = torch.minimum(pred[:, 1] + pred[:, 3] - last, gt[:, 1] + gt[:, 3] - last)
    overlaps = (x0 < x1) & (y0 < y1)
    inter = torch.where(overlaps, (x1 - x0 + last) * (y1 - y0 + last), torch.zeros_like(x0))
    union = pred[:, 2] * pred[:, 3] + gt[:, 2] * gt[:, 3] - inter
    iou = inter / union.clamp(min=AREA_EPS)
    return iou[0] if squeeze else iou
