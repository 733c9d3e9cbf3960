"""Image, box and video transforms for pre-training, fine-tuning and evaluation (no torchvision).

Conventions:

* Images are Pillow images; the tensor form is ``(3, H, W)`` float in ``[0, 1]`` before
  normalisation. Sizes given as a pair are ``(height, width)`` like torchvision; a single int means a
  square ``(size, size)`` because X-VLM/X²-VLM always stretch to ``image_res × image_res``.
* Boxes are COCO-style ``[x, y, w, h]`` in pixels of the image they travel with, as a float32 tensor
  of shape ``(N, 4)``. Geometric transforms return boxes in the output image's pixels.
* Transforms that may lose boxes return ``keep_index``: the indices (into the input boxes) of the
  boxes that survived, in order, so callers can drop the paired phrases. A kept box always lies
  inside the output image and has positive size; a box that no longer shows enough of itself is
  dropped rather than returned wrong.
* All randomness comes from a passed :class:`random.Random`; the same seed gives the same output.

The augmentation recipe follows X-VLM/X²-VLM (``dataset/__init__.py``): RandomResizedCrop
(scale (0.2, 1) for pre-training, (0.5, 1) for fine-tuning, bicubic) + horizontal flip + ALBEF's
RandomAugment(2, 7) over ten ops; test time is a plain bicubic square resize. Region data use a crop
that keeps the described box whole and colour-only RandomAugment (geometric ops would move boxes).
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

# ---------------------------------------------------------------------------------------------
# Normalisation constants (per RGB channel, applied to [0, 1] tensors).

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# X-VLM and X²-VLM normalise with CLIP's statistics for every backbone, BEiT-v2 included
# (xvlm.md §1.2: "not BEiT's (0.5, 0.5, 0.5)").
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
XVLM_MEAN, XVLM_STD = CLIP_MEAN, CLIP_STD
# BEiT's own fine-tuning statistics, for loading a BEiT checkpoint outside the X-VLM recipe.
BEIT_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
BEIT_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
# TF-Lite EfficientNet-Lite expects inputs scaled to [-1, 1], i.e. (x - 0.5) / 0.5.
EFFICIENTNET_LITE_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
EFFICIENTNET_LITE_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Random-resized-crop scale ranges per transform kind (X-VLM dataset/__init__.py).
_CROP_SCALE = {"pretrain": (0.2, 1.0), "finetune": (0.5, 1.0)}

# ---------------------------------------------------------------------------------------------
# Small helpers


def as_boxes(boxes: Any) -> torch.Tensor:
    """``boxes`` (None, nested list, numpy array or tensor) as a float32 ``(N, 4)`` tensor."""
    if boxes is None:
        return torch.zeros((0, 4), dtype=torch.float32)
    tensor = torch.as_tensor(boxes, dtype=torch.float32)
    if tensor.numel() == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    if tensor.dim() != 2 or tensor.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4) as [x, y, w, h], got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        raise ValueError("boxes contain NaN or infinite values")
    return tensor.clone()


def _size_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``; an int is a square."""
    if isinstance(size, int):
        height = width = size
    else:
        height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"output size must be positive, got {size}")
    return height, width


def _resampling(interpolation: str) -> Image.Resampling:
    try:
        return _RESAMPLING[interpolation]
    except KeyError:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(_RESAMPLING)}") from None


def _check_image(image: Any) -> Image.Image:
    if not isinstance(image, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(image).__name__}")
    return image


# ---------------------------------------------------------------------------------------------
# Geometry: resize, crops


def resize(
    image: Image.Image, boxes: Any, size: int | Sequence[int], interpolation: str = "bicubic"
) -> tuple[Image.Image, torch.Tensor]:
    """Stretch ``image`` to ``size`` (no aspect preservation, as X-VLM's test transform) and scale boxes."""
    image = _check_image(image)
    out_h, out_w = _size_hw(size)
    scale_x, scale_y = out_w / image.width, out_h / image.height
    boxes = as_boxes(boxes).double()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    return image.resize((out_w, out_h), _resampling(interpolation)), boxes.float()


