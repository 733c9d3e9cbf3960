"""Pre-training and fine-tuning objectives: ITC, ITM with hard negatives, MLM, box regression."""

from grainvl.losses.bbox import bbox_loss, box_cxcywh_to_xyxy, box_iou_xywh, box_xyxy_to_cxcywh, generalized_box_iou
from grainvl.losses.itc import clamp_temperature_, itc_loss
from grainvl.losses.itm import itm_labels, itm_loss, itm_pairs, sample_hard_negatives
from grainvl.losses.mlm import IGNORE_INDEX, gather_labelled, gather_masked, mlm_loss

__all__ = [
    "IGNORE_INDEX",
    "bbox_loss",
    "box_cxcywh_to_xyxy",
    "box_iou_xywh",
    "box_xyxy_to_cxcywh",
    "clamp_temperature_",
    "gather_labelled",
    "gather_masked",
    "generalized_box_iou",
    "itc_loss",
    "itm_labels",
    "itm_loss",
    "itm_pairs",
    "mlm_loss",
    "sample_hard_negatives",
]
