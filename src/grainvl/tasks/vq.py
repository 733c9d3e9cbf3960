"""Training and measuring the DaVinci image tokenizer (:class:`grainvl.models.vq.VQTokenizer`).

:class:`VQTrainTask` is the Task module :func:`grainvl.train.loop.train` runs: the reconstruction loss (L1 as
taming's VQGAN, or L2 as VQ-VAE) on images in [0, 1] plus the quantiser's ``commit_loss`` (and, with a
straight-through codebook, ``codebook_loss``); the batch PSNR and the share of the codebook the batch used are
its metrics. :func:`evaluate_tokenizer` scores a frozen tokenizer on whole images: mean per-image PSNR, the share of
codes used over the split, and the code perplexity (exp of the entropy of the code histogram: how many codes the
split effectively uses). :func:`random_crops` draws the training crops from images held in memory as uint8.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from grainvl.models.vq import VQTokenizer

RECON_LOSSES = ("l1", "l2")


def psnr(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Per-image PSNR in dB of images in [0, 1]: ``10 log10(1 / MSE)`` -> (B,); identical images give +inf."""
    mse = (reconstruction.clamp(0, 1) - target).pow(2).flatten(1).mean(1)  # (B,)
    return 10 * torch.log10(1.0 / mse)


def edge_loss(reconstruction: Tensor, target: Tensor) -> Tensor:
    """Mean L1 distance between the horizontal and vertical pixel differences of two image batches (B, 3, H, W).

    Zero on flat regions of the target that are reproduced flat, so it weighs only the edges: on mostly-background
    images it keeps a loss on the shapes' outlines that the pixel loss, dominated by the background, does not.
    """
    dx_rec, dx_ref = reconstruction.diff(dim=-1), target.diff(dim=-1)  # (B, 3, H, W-1)
    dy_rec, dy_ref = reconstruction.diff(dim=-2), target.diff(dim=-2)  # (B, 3, H-1, W)
    return (F.l1_loss(dx_rec, dx_ref) + F.l1_loss(dy_rec, dy_ref)) / 2


class VQTrainTask(nn.Module):
    """``forward({"images": (B, 3, H, W) in [0, 1], "quantize": bool}) -> (losses, metrics)`` for the training loop.

    ``edge_weight`` > 0 adds ``edge_loss`` (the pixel-difference L1 of :func:`edge_loss`) with that weight. A batch
    with ``"quantize": False`` (the recipe's quantiser warm-up) trains encoder and decoder as a plain autoencoder
    (:meth:`VQTokenizer.forward`); its ``code_usage`` is 0.
    """

    def __init__(self, tokenizer: VQTokenizer, recon_loss: str = "l1", edge_weight: float = 0.0) -> None:
        super().__init__()
        if recon_loss not in RECON_LOSSES:
            raise ValueError(f"recon_loss must be one of {RECON_LOSSES}, got {recon_loss!r}")
        if edge_weight < 0:
            raise ValueError(f"edge_weight must be >= 0, got {edge_weight}")
        self.tokenizer = tokenizer
        self.recon_loss = recon_loss
        self.edge_weight = edge_weight

    def forward(self, batch: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, float]]:
        images = batch["images"]  # (B, 3, H, W)
        reconstruction, codes, losses = self.tokenizer(images, quantize=bool(batch.get("quantize", True)))
        loss_fn = F.l1_loss if self.recon_loss == "l1" else F.mse_loss
        losses = {"recon_loss": loss_fn(reconstruction, images), **losses}
        if self.edge_weight > 0:
            losses["edge_loss"] = self.edge_weight * edge_loss(reconstruction, images)
        with torch.no_grad():
            used = 0 if codes is None else codes.unique().numel()
            metrics = {
                "psnr": float(psnr(reconstruction, images).clamp(max=100).mean()),
                "code_usage": used / self.tokenizer.codebook_size,
            }
        return losses, metrics


def random_crops(images: Tensor, batch_size: int, crop: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` random ``crop`` x ``crop`` crops (random images, positions, horizontal flips) of uint8
    images (N, 3, H, W) -> float (B, 3, crop, crop) in [0, 1]."""
    n, _, h, w = images.shape
    if crop > min(h, w):
        raise ValueError(f"crop {crop} is larger than the images ({h}x{w})")
    picks = torch.randint(0, n, (batch_size,), generator=generator).tolist()
    tops = torch.randint(0, h - crop + 1, (batch_size,), generator=generator).tolist()
    lefts = torch.randint(0, w - crop + 1, (batch_size,), generator=generator).tolist()
    flips = torch.rand(batch_size, generator=generator).lt(0.5).tolist()
    crops = []
    for i, top, left, flip in zip(picks, tops, lefts, flips):
        tile = images[i, :, top : top + crop, left : left + crop]
        crops.append(tile.flip(-1) if flip else tile)
    return torch.stack(crops).float() / 255.0


@torch.no_grad()
def reconstruct(tokenizer: VQTokenizer, images: Tensor, batch_size: int = 8) -> tuple[Tensor, Tensor]:
    """Encode and decode uint8 images (N, 3, H, W) in batches -> (reconstructions in [0, 1] (N, 3, H, W), codes)."""
    device = next(tokenizer.parameters()).device
    tokenizer.eval()
    outputs, all_codes = [], []
    for start in range(0, images.shape[0], batch_size):
        chunk = images[start : start + batch_size].to(device).float() / 255.0
        codes = tokenizer.encode(chunk)  # (b, h, w)
        outputs.append(tokenizer.decode(codes).cpu())
        all_codes.append(codes.cpu())
    return torch.cat(outputs), torch.cat(all_codes)


def code_statistics(codes: Tensor, codebook_size: int) -> dict[str, float]:
    """Share of the codebook used at least once, and the perplexity ``exp(H)`` of the code histogram."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    p = counts[counts > 0] / counts.sum()
    return {
        "code_usage": float((counts > 0).sum()) / codebook_size,
        "code_perplexity": math.exp(float(-(p * p.log()).sum())),
    }


def evaluate_tokenizer(tokenizer: VQTokenizer, images: Tensor, batch_size: int = 8) -> dict[str, Any]:
    """PSNR (dB, mean over images), code usage and perplexity of a frozen tokenizer on uint8 images (N, 3, H, W)."""
    reconstructions, codes = reconstruct(tokenizer, images, batch_size)
    scores = psnr(reconstructions, images.float() / 255.0).clamp(max=100)  # a perfect copy counts as 100 dB
    return {"psnr": float(scores.mean()), **code_statistics(codes, tokenizer.codebook_size), "images": len(images)}