def crop_and_resize(
    image: Image.Image,
    boxes: Any,
    crop: tuple[int, int, int, int],
    size: int | Sequence[int],
    min_visible: float = 0.5,
    interpolation: str = "bicubic",
) -> tuple[Image.Image, torch.Tensor, list[int]]:
    """Cut ``crop = (top, left, height, width)`` out of ``image``, resize it to ``size``, move the boxes.

    Each box is clipped to the crop. It is kept when it has positive size and its visible area is at
    least ``min_visible`` of its original area, dropped otherwise (also when it lies wholly outside).
    Returns ``(image, kept_boxes (K, 4), keep_index)``.
    """
    image = _check_image(image)
    if not 0.0 <= min_visible <= 1.0:
        raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
    top, left, crop_h, crop_w = crop
    if crop_h <= 0 or crop_w <= 0:
        raise ValueError(f"crop must have positive size, got {crop}")
    out_h, out_w = _size_hw(size)
    resized = image.resize((out_w, out_h), _resampling(interpolation), box=(left, top, left + crop_w, top + crop_h))
    boxes_out, keep_index = _crop_boxes(as_boxes(boxes), crop, (out_h, out_w), min_visible)
    return resized, boxes_out, keep_index


def _crop_boxes(
    boxes: torch.Tensor, crop: tuple[int, int, int, int], out_hw: tuple[int, int], min_visible: float
) -> tuple[torch.Tensor, list[int]]:
    """Clip ``boxes`` (N, 4) to ``crop``, drop the mostly hidden ones, rescale to ``out_hw`` pixels."""
    top, left, crop_h, crop_w = crop
    out_h, out_w = out_hw
    xyxy = boxes.double()  # float64: clipping and scaling add no rounding before the final float32 cast
    x0, y0 = xyxy[:, 0], xyxy[:, 1]
    x1, y1 = x0 + xyxy[:, 2], y0 + xyxy[:, 3]
    cx0, cx1 = x0.clamp(left, left + crop_w), x1.clamp(left, left + crop_w)
    cy0, cy1 = y0.clamp(top, top + crop_h), y1.clamp(top, top + crop_h)
    area = xyxy[:, 2] * xyxy[:, 3]
    visible = (cx1 - cx0).clamp(min=0) * (cy1 - cy0).clamp(min=0)
    keep = (area > 0) & (visible > 0) & (visible >= min_visible * area)
    scale_x, scale_y = out_w / crop_w, out_h / crop_h
    # Clamp again after scaling: float rounding must never push an edge outside the output image.
    nx0 = ((cx0 - left) * scale_x).clamp(0, out_w)
    ny0 = ((cy0 - top) * scale_y).clamp(0, out_h)
    nx1 = ((cx1 - left) * scale_x).clamp(0, out_w)
    ny1 = ((cy1 - top) * scale_y).clamp(0, out_h)
    moved = torch.stack([nx0, ny0, nx1 - nx0, ny1 - ny0], dim=1)[keep]  # (K, 4)
    # A box can shrink to zero width in float32 only if it was sub-pixel-thin; never return it.
    moved32 = moved.float()
    positive = (moved32[:, 2] > 0) & (moved32[:, 3] > 0)
    keep_index = [int(i) for i in torch.nonzero(keep).flatten()]
    keep_index = [i for i, ok in zip(keep_index, positive.tolist()) if ok]
    return moved32[positive], keep_index


def random_resized_crop_params(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """A crop ``(top, left, height, width)`` drawn with torchvision's RandomResizedCrop rule.

    Up to 10 tries: area fraction uniform in ``scale``, aspect ratio log-uniform in ``ratio``; the
    first crop that fits is placed uniformly. Otherwise a centre crop with the ratio clamped to
    ``ratio`` (the whole image when its own ratio is inside the range).
    """
    area = width * height
    log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_low, log_high))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = rng.randint(0, height - crop_h)
            left = rng.randint(0, width - crop_w)
            return top, left, crop_h, crop_w
    image_ratio = width / height
    if image_ratio < min(ratio):
        crop_w, crop_h = width, round(width / min(ratio))
    elif image_ratio > max(ratio):
        crop_w, crop_h = round(height * max(ratio)), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def random_resized_crop(
    image: Image.Image,
    boxes: Any,
    rng: random.Random,
    size: int | Sequence[int],
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    min_visible: float = 0.5,
    interpolation: str = "bicubic",
) -> tuple[Image.Image, torch.Tensor, list[int]]:
    """RandomResizedCrop that carries boxes: ``(image, kept_boxes, keep_index)``.

    The crop is the first thing drawn from ``rng`` (by :func:`random_resized_crop_params`); boxes
    follow :func:`crop_and_resize` (clipped, dropped below ``min_visible`` of their area).
    """
    image = _check_image(image)
    crop = random_resized_crop_params(image.width, image.height, rng, scale, ratio)
    return crop_and_resize(image, boxes, crop, size, min_visible, interpolation)


