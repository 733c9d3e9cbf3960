"""Zero-shot evaluation during pre-training: image<->text retrieval and grounding on a world split.

Retrieval follows the official ``itm_eval`` semantics (xvlm.md, davinci_cclm_vlue.md §C.3): ITC
similarities, optionally re-ranked by the ITM match score on each row's top-k (un-scored entries
stay at -100, as the official code leaves them); text retrieval ranks an image's best ground-truth
caption, image retrieval ranks a caption's single image. Grounding: the box head on the text fused
with the whole image, correct when IoU >= 0.5 (VLUE's inclusive-pixel IoU).
"""

from __future__ import annotations

import numpy as np
import torch

from grainvl.data.pretrain import GroundingEval, ImageTextEval
from grainvl.losses.bbox import box_iou_xywh
from grainvl.metrics.retrieval import retrieval_metrics  # moved there; re-exported for existing callers
from grainvl.models.xvlm import XVLM


def chance_retrieval(n_images: int, captions_per_image: float) -> dict[str, float]:
    """Expected R@k (%) of random scores.

    Text retrieval: an image's c true captions among T texts; P(none in the top k) = C(T-c, k) / C(T, k).
    Image retrieval: a caption's one true image among N: k / N.
    """
    n_texts = n_images * captions_per_image
    out = {}
    for k in (1, 5, 10):
        miss = np.prod([max(0.0, n_texts - k - j) / (n_texts - j) for j in range(int(captions_per_image))])
        out[f"txt_r{k}"] = 100.0 * (1.0 - float(miss))
        out[f"img_r{k}"] = 100.0 * min(1.0, k / n_images)
    return out


@torch.no_grad()
def zero_shot_retrieval(model: XVLM, data: ImageTextEval, k_test: int = 0, batch_size: int = 64) -> dict[str, float]:
    """Retrieval metrics on a :class:`ImageTextEval`; ``k_test`` > 0 re-ranks each row's top-k by ITM alone."""
    model.eval()
    image_embeds = torch.cat([model.encode_image(images)[0] for images in data.images.batches(batch_size)])
    text_ids, text_atts = data.text_ids, data.text_atts
    text_embeds = torch.cat(
        [
            model.encode_text(text_ids[i : i + batch_size], text_atts[i : i + batch_size])
            for i in range(0, len(text_ids), batch_size)
        ]
    )
    sim = model.image_feat(image_embeds) @ model.text_feat(text_embeds).t()  # (N, T)
    scores_i2t, scores_t2i = sim.clone(), sim.t().clone()
    if k_test > 0:
        scores_i2t = _itm_rerank(model, sim, image_embeds, text_embeds, text_atts, k_test)
        scores_t2i = _itm_rerank(model, sim.t(), text_embeds, image_embeds, text_atts, k_test, rows_are_text=True)
    txt2img = data.text_image_index.tolist()
    return retrieval_metrics(scores_i2t.numpy(), scores_t2i.numpy(), data.image_text_index, txt2img)


def _itm_rerank(
    model: XVLM,
    sim: torch.Tensor,
    row_embeds: torch.Tensor,
    col_embeds: torch.Tensor,
    text_atts: torch.Tensor,
    k: int,
    rows_are_text: bool = False,
) -> torch.Tensor:
    """Official re-ranking: only each row's ITC top-k get an ITM score; the rest stay at -100."""
    scores = torch.full_like(sim, -100.0)
    for r in range(sim.shape[0]):
        top = sim[r].topk(min(k, sim.shape[1])).indices  # (k,)
        if rows_are_text:
            text, atts, vis = row_embeds[r].expand(len(top), -1, -1), text_atts[r].expand(len(top), -1), col_embeds[top]
        else:
            text, atts, vis = col_embeds[top], text_atts[top], row_embeds[r].expand(len(top), -1, -1)
        vis_atts = torch.ones(vis.shape[:2], dtype=torch.long)
        fused = model.fuse(text, atts, vis, vis_atts)
        scores[r, top] = model.itm_logits(fused)[:, 1]
    return scores


@torch.no_grad()
def zero_shot_grounding(model: XVLM, data: GroundingEval, batch_size: int = 32) -> dict[str, float]:
    """Accuracy (%) at IoU >= 0.5 in original-image pixels (VLUE's inclusive IoU) and the mean IoU.

    Also the chance-level reference from the same pass (each image is decoded once): ``prior_*``
    always predicts the split's mean normalised box, an optimistic prior.
    """
    model.eval()
    preds, boxes, sizes = [], [], []
    for start in range(0, len(data), batch_size):
        items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
        batch = data.collate(items)
        vis, vis_atts = model.encode_image(batch["image"])
        fused = model.fuse(model.encode_text(batch["text_ids"], batch["text_atts"]), batch["text_atts"], vis, vis_atts)
        preds.append(model.predict_box(fused, vis))  # (B, 4) normalised cx, cy, w, h
        boxes.append(batch["orig_box"])  # (B, 4) xywh pixels
        sizes.append(torch.tensor([item["orig_size"] for item in items], dtype=torch.float32))  # (B, 2) W, H
    gt, wh = torch.cat(boxes), torch.cat(sizes).repeat(1, 2)  # (T, 4), (T, 4) as W, H, W, H
    cx, cy, w, h = torch.cat(preds).unbind(-1)
    pred = torch.stack([cx - w / 2, cy - h / 2, w, h], dim=1) * wh
    iou = box_iou_xywh(pred, gt, inclusive=True)
    prior_iou = box_iou_xywh((gt / wh).mean(0, keepdim=True) * wh, gt, inclusive=True)
    return {
        "grounding_acc": 100.0 * float((iou >= 0.5).float().mean()),
        "grounding_miou": float(iou.mean()),
        "prior_grounding_acc": 100.0 * float((prior_iou >= 0.5).float().mean()),
        "prior_grounding_miou": float(prior_iou.mean()),
    }
