"""Region ("visual concept") features of X-VLM/X²-VLM: patch masks from boxes and box-pooled tokens.

The vision tower runs once per *image*; each region text then sees a sequence built from its image:

* position 0 (the "CLS" the projections and fusion read) is the **mean of the patch tokens inside
  the box** instead of the image mean;
* positions ``1..N`` are the image's patch tokens unchanged (the ViT blocks are not masked);
* cross-attention from the text is restricted to the box's patches plus position 0 by using the
  same 0/1 patch mask as the key-padding mask.

Patch order is row-major, ``index = 1 + row · G + col`` with ``G = resolution / patch_size``,
matching a ViT's ``flatten(2)`` of the ``(D, G, G)`` patch grid (xvlm.md §1.2, §2.4).
"""

from __future__ import annotations

import torch


def box_patch_mask(boxes_xywh: torch.Tensor, resolution: int, patch_size: int) -> torch.Tensor:
    """0/1 mask of the patches a box touches, with the first ("CLS") position always on.

    Args:
        boxes_xywh: (R, 4) boxes ``(x, y, w, h)`` in pixels of the ``resolution × resolution`` input.
        resolution: image side in pixels (must be a multiple of ``patch_size``).
        patch_size: ViT patch side in pixels.

    Returns:
        (R, 1 + G²) float mask, ``G = resolution // patch_size``. Following the official
        ``get_image_attns``: columns ``floor(x / P) .. ceil((x + w) / P)`` (end exclusive) and the same
        for rows, the start clipped to the last patch and the span at least one patch wide. Starts
        left of / above the image are clipped to 0 (the official code asserts instead).
    """
    if resolution % patch_size != 0:
        raise ValueError(f"resolution {resolution} is not a multiple of patch size {patch_size}")
    if boxes_xywh.dim() != 2 or boxes_xywh.shape[1] != 4:
        raise ValueError(f"expected (R, 4) boxes, got {tuple(boxes_xywh.shape)}")
    grid = resolution // patch_size
    boxes = boxes_xywh.to(torch.float64)  # float64 so floor/ceil match the official Python floats
    x, y, w, h = boxes.unbind(-1)

    def span(start: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """(R, G) bool: patches from floor(start/P) to ceil((start+length)/P), at least one."""
        first = torch.floor(start / patch_size).clamp(0, grid - 1)
        stop = torch.maximum(first + 1, torch.ceil((start + length) / patch_size).clamp(max=grid))
        cells = torch.arange(grid, dtype=torch.float64, device=boxes.device)
        return (cells >= first[:, None]) & (cells < stop[:, None])

    cols, rows = span(x, w), span(y, h)  # (R, G) each
    patches = (rows[:, :, None] & cols[:, None, :]).flatten(1)  # (R, G²), row-major
    first_token = torch.ones_like(patches[:, :1])
    return torch.cat([first_token, patches], dim=1).to(torch.float32)  # (R, 1 + G²)


def box_target_cxcywh(boxes_xywh: torch.Tensor, resolution: int) -> torch.Tensor:
    """(R, 4) pixel ``(x, y, w, h)`` → (R, 4) regression targets ``(cx, cy, w, h) / resolution``."""
    x, y, w, h = boxes_xywh.to(torch.float32).unbind(-1)
    return torch.stack([x + w / 2, y + h / 2, w, h], dim=-1) / resolution


def region_features(
    image_tokens: torch.Tensor, region_image_index: torch.Tensor, patch_mask: torch.Tensor
) -> torch.Tensor:
    """Per-region vision sequences whose first token is the box-pooled patch mean.

    Args:
        image_tokens: (I, 1 + N, D) vision-tower output of the I images (index 0 the image "CLS").
        region_image_index: (R,) long, the image each region (text) belongs to.
        patch_mask: (R, 1 + N) 0/1 mask from :func:`box_patch_mask`; its ``[:, 1:]`` part weights the
            mean. Use the same tensor as the cross-attention key mask of these sequences.

    Returns:
        (R, 1 + N, D): ``out[r, 0] = Σ_n m[r, n] · tokens[n] / Σ_n m[r, n]`` over the patches of image
        ``region_image_index[r]``, and ``out[r, 1:]`` those patch tokens. A row without any patch
        (not produced by :func:`box_patch_mask`) gives a zero first token rather than NaN.
    """
    if patch_mask.shape != (region_image_index.shape[0], image_tokens.shape[1]):
        raise ValueError(
            f"patch_mask must be (R, 1+N) = ({region_image_index.shape[0]}, {image_tokens.shape[1]}), "
            f"got {tuple(patch_mask.shape)}"
        )
    patches = image_tokens[region_image_index, 1:]  # (R, N, D)
    weights = patch_mask[:, 1:].to(patches.dtype)  # (R, N)
    pooled = torch.einsum("rn,rnd->rd", weights, patches)  # (R, D)
    pooled = pooled / weights.sum(dim=1, keepdim=True).clamp(min=1.0)
    return torch.cat([pooled.unsqueeze(1), patches], dim=1)  # (R, 1 + N, D)