def crop_keeping_box(
    image: Image.Image,
    boxes: Any,
    target_index: int,
    rng: random.Random,
    size: int | Sequence[int],
    min_visible: float = 0.5,
    interpolation: str = "bicubic",
) -> tuple[Image.Image, torch.Tensor, list[int]]:
    """X-VLM's region-data crop: a random crop that contains box ``target_index`` entirely.

    Each crop edge is drawn uniformly between the image border and the target box's edge
    (``x0 ∈ [0, x]``, ``x1 ∈ [x + w, W]``, same for y), on integer pixels, from ``rng`` in the
    order left, top, right, bottom. The target is always in ``keep_index``; the other boxes are
    clipped/dropped as in :func:`crop_and_resize`. A target box that sticks out of the image is
    first clipped to it.
    """
    image = _check_image(image)
    all_boxes = as_boxes(boxes)
    if not 0 <= target_index < len(all_boxes):
        raise IndexError(f"target_index {target_index} out of range for {len(all_boxes)} boxes")
    x, y, w, h = all_boxes[target_index].double().tolist()
    x0, x1 = max(0.0, x), min(float(image.width), x + w)
    y0, y1 = max(0.0, y), min(float(image.height), y + h)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"target box {[x, y, w, h]} does not overlap the {image.width}x{image.height} image")
    left = rng.randint(0, math.floor(x0))
    top = rng.randint(0, math.floor(y0))
    right = rng.randint(min(math.ceil(x1), image.width), image.width)
    bottom = rng.randint(min(math.ceil(y1), image.height), image.height)
    crop = (top, left, bottom - top, right - left)
    # The target is fully inside the crop, so its visible share is 1 (of its in-image part): keep it
    # even when min_visible is judged against a box that partly left the image.
    others = all_boxes.clone()
    others[target_index] = torch.tensor([x0, y0, x1 - x0, y1 - y0], dtype=torch.float32)
    return crop_and_resize(image, others, crop, size, min_visible, interpolation)


# ---------------------------------------------------------------------------------------------
# Horizontal flip with left/right swapped in the paired text

# Whole-word pairs per language (lower case). Inflected forms are listed as their own pairs so the
# mapping stays a bijection and flipping twice restores the text. French "droit" (masculine) is not
# listed: its mirror "gauche" is gender-neutral, so no bijection exists.
_LEFT_RIGHT_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("left/right", "leftmost/rightmost", "leftward/rightward", "leftwards/rightwards"),
    "de": ("links/rechts", "linke/rechte", "linken/rechten", "linker/rechter", "linkes/rechtes", "linkem/rechtem"),
    "fr": ("gauche/droite", "gauches/droites"),
    "es": ("izquierda/derecha", "izquierdo/derecho", "izquierdas/derechas", "izquierdos/derechos"),
    "pt": ("esquerda/direita", "esquerdo/direito", "esquerdas/direitas", "esquerdos/direitos"),
    "id": ("kiri/kanan",),
}
# Chinese and Japanese write no spaces, so the characters are swapped wherever they stand, except in
# the compounds 左右/右左 ("left and right", also "about" in Chinese), which are their own mirror.
_CJK_LANGUAGES = ("zh", "ja")
_CJK_PATTERN = re.compile("左右|右左|左|右")


def _word_swapper(pairs: tuple[str, ...]) -> tuple[re.Pattern[str], dict[str, str]]:
    """A regex over the words of ``"left/right"`` pairs, and the word -> mirrored word map."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        left, right = pair.split("/")
        mapping[left], mapping[right] = right, left
    # Longest first so that "leftmost" is not read as "left"; \b makes "leftover" no match at all.
    words = sorted(mapping, key=lambda word: (-len(word), word))
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, words)) + r")\b", re.IGNORECASE)
    return pattern, mapping


_SWAPPERS = {lang: _word_swapper(pairs) for lang, pairs in _LEFT_RIGHT_WORDS.items()}
FLIP_TEXT_LANGUAGES: tuple[str, ...] = (*_LEFT_RIGHT_WORDS, *_CJK_LANGUAGES)


def _match_case(template: str, word: str) -> str:
    """``word`` written in the case pattern of ``template`` (lower, Title or UPPER)."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[0].isupper():
        return word[0].upper() + word[1:]
    return word


