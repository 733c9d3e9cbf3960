"""X²-VLM pre-training as a Task module: image-, region- and video-text objectives (xvlm.md §2).

``forward(batch)`` takes ``{"image": ..., "region": ..., "video": ...}`` sub-batches (any subset,
shapes in ``grainvl.data.pretrain``) and returns ``(losses, metrics)``; each loss is already
multiplied by its data type's ``iter_perc`` weight, so the training loss is their plain sum.
Deviation: the official code back-propagates the video loss separately before the image+region
loss (to save memory); summing them gives the same gradient.

Under DDP, losses that are means over a per-rank *varying* number of items (MLM over masked tokens,
region ITM over the rank's region texts, box L1/GIoU over its non-whole-image boxes) go through
:func:`grainvl.utils.distributed.to_global_mean`, so that DDP's averaged gradient is the one of the
global batch (docs/models.md, "What DDP averages"). ITC is computed on the gathered global batch, and
image/video ITM is a mean over ``3B`` pairs with the same ``B`` on every rank (the streams always
yield full batches), so both are already global means.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from grainvl.losses.bbox import bbox_loss
from grainvl.losses.itc import itc_loss
from grainvl.losses.itm import hard_negative_itm_loss
from grainvl.losses.mlm import gather_labelled, gather_masked, mlm_loss
from grainvl.models.layers import SharedTokens
from grainvl.models.xvlm import XVLM
from grainvl.utils.distributed import to_global_mean


@dataclass
class PretrainWeights:
    """Per-data-type loss weights (the official ``iter_perc``) and switches."""

    image: float = 1.0
    region: float = 1.0
    video: float = 1.0
    itm: bool = True  # the 1B recipe turns ITM off for noisy batches (stop_calc_itm); on by default
    bbox: bool = True


class PretrainTask(nn.Module):
    def __init__(self, model: XVLM, weights: PretrainWeights | None = None) -> None:
        super().__init__()
        self.model = model
        self.weights = weights or PretrainWeights()
        # The official MLM head projects every gathered position, the padding of ``masked_pos`` included;
        # False (default) projects only the real masked tokens: the same loss and gradients, less work
        # (losses/mlm.py). True is the benchmarks' reference step.
        self.padded_mlm_rows = False

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        losses: dict[str, torch.Tensor] = {}
        if "image" in batch and self.weights.image > 0:
            self._image_text("image", batch["image"], self.weights.image, losses, video=False)
        if "video" in batch and self.weights.video > 0:
            self._image_text("video", batch["video"], self.weights.video, losses, video=True)
        if "region" in batch and self.weights.region > 0:
            self._region_text(batch["region"], self.weights.region, losses)
        metrics = {"temp": float(self.model.temp.detach())}
        return losses, metrics

    def clamp_temperature_(self) -> None:
        self.model.clamp_temperature_()

    # ------------------------------------------------------------------ image / video - text
    def _image_text(self, kind: str, b: dict[str, torch.Tensor], weight: float, losses: dict, video: bool) -> None:
        m = self.model
        if video:
            vis, vis_atts = m.encode_video(b["video"])  # (B, 1+N, Dv)
            idx = b.get("video_ids")
        else:
            vis, vis_atts = m.encode_image(b["image"])
            idx = b.get("image_ids")
        text = m.encode_text(b["text_ids"], b["text_atts"])  # (B, L, H)
        vis_feat, text_feat = m.image_feat(vis), m.text_feat(text)
        losses[f"{kind}_itc_loss"] = weight * itc_loss(vis_feat, text_feat, m.temp, idx=idx)
        if self.weights.itm:
            losses[f"{kind}_itm_loss"] = weight * hard_negative_itm_loss(
                m, vis, vis_atts, text, b["text_atts"], vis_feat, text_feat, idx
            )
        losses[f"{kind}_mlm_loss"] = weight * self._mlm(b, vis, vis_atts)

    # ------------------------------------------------------------------ region - text
    def _region_text(self, b: dict[str, torch.Tensor], weight: float, losses: dict) -> None:
        m = self.model
        image_embeds, _ = m.encode_image(b["image"])  # (I, 1+N, Dv): the ViT runs once per image
        region_atts = b["region_atts"]  # (T, 1+N): cross-attention restricted to the box's patches
        index = b["region_image_index"]  # (T,)
        region_seq = m.region_sequence(image_embeds, index, region_atts)  # (T, 1+N, Dv)
        text = m.encode_text(b["text_ids"], b["text_atts"])
        region_feat, text_feat = m.image_feat(region_seq), m.text_feat(text)
        if m.share_vision_rows:  # the same rows, each image's patches projected once in cross-attention
            region_seq = SharedTokens(image_embeds, index, first=region_seq[:, 0])
        # Different regions of one image are different targets, so no idx here (as the official code).
        losses["region_itc_loss"] = weight * itc_loss(region_feat, text_feat, m.temp, idx=None)
        if self.weights.itm:
            itm = hard_negative_itm_loss(
                self.model, region_seq, region_atts, text, b["text_atts"], region_feat, text_feat, None
            )
            # A region batch holds up to region_batch_size texts, so its 3T pairs differ per rank.
            losses["region_itm_loss"] = weight * to_global_mean(itm, 3 * text.shape[0])
        losses["region_mlm_loss"] = weight * self._mlm(b, region_seq, region_atts)
        if self.weights.bbox:
            # Box regression: the region text against the *whole* image (all-ones mask), xvlm.md §2.4.
            full = image_embeds.index_select(0, index)  # (T, 1+N, Dv)
            full_atts = torch.ones(full.shape[:2], dtype=torch.long, device=full.device)
            # Shared: projected once per image; otherwise the rows just gathered (not a second gather).
            rows = SharedTokens(image_embeds, index) if m.share_vision_rows else full
            fused = m.fuse(text, b["text_atts"], rows, full_atts)
            l1, giou = bbox_loss(m.predict_box(fused, full), b["region_boxes"], b["is_image"])
            num_boxes = (~b["is_image"].bool()).sum()  # the boxes bbox_loss averages over
            losses["region_bbox_loss"] = weight * to_global_mean(l1, num_boxes)
            losses["region_giou_loss"] = weight * to_global_mean(giou, num_boxes)

    # ------------------------------------------------------------------ shared pieces
    def _mlm(
        self, b: dict[str, torch.Tensor], vis: torch.Tensor | SharedTokens, vis_atts: torch.Tensor
    ) -> torch.Tensor:
        m = self.model
        hidden = m.encode_multimodal(b["text_ids_masked"], b["text_atts"], vis, vis_atts)  # (B, L, H)
        if self.padded_mlm_rows:
            logits = m.mlm_logits(gather_masked(hidden, b["masked_pos"]))  # (B, M, V)
            return mlm_loss(logits, b["masked_ids"], global_mean=True)
        rows, labels = gather_labelled(hidden, b["masked_pos"], b["masked_ids"])  # (N, H), (N,)
        return mlm_loss(m.mlm_logits(rows), labels, global_mean=True)  # logits (N, V)