def swap_left_right(text: str, lang: str = "en") -> str:
    """Swap the words for left and right in ``text`` (whole words, case kept), for a mirrored image."""
    if lang in _CJK_LANGUAGES:
        return _CJK_PATTERN.sub(lambda m: {"左": "右", "右": "左"}.get(m.group(0), m.group(0)), text)
    if lang not in _SWAPPERS:
        raise ValueError(f"no left/right word list for language {lang!r}; known: {', '.join(FLIP_TEXT_LANGUAGES)}")
    pattern, mapping = _SWAPPERS[lang]
    return pattern.sub(lambda m: _match_case(m.group(0), mapping[m.group(0).lower()]), text)


def horizontal_flip(
    image: Image.Image, boxes: Any, text: str | None = None, lang: str = "en"
) -> tuple[Image.Image, torch.Tensor, str | None]:
    """Mirror ``image`` left-right; boxes become ``x' = W - x - w``; left/right words in ``text`` swap.

    X-VLM keeps image and text consistent under flips (its ``careful_hflip`` skips the flip when the
    caption says left/right); swapping the words keeps the sample and its augmentation instead.
    """
    image = _check_image(image)
    flipped_boxes = as_boxes(boxes)
    flipped_boxes[:, 0] = image.width - flipped_boxes[:, 0] - flipped_boxes[:, 2]
    flipped_text = swap_left_right(text, lang) if text is not None else None
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), flipped_boxes, flipped_text


def random_horizontal_flip(
    image: Image.Image, boxes: Any, text: str | None, rng: random.Random, p: float = 0.5, lang: str = "en"
) -> tuple[Image.Image, torch.Tensor, str | None]:
    """:func:`horizontal_flip` with probability ``p`` (one draw from ``rng``); otherwise unchanged."""
    if rng.random() < p:
        return horizontal_flip(image, boxes, text, lang)
    return _check_image(image), as_boxes(boxes), text


# ---------------------------------------------------------------------------------------------
# RandomAugment (ALBEF/X-VLM flavour): N ops drawn with replacement, each applied with p = 0.5

_MAX_LEVEL = 10.0
_FILL = (128, 128, 128)  # grey fill for pixels moved in by geometric ops
COLOR_OPS: tuple[str, ...] = ("identity", "autocontrast", "equalize", "brightness", "sharpness")
GEOMETRIC_OPS: tuple[str, ...] = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")


def sample_rand_augment(
    rng: random.Random, num_ops: int = 2, magnitude: float = 7, geometric: bool = True
) -> list[tuple[str, float]]:
    """Draw a RandomAugment plan: a list of ``(op, argument)`` to apply in order.

    Arguments follow ALBEF's level mapping at ``magnitude`` out of 10: enhance factor
    ``0.1 + 1.8 m/10``, shear ``0.3 m/10``, translate ``10 m/10`` pixels, rotate ``30 m/10`` degrees,
    the geometric ones with a random sign. Sharing one plan across video frames keeps them consistent.
    """
    ops = COLOR_OPS + GEOMETRIC_OPS if geometric else COLOR_OPS
    level = magnitude / _MAX_LEVEL
    plan = []
    for _ in range(num_ops):
        op = ops[rng.randrange(len(ops))]
        applied = rng.random() < 0.5
        sign = -1.0 if rng.random() < 0.5 else 1.0
        if not applied:
            continue
        if op in ("brightness", "sharpness"):
            plan.append((op, 0.1 + 1.8 * level))
        elif op.startswith("shear"):
            plan.append((op, sign * 0.3 * level))
        elif op.startswith("translate"):
            plan.append((op, sign * 10.0 * level))
        elif op == "rotate":
            plan.append((op, sign * 30.0 * level))
        else:
            plan.append((op, 0.0))
    return plan


def apply_rand_augment(image: Image.Image, plan: list[tuple[str, float]]) -> Image.Image:
    """Apply a plan from :func:`sample_rand_augment` to an RGB image."""
    image = _check_image(image).convert("RGB")
    for op, arg in plan:
        if op == "autocontrast":
            image = ImageOps.autocontrast(image)
        elif op == "equalize":
            image = ImageOps.equalize(image)
        elif op == "brightness":
            image = ImageEnhance.Brightness(image).enhance(arg)
        elif op == "sharpness":
            image = ImageEnhance.Sharpness(image).enhance(arg)
        elif op == "rotate":
            image = image.rotate(arg, resample=Image.Resampling.BILINEAR, fillcolor=_FILL)
        elif op != "identity":
            image = image.transform(image.size, Image.Transform.AFFINE, _affine(op, arg), fillcolor=_FILL)
    return image


def _affine(op: str, arg: float) -> tuple[float, float, float, float, float, float]:
    """Inverse affine coefficients (output → input pixel) for shear/translate ops."""
    if op == "shear_x":
        return (1.0, arg, 0.0, 0.0, 1.0, 0.0)
    if op == "shear_y":
        return (1.0, 0.0, 0.0, arg, 1.0, 0.0)
    if op == "translate_x":
        return (1.0, 0.0, -arg, 0.0, 1.0, 0.0)
    if op == "translate_y":
        return (1.0, 0.0, 0.0, 0.0, 1.0, -arg)
    raise ValueError(f"unknown RandomAugment op {op!r}")


def rand_augment(
    image: Image.Image, rng: random.Random, num_ops: int = 2, magnitude: float = 7, geometric: bool = True
) -> Image.Image:
    """ALBEF's RandomAugment(``num_ops``, ``magnitude``); ``geometric=False`` for images with boxes."""
    return apply_rand_augment(image, sample_rand_augment(rng, num_ops, magnitude, geometric))


# ---------------------------------------------------------------------------------------------
# Tensors


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``(3, H, W)`` float32 in ``[0, 1]`` (any PIL mode is converted to RGB first)."""
    array = np.asarray(_check_image(image).convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(tensor: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(tensor - mean) / std`` per channel; ``tensor`` is ``(..., 3, H, W)``. Returns a new tensor."""
    if len(mean) != tensor.shape[-3] or len(std) != tensor.shape[-3]:
        raise ValueError(f"mean/std need {tensor.shape[-3]} channels, got {len(mean)}/{len(std)}")
    mean_t = torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1)
    return (tensor - mean_t) / std_t


# ---------------------------------------------------------------------------------------------
# Whole pipelines

TRANSFORM_KINDS: tuple[str, ...] = ("pretrain", "finetune", "test")


class ImageTransform:
    """One image pipeline, called as ``transform(image, boxes, text) -> (tensor, boxes, text, keep_index)``.

    * ``pretrain`` / ``finetune``: random resized crop (scale (0.2, 1) / (0.5, 1), bicubic) — or, with
      ``target_index``, X-VLM's crop that keeps that box whole — then a random horizontal flip that
      swaps left/right in ``text``, then RandomAugment(2, 7) (colour ops only when boxes are given).
    * ``test``: bicubic stretch to ``(resolution, resolution)``; every box is kept.

    ``tensor`` is ``(3, resolution, resolution)`` normalised with ``mean``/``std``; ``boxes`` are
    ``(K, 4)`` output pixels; ``keep_index`` lists the input boxes that survived. Randomness comes
    from the ``rng`` passed per call, else from the transform's own ``random.Random(seed)``.
    ``hflip=False`` is the VQA setting (answers may say left/right and are not rewritten).
    """

    def __init__(
        self,
        kind: str,
        resolution: int,
        mean: Sequence[float] = XVLM_MEAN,
        std: Sequence[float] = XVLM_STD,
        *,
        hflip: bool = True,
        augment: bool = True,
        min_visible: float = 0.5,
        seed: int = 0,
    ) -> None:
        if kind not in TRANSFORM_KINDS:
            raise ValueError(f"unknown transform kind {kind!r}; use one of {', '.join(TRANSFORM_KINDS)}")
        self.kind = kind
        self.resolution = resolution
        self.mean, self.std = tuple(mean), tuple(std)
        self.hflip, self.augment, self.min_visible = hflip, augment, min_visible
        self.rng = random.Random(seed)

    def __repr__(self) -> str:
        return (
            f"ImageTransform(kind={self.kind!r}, resolution={self.resolution}, mean={self.mean}, std={self.std}, "
            f"hflip={self.hflip}, augment={self.augment}, min_visible={self.min_visible})"
        )

    def __call__(
        self,
        image: Image.Image,
        boxes: Any = None,
        text: str | None = None,
        *,
        rng: random.Random | None = None,
        lang: str = "en",
        target_index: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, str | None, list[int]]:
        if self.kind == "test":
            image, out_boxes = resize(image, boxes, self.resolution)
            return self._finish(image), out_boxes, text, list(range(len(out_boxes)))
        rng = rng if rng is not None else self.rng
        has_boxes = len(as_boxes(boxes)) > 0
        if target_index is None:
            scale = _CROP_SCALE[self.kind]
            image, out_boxes, keep = random_resized_crop(
                image, boxes, rng, self.resolution, scale, min_visible=self.min_visible
            )
        else:
            image, out_boxes, keep = crop_keeping_box(
                image, boxes, target_index, rng, self.resolution, min_visible=self.min_visible
            )
        if self.hflip:
            image, out_boxes, text = random_horizontal_flip(image, out_boxes, text, rng, lang=lang)
        if self.augment:
            image = rand_augment(image, rng, geometric=not has_boxes)
        return self._finish(image), out_boxes, text, keep

    def _finish(self, image: Image.Image) -> torch.Tensor:
        return normalize(to_tensor(image), self.mean, self.std)  # (3, H, W)


def build_transform(
    kind: str,
    resolution: int,
    mean: Sequence[float] = XVLM_MEAN,
    std: Sequence[float] = XVLM_STD,
    **options: Any,
) -> ImageTransform:
    """The X-VLM pipeline for ``kind`` ∈ pretrain | finetune | test (see :class:`ImageTransform`)."""
    return ImageTransform(kind, resolution, mean, std, **options)


# ---------------------------------------------------------------------------------------------
# Video


def sample_frame_ids(num_frames: int, num_segments: int, rng: random.Random | None = None) -> list[int]:
    """Pick ``num_segments`` frame indices from a clip of ``num_frames``, one per equal segment.

    Segment ``k`` covers ``[k·n/S, (k+1)·n/S)``. Training (``rng`` given): a uniformly random frame
    inside the segment. Test (``rng`` None): the frame at the segment's middle, deterministic. When
    the clip is shorter than the request, segments narrower than a frame reuse the frame they fall
    on, so frames repeat. The result is sorted (non-decreasing), in ``[0, num_frames)``.
    """
    if num_frames <= 0 or num_segments <= 0:
        raise ValueError(f"need a positive number of frames and segments, got {num_frames} and {num_segments}")
    frame_ids = []
    for k in range(num_segments):
        start, end = k * num_frames / num_segments, (k + 1) * num_frames / num_segments
        if rng is None:
            frame_ids.append(min(int((start + end) / 2), num_frames - 1))
            continue
        first, last = math.ceil(start), math.ceil(end) - 1  # the frames whose index lies in [start, end)
        frame_ids.append(rng.randint(first, last) if first <= last else math.floor(start))
    return frame_ids


def video_transform(
    frames: Sequence[Image.Image],
    resolution: int,
    rng: random.Random | None = None,
    *,
    kind: str = "pretrain",
    mean: Sequence[float] = XVLM_MEAN,
    std: Sequence[float] = XVLM_STD,
    hflip: bool = True,
    augment: bool = True,
    text: str | None = None,
    lang: str = "en",
) -> tuple[torch.Tensor, str | None]:
    """Transform the frames of one clip with one shared crop, flip and RandomAugment plan.

    Returns ``(video (T, 3, resolution, resolution), text)``; ``text`` has left/right swapped when
    the clip was flipped (clip captions such as "moves left" must follow the mirror). ``kind='test'``
    is a plain bicubic resize; training kinds need ``rng``.
    """
    if kind not in TRANSFORM_KINDS:
        raise ValueError(f"unknown transform kind {kind!r}; use one of {', '.join(TRANSFORM_KINDS)}")
    if not frames:
        raise ValueError("a video needs at least one frame")
    width, height = _check_image(frames[0]).size
    if any(_check_image(frame).size != (width, height) for frame in frames):
        raise ValueError(f"all frames of a clip must have the same size; the first is {width}x{height}")
    if kind == "test":
        resized = [resize(frame, None, resolution)[0] for frame in frames]
        return torch.stack([normalize(to_tensor(frame), mean, std) for frame in resized]), text
    if rng is None:
        raise ValueError(f"video_transform(kind={kind!r}) needs an rng")
    crop = random_resized_crop_params(width, height, rng, _CROP_SCALE[kind])
    flip = hflip and rng.random() < 0.5
    plan = sample_rand_augment(rng) if augment else []
    tensors = []
    for frame in frames:
        image = crop_and_resize(frame, None, crop, resolution)[0]
        if flip:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        tensors.append(normalize(to_tensor(apply_rand_augment(image, plan)), mean, std))
    if flip and text is not None:
        text = swap_left_right(text, lang)
    return torch.stack(tensors), text  # (T, 3, H, W)
