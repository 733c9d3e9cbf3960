"""X²-VLM pre-training data: image–text, region–text and video–text samples, batches and streams.

The files are X-VLM pre-training JSON lines (xvlm.md §3.1, docs/formats.md), read once at
construction through the validating readers of :mod:`grainvl.data.formats.xvlm_pretrain`; images and
video frames are decoded lazily, per sample, with Pillow.

* :class:`ImageTextDataset`, :class:`RegionTextDataset`, :class:`VideoTextDataset` are map-style
  (index → sample dict). Every random choice of a sample is drawn from two ``random.Random`` streams
  derived from ``(seed, kind, epoch, index)`` — one for the picture (crop, flip, RandAugment, frame
  and region selection), one for the text (caption choice, masking) — so a sample is the same
  whichever process, thread or resume point produces it.
* ``collate_*`` turn a list of samples into the batch dicts the pre-training task consumes.
* :func:`build_pretrain_loaders` wraps each dataset in a :class:`PretrainStream`: an endless,
  rank-sharded, per-epoch reshuffled batch iterator with ``state_dict``/``load_state_dict`` for an
  exact resume.
* :func:`eval_image_text` and :func:`eval_grounding` build the zero-shot retrieval and RefCOCO+
  grounding evaluation sets ("test" transform, no masking).

Choices that differ from the official code (zengyan-97/X2-VLM ``dataset/pretrain_dataset.py``):

* Text is padded to the longest text of the batch, not to ``max_tokens``: every position past the
  longest text is padding that attention ignores, so the shorter tensor gives the same losses with
  less work. ``masked_pos``/``masked_ids`` keep the fixed width ``max_masks``.
* A region batch never duplicates texts. The official collate always returns exactly
  ``regions.batch_size`` texts and re-samples (duplicates) texts when fewer are available, which
  puts false negatives into ITC; here a batch holds at most ``region_batch_size`` texts and, when
  fewer exist, just the real ones. Consumers that all-gather region features across ranks must
  therefore handle a per-rank text count that varies. Images whose texts were all sub-sampled
  away are dropped from the batch (the official code still runs the ViT on them).
* A horizontal flip swaps the words for left and right in every caption of the sample (the
  official code flips without rewriting; its ``careful_hflip`` only skips the flip for region data).
  ``careful_hflip`` keeps that behaviour — no flip when a caption mentions left/right — for all three
  data kinds. A caption in a language without a left/right word list is never flipped.
* The frames of one clip share one crop, flip and RandAugment plan (:func:`video_transform`); the
  official code transforms each frame independently, so its frames of one clip disagree.
* Region kept-or-dropped uses the official strict test (visible part ``>`` ``min_perc_in_image`` of
  the box). The whole-image caption counts against ``max_regions`` as in the official code.

Streams are plain in-process iterators rather than ``torch.utils.data.DataLoader``: the whole state
of a stream is two integers (epoch, position), so resuming is exact and cheap, and a sample never
depends on worker scheduling. Decoding 96–224 px JPEGs is cheap; ``num_threads`` decodes the samples
of one batch in a thread pool (Pillow releases the GIL while decoding and resizing).
"""

from __future__ import annotations

import base64
import binascii
import copy
import io
import random
import threading
import zlib
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from grainvl.data.formats import albef, validate, xvlm_pretrain
from grainvl.data.iterators import Pick, ShardedStream
from grainvl.data.layout import declared_files, expected_file
from grainvl.data.masking import TextMaskingGenerator, pad_masks, pre_caption
from grainvl.data.region import box_patch_mask, box_target_cxcywh
from grainvl.data.transforms import (
    FLIP_TEXT_LANGUAGES,
    XVLM_MEAN,
    XVLM_STD,
    ImageTransform,
    build_transform,
    crop_keeping_box,
    horizontal_flip,
    normalize,
    rand_augment,
    resize,
    sample_frame_ids,
    swap_left_right,
    to_tensor,
    video_transform,
)
from grainvl.errors import BadRecords, DataError

Record = dict[str, Any]
Sample = dict[str, Any]

SKIP_CLIP_CAPTIONS = frozenset({"[Music]"})  # HowTo100M clips with no speech (official skip set)


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass
class PretrainDataConfig:
    """Pre-training data settings; defaults are the X²-VLM base 4M config (xvlm.md §1.8)."""

    resolution: int = 224  # image_res: images are stretched to resolution × resolution
    patch_size: int = 16  # ViT patch; region patch masks have 1 + (resolution / patch_size)² entries
    max_tokens: int = 40  # [CLS] + at most max_tokens - 2 word pieces + [SEP]
    max_words: int = 40  # pre_caption truncation (X²-VLM sets max_words = max_tokens)
    mask_prob: float = 0.5
    max_masks: int = 12
    skipgram_prb: float = 0.2
    skipgram_size: int = 3
    mask_whole_word: bool = True
    image_batch_size: int = 128  # images.batch_size (per rank)
    region_batch_size: int = 128  # regions.batch_size: most texts in one region batch (per rank)
    max_images_per_region_batch: int = 50  # regions.max_images: images drawn per region batch
    max_regions: int = 5  # texts per region image, the whole-image caption included
    min_perc_in_image: float = 0.5  # a region is kept when more than this share of it is in the crop
    video_batch_size: int = 40
    frame_len: int = 3  # frames sampled per clip
    min_frames_before_sampling: int = 8  # continuous clips are joined until they hold this many frames
    mean: tuple[float, float, float] = XVLM_MEAN
    std: tuple[float, float, float] = XVLM_STD
    careful_hflip: bool = False  # no flip when a caption mentions left/right (instead of swapping words)
    augment: bool = True  # RandAugment(2, 7) in training transforms
    language: str | None = None  # for {lang: caption} dicts: this language, else a random one per sample
    caption_language: str = "en"  # language of plain (non-dict) captions, for left/right swapping

    def __post_init__(self) -> None:
        if self.resolution <= 0 or self.patch_size <= 0 or self.resolution % self.patch_size:
            raise ValueError(
                f"resolution {self.resolution} must be a positive multiple of patch_size {self.patch_size}"
            )
        if self.max_tokens < 2 or self.max_words < 1 or self.max_masks < 1:
            raise ValueError("max_tokens must be >= 2 and max_words, max_masks >= 1")
        positive = ("image_batch_size", "region_batch_size", "max_images_per_region_batch", "max_regions")
        for name in (*positive, "video_batch_size", "frame_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.min_perc_in_image < 1.0:
            raise ValueError(f"min_perc_in_image must be in [0, 1), got {self.min_perc_in_image}")

    @property
    def num_patches(self) -> int:
        """N, the number of patch tokens: (resolution / patch_size)²."""
        return (self.resolution // self.patch_size) ** 2


# ---------------------------------------------------------------------------------------------
# Captions and text


def choose_caption(
    value: Any, rng: random.Random, language: str | None = None, default_language: str = "en"
) -> tuple[str, str]:
    """One caption and its language from a caption field: ``str | [str] | {lang: str | [str]}``.

    Lists are paraphrases (one is drawn); dicts hold translations (``language`` if given, else a
    random one, like the official ``language_chosen``).
    """
    lang = default_language
    if isinstance(value, dict):
        lang = language if language is not None else rng.choice(list(value))
        if lang not in value:
            raise KeyError(f"no caption in language {lang!r}; the record has {sorted(value)}")
        value = value[lang]
    if isinstance(value, list):
        value = rng.choice(value)
    return value, lang


def all_captions(value: Any, language: str | None = None, default_language: str = "en") -> list[tuple[str, str]]:
    """Every caption of a caption field as ``(text, language)`` (one language when ``language`` is set)."""
    if isinstance(value, dict):
        chosen = [language] if language is not None else list(value)
        return [(text, lang) for lang in chosen for text in _as_list(value[lang])]
    return [(text, default_language) for text in _as_list(value)]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def mentions_left_right(text: str, lang: str) -> bool:
    """True when ``text`` holds a left/right word that a mirror would have to swap."""
    return lang in FLIP_TEXT_LANGUAGES and swap_left_right(text, lang) != text


def may_flip(texts: Sequence[tuple[str, str]], careful_hflip: bool) -> bool:
    """Whether a picture paired with ``texts`` may be mirrored: every language has a left/right word
    list (so the texts can follow the mirror), and with ``careful_hflip`` no text mentions left/right."""
    if any(lang not in FLIP_TEXT_LANGUAGES for _, lang in texts):
        return False
    return not (careful_hflip and any(mentions_left_right(text, lang) for text, lang in texts))


@dataclass(frozen=True)
class EncodedText:
    """One tokenised caption with its MLM masking (unpadded lists of token ids / positions)."""

    caption: str  # the text after pre_caption
    ids: list[int]  # [CLS] tokens [SEP]
    ids_masked: list[int]  # ids with the masked positions replaced ([MASK] / random / kept)
    masked_pos: list[int]  # positions into ids, at most max_masks
    masked_labels: list[int]  # ids[masked_pos]


class PretrainText:
    """pre_caption → WordPiece → ``[CLS] tokens[:max_tokens-2] [SEP]`` → MLM masking (xvlm.md §2.3)."""

    def __init__(self, tokenizer: Any, cfg: PretrainDataConfig) -> None:
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.cls_id, self.sep_id, self.pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
        if None in (self.cls_id, self.sep_id, self.pad_id):
            raise ValueError("the tokenizer needs [CLS]/<s>, [SEP]/</s> and [PAD]/<pad> tokens")
        self._lock = threading.Lock()
        self.masker = TextMaskingGenerator(
            tokenizer,
            mask_prob=cfg.mask_prob,
            max_masks=cfg.max_masks,
            skipgram_prb=cfg.skipgram_prb,
            skipgram_size=cfg.skipgram_size,
            mask_whole_word=cfg.mask_whole_word,
        )

    def token_ids(self, text: str) -> tuple[str, list[int]]:
        """``(pre_caption(text), [CLS] ids [SEP])`` without masking."""
        caption = pre_caption(text, self.cfg.max_words)
        with self._lock:  # a Hugging Face tokenizer is not documented as thread-safe
            pieces = self.tokenizer.encode(caption, add_special_tokens=False)
        return caption, [self.cls_id, *pieces[: self.cfg.max_tokens - 2], self.sep_id]

    def encode(self, text: str, rng: random.Random) -> EncodedText:
        caption, ids = self.token_ids(text)
        ids_masked, masked_pos, masked_labels = self._mask(ids, rng)
        return EncodedText(caption, ids, list(ids_masked), list(masked_pos), list(masked_labels))

    def _mask(self, ids: list[int], rng: random.Random) -> tuple[list[int], list[int], list[int]]:
        # A shallow copy carrying the sample's own stream: masking is reproducible per sample and
        # thread-safe (the vocabulary tables are shared, not copied).
        masker = copy.copy(self.masker)
        masker.rng = rng
        return masker(ids)


def _pad_rows(rows: Sequence[Sequence[int]], length: int, value: int) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def text_batch(texts: Sequence[EncodedText], pad_id: int, max_masks: int) -> dict[str, torch.Tensor]:
    """Stack encoded texts, padded to the longest one (L) and to ``max_masks`` masks (M).

    Returns ``text_ids``, ``text_atts``, ``text_ids_masked`` (T, L) long and ``masked_pos``,
    ``masked_ids`` (T, M) long (padding: position 0, label -100).
    """
    length = max(len(t.ids) for t in texts)
    padded = [pad_masks(t.masked_pos, t.masked_labels, max_masks) for t in texts]
    return {
        "text_ids": _pad_rows([t.ids for t in texts], length, pad_id),  # (T, L)
        "text_atts": _pad_rows([[1] * len(t.ids) for t in texts], length, 0),  # (T, L)
        "text_ids_masked": _pad_rows([t.ids_masked for t in texts], length, pad_id),  # (T, L)
        "masked_pos": torch.tensor([list(pos) for pos, _ in padded], dtype=torch.long),  # (T, M)
        "masked_ids": torch.tensor([list(labels) for _, labels in padded], dtype=torch.long),  # (T, M)
    }


# ---------------------------------------------------------------------------------------------
# Reading: records with their line numbers, images decoded on demand


def _read_numbered(
    path: Path, validator: validate.Validator, bad: BadRecords | None, lines: bool = True
) -> tuple[list[Record], list[str]]:
    """Validated records plus each one's position ("line 7" / "index 3") for error messages.

    The format readers drop positions, so this runs their validator through the same record loop
    and notes the position of every record that passes.
    """
    positions: list[str] = []
    images = validate.ImageChecker(path, None)  # images are decoded lazily, per sample

    def check(record: Any, where: str) -> None:
        validator(record, path, where, images)
        positions.append(where)

    read = validate.read_jsonl_records if lines else validate.read_json_records
    valid = read(path, check, bad)
    return valid, positions


def _decode(data: bytes | Path) -> Image.Image:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return to_rgb(image)  # convert() forces the full decode: a truncated file fails here


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB of any PIL image; 16- and 32-bit greyscale (PNG mode I;16, I) is scaled to 8 bits first.

    PIL's ``convert("RGB")`` clips such pixels at 255, so a 16-bit PNG would come out pure white.
    """
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = float(values.max()) if values.size else 0.0
        # 16-bit data (PNG I;16, or mode I holding 16-bit values) spans 0..65535; 8-bit values pass unscaled.
        top = 65535.0 if image.mode.startswith("I;16") or 255 < peak <= 65535 else max(peak, 255.0)
        eight = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        return Image.fromarray(eight, mode="L").convert("RGB")
    return image.convert("RGB")


def open_rgb(
    value: str,
    root: Path,
    is_path: bool,
    annotation: Path,
    where: str,
    what: str = "image",
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """Decode a path (relative to ``root``, confined to it) or a base64 string as an RGB image.

    A missing or undecodable image, a path outside ``root`` (:func:`validate.confined_path`) and, with
    ``size``, an image whose real ``(width, height)`` is not the record's, are DataErrors naming the
    annotation file, the record and the image.
    """
    label = str(root / value) if is_path else f"(base64, {len(value)} chars)"
    try:
        source = validate.confined_path(root, value, annotation, where) if is_path else None
        picture = _decode(source if source is not None else base64.b64decode(value, validate=True))
    except FileNotFoundError:
        raise DataError(annotation, where, f"{what} not found: {label}") from None
    except IsADirectoryError:
        raise DataError(annotation, where, f"{what} is a directory, not a file: {label}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, binascii.Error) as e:
        raise DataError(annotation, where, f"corrupt {what} {label}: {e}") from None
    validate.check_size(picture.size, size, value if is_path else label, annotation, where)
    return picture


def flip_transforms(kind: str, cfg: PretrainDataConfig) -> tuple[ImageTransform, ImageTransform]:
    """``(transform, transform_no_flip)`` of ``kind``: the second never mirrors, for text that says left/right."""
    return (
        build_transform(kind, cfg.resolution, cfg.mean, cfg.std, augment=cfg.augment),
        build_transform(kind, cfg.resolution, cfg.mean, cfg.std, augment=cfg.augment, hflip=False),
    )


def _caption_key(record: Record) -> str | None:
    return next((key for key in ("caption", "desc") if key in record), None)


class _LineDataset(ABC):
    """Shared part of the three pre-training datasets: records, image ids, rngs, text, images.

    Args:
        jsonl_path: the JSON-lines file, or several (the shards of an official ``train_file`` list),
            validated line by line at construction; their records are concatenated in order.
        root: the folder image and frame paths are relative to (a world's root, or ``image_root``).
        tokenizer: a Hugging Face tokenizer with [CLS]/[SEP]/[PAD]/[MASK] (or their RoBERTa forms).
        cfg: the data settings.
        train: random augmentation; False gives the deterministic "test" pictures.
        seed: base of every per-sample random stream.
        bad: a ``BadRecords(skip_bad=True)`` skips malformed lines and counts them; an image that
            fails to decode at sample time always raises (skipping it would desynchronise ranks).
    """

    kind = "lines"
    has_test_mode = True

    def __init__(
        self,
        jsonl_path: str | Path | Sequence[str | Path],
        root: str | Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        train: bool = True,
        seed: int = 0,
        bad: BadRecords | None = None,
    ) -> None:
        if not train and not self.has_test_mode:
            raise ValueError(f"{type(self).__name__} is training data only (its recipe is random by design)")
        paths = [jsonl_path] if isinstance(jsonl_path, (str, Path)) else list(jsonl_path)
        if not paths:
            raise ValueError(f"{type(self).__name__}: no files given")
        self.paths = [Path(p) for p in paths]
        self.path, self.root = self.paths[0], Path(root)
        self.cfg, self.train, self.seed = cfg, train, seed
        self.text = PretrainText(tokenizer, cfg)
        self.records, self.positions, self.file_of = [], [], []
        for k, path in enumerate(self.paths):
            records, positions = _read_numbered(path, self._validator(), bad)
            self.records += records
            self.positions += positions
            self.file_of += [k] * len(records)
        self.image_ids = self._image_ids()
        self._setup()

    def _setup(self) -> None:
        """Per-kind state built once the records are read (a hook, so no subclass repeats ``__init__``)."""
        return None  # most kinds need nothing more

    @abstractmethod
    def _validator(self) -> validate.Validator:
        """The format validator of this data kind's lines."""

    def _image_ids(self) -> list[int]:
        """Index of each record's image among the distinct images (lines naming one image share it)."""
        ids: dict[str, int] = {}
        return [ids.setdefault(record.get("image") or record.get("binary", ""), len(ids)) for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def at(self, index: int) -> tuple[Path, str]:
        """``(file, position)`` of record ``index``, for error messages."""
        return self.paths[self.file_of[index]], self.positions[index]

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index, 0)  # evaluation and inspection: the epoch-0 sample

    def sample_rngs(self, index: int, epoch: int) -> tuple[random.Random, random.Random]:
        """``(vision_rng, text_rng)`` of sample ``index`` in ``epoch`` (string seeds hash with SHA-512)."""
        key = f"grainvl:pretrain:{self.kind}:{self.seed}:{epoch}:{index}"
        return random.Random(key + ":vision"), random.Random(key + ":text")

    def sample(self, index: int, epoch: int = 0) -> Sample:
        if not 0 <= index < len(self.records):
            raise IndexError(f"index {index} out of range for {len(self.records)} records of {self.path}")
        return self.make_sample(index, *self.sample_rngs(index, epoch))

    @abstractmethod
    def make_sample(self, index: int, vision_rng: random.Random, text_rng: random.Random) -> Sample:
        """Sample ``index`` with all randomness from the two given streams (pass your own to control it)."""

    @abstractmethod
    def collate(self, samples: list[Sample], rng: random.Random) -> dict[str, torch.Tensor]:
        """The batch dict of ``samples``; ``rng`` serves any batch-level choice."""

    def _encode(self, text: str, rng: random.Random, index: int) -> EncodedText:
        try:
            return self.text.encode(text, rng)
        except ValueError as e:  # pre_caption rejects captions that clean to nothing
            raise DataError(*self.at(index), f"bad caption {text!r}: {e}") from None

    def _open_image(self, index: int) -> Image.Image:
        """The record's picture; a record that states ``width``/``height`` (region lines) must match it."""
        record, (path, where) = self.records[index], self.at(index)
        size = validate.declared_size(record)
        if "image" in record:
            return open_rgb(record["image"], self.root, True, path, where, size=size)
        return open_rgb(record["binary"], self.root, False, path, where, size=size)

    def _choose(self, value: Any, rng: random.Random, index: int) -> tuple[str, str]:
        try:
            return choose_caption(value, rng, self.cfg.language, self.cfg.caption_language)
        except KeyError as e:  # a {lang: caption} dict without the configured language
            raise DataError(*self.at(index), str(e.args[0])) from None


# ---------------------------------------------------------------------------------------------
# Image–text


class ImageTextDataset(_LineDataset):
    """Image–caption lines → ``{"image": (3, R, R), "text": EncodedText, "image_id": int}``.

    Training: random caption, then the "pretrain" transform (random resized crop, scale (0.2, 1);
    flip that swaps left/right words; RandAugment(2, 7)); otherwise the "test" resize.
    """

    kind = "image"

    def _setup(self) -> None:
        self.transform, self.transform_no_flip = flip_transforms("pretrain" if self.train else "test", self.cfg)

    def _validator(self) -> validate.Validator:
        return xvlm_pretrain.check_image_text

    def make_sample(self, index: int, vision_rng: random.Random, text_rng: random.Random) -> Sample:
        record = self.records[index]
        text, lang = self._choose(record[_caption_key(record)], text_rng, index)
        transform = self.transform if may_flip([(text, lang)], self.cfg.careful_hflip) else self.transform_no_flip
        image, _, text, _ = transform(self._open_image(index), None, text, rng=vision_rng, lang=lang)
        return {"image": image, "text": self._encode(text, text_rng, index), "image_id": self.image_ids[index]}

    def collate(self, samples: list[Sample], rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        return collate_image(samples, self.text.pad_id, self.cfg.max_masks)


def collate_image(samples: Sequence[Sample], pad_id: int, max_masks: int) -> dict[str, torch.Tensor]:
    """Image batch: ``image`` (B, 3, R, R), text fields (B, L) / (B, M), ``image_ids`` (B,) long."""
    batch = {"image": torch.stack([s["image"] for s in samples])}  # (B, 3, R, R)
    batch.update(text_batch([s["text"] for s in samples], pad_id, max_masks))
    batch["image_ids"] = torch.tensor([s["image_id"] for s in samples], dtype=torch.long)  # (B,)
    return batch


# ---------------------------------------------------------------------------------------------
# Region–text (xvlm.md §2.4)


class RegionTextDataset(_LineDataset):
    """Region lines → one image and up to ``max_regions`` texts about it (xvlm.md §2.4 steps 1–7).

    Sample: ``image`` (3, R, R); ``texts`` list of EncodedText (the whole-image caption first when
    the line has one); ``region_atts`` (K, 1+N) float patch masks; ``region_boxes`` (K, 4) float
    ``(cx, cy, w, h) / R``; ``boxes`` (K, 4) float ``[x, y, w, h]`` output pixels; ``is_image`` (K,)
    bool; ``flipped`` bool; ``image_id`` int. Training only: the recipe is random by design.
    """

    kind = "region"
    has_test_mode = False

    def _validator(self) -> validate.Validator:
        return xvlm_pretrain.check_region

    def make_sample(self, index: int, vision_rng: random.Random, text_rng: random.Random) -> Sample:
        record, cfg = self.records[index], self.cfg
        elems = record["elems"]
        # Step 4's caption is drawn first: its language decides whether the picture may be mirrored.
        image_caption = self._choose(record["caption"], text_rng, index) if "caption" in record else None
        flip_allowed = may_flip(self._record_texts(record), cfg.careful_hflip)
        image, boxes, keep, flipped = self._crop_flip_augment(index, vision_rng, flip_allowed)
        # Step 5: shuffle the elements and keep, in that order, those the crop shows enough of.
        order = list(range(len(elems)))
        vision_rng.shuffle(order)
        box_of = dict(zip(keep, boxes))
        budget = cfg.max_regions - (image_caption is not None)
        chosen = [i for i in order if i in box_of][: max(budget, 0)]

        texts, region_boxes = [], []
        if image_caption is not None:
            texts.append(self._flip_text(image_caption, flipped))
        for i in chosen:
            caption, lang = self._choose(elems[i]["caption"], text_rng, index)
            if "attributes" in elems[i]:
                caption = self._choose(elems[i]["attributes"], text_rng, index)[0] + " " + caption
            texts.append(self._flip_text((caption, lang), flipped))
            region_boxes.append(box_of[i])
        encoded = [self._encode(text, text_rng, index) for text in texts]
        return self._region_sample(index, image, encoded, region_boxes, image_caption is not None, flipped)

    def _record_texts(self, record: Record) -> list[tuple[str, str]]:
        """Every caption of the line (whole image and elements), the texts a flip must keep true."""
        lang = self.cfg.caption_language
        texts = all_captions(record["caption"], None, lang) if "caption" in record else []
        for elem in record["elems"]:
            texts += [(text, lang) for text in _as_list(elem["caption"])]
        return texts

    def _crop_flip_augment(
        self, index: int, rng: random.Random, flip_allowed: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[int], bool]:
        """Steps 1–3: ``(image (3, R, R), boxes (K, 4) output pixels, keep_index, flipped)``."""
        cfg = self.cfg
        elems = self.records[index]["elems"]
        target = rng.randrange(len(elems))  # step 1: the element the crop must contain whole
        # crop_keeping_box keeps boxes with visible >= min_visible·area; the official test is strict
        # (visible > min_perc_in_image·area), hence the hair above min_perc_in_image.
        min_visible = min(1.0, cfg.min_perc_in_image * (1 + 1e-9))
        image, boxes, keep = crop_keeping_box(
            self._open_image(index), [e["bb"][:4] for e in elems], target, rng, cfg.resolution, min_visible
        )
        flipped = rng.random() < 0.5 and flip_allowed  # step 2 (the coin is tossed either way)
        if flipped:
            image, boxes, _ = horizontal_flip(image, boxes)
        if cfg.augment:  # step 3: colour-only RandAugment, geometric ops would move the boxes
            image = rand_augment(image, rng, geometric=False)
        return normalize(to_tensor(image), cfg.mean, cfg.std), boxes, keep, flipped

    @staticmethod
    def _flip_text(text: tuple[str, str], flipped: bool) -> str:
        return swap_left_right(text[0], text[1]) if flipped else text[0]

    def _region_sample(
        self,
        index: int,
        image: torch.Tensor,
        texts: list[EncodedText],
        boxes: list[torch.Tensor],
        has_image_caption: bool,
        flipped: bool,
    ) -> Sample:
        """Steps 4, 6 and 7: patch masks and normalised ``(cx, cy, w, h)`` targets per text."""
        res, n_patch = self.cfg.resolution, self.cfg.num_patches
        pixel_boxes = torch.stack(boxes) if boxes else torch.zeros((0, 4))  # (K', 4) [x, y, w, h]
        atts = box_patch_mask(pixel_boxes, res, self.cfg.patch_size)  # (K', 1+N) float
        centres = box_target_cxcywh(pixel_boxes, res)  # (K', 4) (cx, cy, w, h) / R
        if has_image_caption:
            atts = torch.cat([torch.ones(1, 1 + n_patch), atts])  # the whole image: every patch
            centres = torch.cat([torch.tensor([[0.5, 0.5, 1.0, 1.0]]), centres])
            pixel_boxes = torch.cat([torch.tensor([[0.0, 0.0, float(res), float(res)]]), pixel_boxes])
        is_image = torch.zeros(len(texts), dtype=torch.bool)
        is_image[0] = has_image_caption
        return {
            "image": image,
            "texts": texts,
            "region_atts": atts,  # (K, 1+N)
            "region_boxes": centres,  # (K, 4)
            "boxes": pixel_boxes,  # (K, 4)
            "is_image": is_image,  # (K,)
            "flipped": flipped,
            "image_id": self.image_ids[index],
        }

    def collate(self, samples: list[Sample], rng: random.Random) -> dict[str, torch.Tensor]:
        return collate_region(samples, self.text.pad_id, self.cfg.max_masks, self.cfg.region_batch_size, rng)


def collate_region(
    samples: Sequence[Sample], pad_id: int, max_masks: int, max_texts: int | None, rng: random.Random | None
) -> dict[str, torch.Tensor]:
    """Region batch over the texts of several images, never duplicating a text.

    With more than ``max_texts`` texts a random subset of ``max_texts`` is kept (``rng``), in batch
    order; images left without texts are dropped. Returns ``image`` (I, 3, R, R);
    ``region_image_index`` (T,) long (text → its image row); ``region_atts`` (T, 1+N) float;
    ``region_boxes`` (T, 4) float; ``is_image`` (T,) bool; text fields (T, L) / (T, M);
    ``image_ids`` (T,) long (the dataset's image index of each text).
    """
    flat = [(s, k) for s, sample in enumerate(samples) for k in range(len(sample["texts"]))]
    if max_texts is not None and len(flat) > max_texts:
        chosen = sorted(rng.sample(range(len(flat)), max_texts)) if rng else list(range(max_texts))
        flat = [flat[i] for i in chosen]
    used = sorted({s for s, _ in flat})
    row_of = {s: row for row, s in enumerate(used)}
    batch = {
        "image": torch.stack([samples[s]["image"] for s in used]),  # (I, 3, R, R)
        "region_image_index": torch.tensor([row_of[s] for s, _ in flat], dtype=torch.long),  # (T,)
        "region_atts": torch.stack([samples[s]["region_atts"][k] for s, k in flat]),  # (T, 1+N)
        "region_boxes": torch.stack([samples[s]["region_boxes"][k] for s, k in flat]),  # (T, 4)
        "is_image": torch.stack([samples[s]["is_image"][k] for s, k in flat]),  # (T,)
    }
    batch.update(text_batch([samples[s]["texts"][k] for s, k in flat], pad_id, max_masks))
    batch["image_ids"] = torch.tensor([samples[s]["image_id"] for s, _ in flat], dtype=torch.long)  # (T,)
    return batch


# ---------------------------------------------------------------------------------------------
# Video–text


class VideoTextDataset(_LineDataset):
    """Video lines → ``{"video": (F, 3, R, R), "text": EncodedText, "video_id": int}``.

    ``frame_len`` frames by segment sampling (random in training, segment middles otherwise), one
    shared crop/flip/RandAugment for all frames. Clip lists (``[[frame, ...] per clip]``): a random
    clip with its text; ``is_continuous`` clips are joined with neighbours until they hold
    ``min_frames_before_sampling`` frames and their texts concatenated (official ``sample_clip_ids``).
    """

    kind = "video"

    def _validator(self) -> validate.Validator:
        return xvlm_pretrain.check_video

    def _image_ids(self) -> list[int]:
        return list(range(len(self.records)))  # one line, one video

    def make_sample(self, index: int, vision_rng: random.Random, text_rng: random.Random) -> Sample:
        record = self.records[index]
        rng = vision_rng if self.train else None
        frames, clip_text = self._clip_frames(index, rng)
        text, lang = clip_text if clip_text is not None else self._choose(record["text"], text_rng, index)
        chosen = [frames[i] for i in sample_frame_ids(len(frames), self.cfg.frame_len, rng)]
        path, where = self.at(index)
        pictures = [open_rgb(f, self.root, xvlm_pretrain.is_frame_path(f), path, where, "frame") for f in chosen]
        video, text = video_transform(
            pictures,
            self.cfg.resolution,
            rng,
            kind="pretrain" if self.train else "test",
            mean=self.cfg.mean,
            std=self.cfg.std,
            hflip=may_flip([(text, lang)], self.cfg.careful_hflip),
            augment=self.cfg.augment,
            text=text,
            lang=lang,
        )
        return {"video": video, "text": self._encode(text, text_rng, index), "video_id": self.image_ids[index]}

    def _clip_frames(self, index: int, rng: random.Random | None) -> tuple[list[str], tuple[str, str] | None]:
        """The frames to sample from and, for clip lists, the text that goes with them."""
        record = self.records[index]
        frames = record["video_frames"]
        if not isinstance(frames[0], list):
            return frames, None
        texts = _as_list(record["text"])
        usable = [i for i, text in enumerate(texts) if text.strip() not in SKIP_CLIP_CAPTIONS]
        if not usable:
            raise DataError(*self.at(index), "every clip caption is in the skip set ([Music])")
        start = rng.choice(usable) if rng is not None else usable[0]
        ids = [start]
        if record["is_continuous"]:
            ids = _join_clips(frames, texts, start, self.cfg.min_frames_before_sampling, rng)
        joined = [frame for i in ids for frame in frames[i]]
        return joined, (" ".join(texts[i] for i in ids), self.cfg.caption_language)

    def collate(self, samples: list[Sample], rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        return collate_video(samples, self.text.pad_id, self.cfg.max_masks)


def _join_clips(
    clips: list[list[str]], texts: list[str], start: int, min_frames: int, rng: random.Random | None
) -> list[int]:
    """Grow ``[start]`` by neighbouring clips (random side) until it holds ``min_frames`` usable frames."""

    def usable(i: int) -> bool:
        return texts[i].strip() not in SKIP_CLIP_CAPTIONS

    def frames_in(left: int, right: int) -> int:
        return sum(len(clips[i]) for i in range(left, right + 1) if usable(i))

    left = right = start
    while frames_in(left, right) < min_frames and right - left + 1 < len(clips):
        go_right = left == 0 or (right + 1 < len(clips) and (rng.random() < 0.5 if rng else True))
        left, right = (left, right + 1) if go_right else (left - 1, right)
    return [i for i in range(left, right + 1) if usable(i)]


def collate_video(samples: Sequence[Sample], pad_id: int, max_masks: int) -> dict[str, torch.Tensor]:
    """Video batch: ``video`` (B, F, 3, R, R), text fields (B, L) / (B, M), ``video_ids`` (B,) long."""
    batch = {"video": torch.stack([s["video"] for s in samples])}  # (B, F, 3, R, R)
    batch.update(text_batch([s["text"] for s in samples], pad_id, max_masks))
    batch["video_ids"] = torch.tensor([s["video_id"] for s in samples], dtype=torch.long)  # (B,)
    return batch


# ---------------------------------------------------------------------------------------------
# Streams: endless, sharded, resumable


class PretrainStream(ShardedStream):
    """Endless batches of one dataset for one rank, resumable exactly (the cursor is :class:`ShardedStream`'s).

    Each epoch is a fresh permutation of all records (seeded by ``(seed, kind, epoch)``, identical
    on every rank); the first ``world_size · ⌊n / world_size⌋`` entries are dealt round-robin, so
    ranks get disjoint samples and equal counts (the remainder sits out that epoch). A batch takes
    the next ``batch_size`` samples of the rank's sequence and runs on into the next epoch when the
    current one ends, so every batch is full and all ranks step in lockstep. The state is
    ``(epoch, position)``; a batch depends on nothing else.
    """

    name = "pre-training stream"

    def __init__(
        self,
        dataset: _LineDataset,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_threads: int = 0,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if seed < 0 or batch_size < 1:
            raise ValueError(f"seed must be >= 0 and batch_size >= 1, got {seed} and {batch_size}")
        if len(dataset) < world_size:
            raise ValueError(f"{dataset.path}: {len(dataset)} record(s) cannot feed {world_size} ranks")
        super().__init__(len(dataset), batch_size, seed, rank, world_size, drop_last=False)
        self.name = f"{dataset.kind} stream"
        self.dataset = dataset
        self._pool = ThreadPoolExecutor(num_threads) if num_threads > 0 else None

    def identity(self) -> dict[str, int]:
        return {**super().identity(), "num_records": self.num_items}

    def permutation(self, epoch: int) -> np.ndarray:
        kind_code = zlib.crc32(self.dataset.kind.encode())
        return np.random.default_rng(np.random.SeedSequence([self.seed, kind_code, epoch])).permutation(self.num_items)

    def make_batch(self, picks: list[Pick]) -> dict[str, torch.Tensor]:
        def load(pick: Pick) -> Sample:
            return self.dataset.sample(*pick)

        samples = list(self._pool.map(load, picks) if self._pool else map(load, picks))
        # The collate RNG is keyed by the batch's start, so it is the same after a resume.
        key = f"grainvl:pretrain:{self.dataset.kind}:{self.seed}:collate:{self.rank}:{self.epoch}:{self.position}"
        return self.dataset.collate(samples, random.Random(key))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


PathSet = Path | tuple[Path, ...]  # one JSON-lines file, or the shards of one stream


@dataclass
class PretrainDataFiles:
    """Explicit pre-training files, by the keys of the official X-VLM / X²-VLM pre-training configs.

    Each ``train_file*`` value is a list (or a comma-separated string) of JSON-lines files and folders;
    a folder stands for every file in it except hidden ones and markers such as ``_SUCCESS`` (the
    official reader lists a folder's shards the same way). A relative path is looked up under the
    data root, then under the working directory.
    """

    train_file: list[str] | str | None = None  # image–caption lines ({"image" | "binary", "caption" | "desc"})
    train_file_regions: list[str] | str | None = None  # region lines ({"image" | "binary", "elems": [...]})
    train_file_videos: list[str] | str | None = None  # video lines ({"video_frames", "text", "is_continuous"})
    train_file_text: list[str] | str | None = None  # CCLM parallel text ({"source_text", "target_text"})
    image_root: str = ""  # image and frame paths are relative to this ("": the data root)
    allow_outside_root: bool = False  # records may name images outside the data / image root (absolute, '..')
    test_file: list[str] | str | None = None
    """Zero-shot evaluation files, one split each, named by the file (``coco_test.json`` → ``test``; a lone
    file is ``test``): image–caption JSON lines or an ALBEF retrieval JSON list; ``refcoco+_*.json``
    files are the grounding files of their split."""

    def has_training(self) -> bool:
        return any(entries(getattr(self, key)) for key in TRAIN_KEYS.values())


TRAIN_KEYS = {"image": "train_file", "region": "train_file_regions", "video": "train_file_videos"}
OFFICIAL_PRETRAIN_FOLDERS = ("data/pretrain", "pretrain", ".")


def entries(value: list[str] | str | None) -> list[str]:
    """The entries of an official path value: a list, or one string with comma-separated paths."""
    if not value:
        return []
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    return [item.strip() for item in items if item.strip()]


def resolve_under(root: Path, value: str) -> Path:
    """An official config path: absolute, else under the data root, else under the working directory."""
    path = Path(value)
    if path.is_absolute():
        return path
    return root / path if (root / path).exists() or not path.exists() else path


def shard_files(path: Path) -> list[Path]:
    """A file, or the files of a folder in name order (no hidden files, no ``_SUCCESS``-style markers).

    Every other entry of the folder must be a regular file: a sub-folder, a broken link or a loop among
    the shards is a DataError, not a shard that silently goes missing.
    """
    if path.is_file():
        return [path]
    shards = sorted(p for p in path.iterdir() if not p.name.startswith((".", "_")))
    return [validate.require_regular_file(p, "shard") for p in shards]


@dataclass(frozen=True)
class PretrainFiles:
    """Where the pre-training lines are: an image root and up to three streams of JSON-lines files."""

    root: Path
    image: PathSet | None = None
    region: PathSet | None = None
    video: PathSet | None = None

    def empty(self) -> bool:
        return self.image is None and self.region is None and self.video is None

    def all_files(self) -> list[Path]:
        out: list[Path] = []
        for kind in TRAIN_KEYS:
            value = getattr(self, kind)
            out += [] if value is None else [value] if isinstance(value, Path) else list(value)
        return out

    @classmethod
    def from_world(cls, world: str | Path, split: str) -> PretrainFiles:
        """The files of a world (docs/world_layout.md) that exist for ``split``.

        A stream the world's ``manifest.json`` lists must be there, and anything under a stream's name
        must be a regular file: otherwise a DataError naming the path, never a stream that silently
        does not take part.
        """
        world = Path(world)
        folder = world / "annotations" / "pretrain" / split
        declared = declared_files(world)
        found = {kind: folder / f"{name}.jsonl" for kind, name in _FILE_NAMES.items()}
        streams = {kind: expected_file(world, path, declared, f"{kind} stream") for kind, path in found.items()}
        return cls(world, **{kind: path for kind, path in streams.items() if path is not None})

    @classmethod
    def find(cls, root: str | Path, split: str, image_root: Path | None = None) -> PretrainFiles:
        """The files of ``split`` under a data root by their registered names (``image_text*.jsonl``,
        ``region*.jsonl``, ``video*.jsonl``; in the world's ``annotations/pretrain/{split}/`` exactly
        ``image_text.jsonl``, ``region.jsonl``, ``video.jsonl``, as :meth:`from_world`), then
        ``data/pretrain/{split}/``, ``pretrain/{split}/`` and, for ``train``, ``data/pretrain/``,
        ``pretrain/`` and the root itself. The first folder holding any of them wins."""
        root = Path(root)
        world_folder = root / "annotations" / "pretrain" / split
        for folder in search_folders(root, split):
            if folder == world_folder:  # the world's own names only: its image_text_multilingual.jsonl is CCLM's
                world = cls.from_world(root, split)
                found = {kind: (getattr(world, kind),) if getattr(world, kind) else () for kind in _FILE_NAMES}
            else:  # every match must be a regular file: a folder or broken link named like a stream is an error
                found = {
                    kind: tuple(
                        validate.require_regular_file(p, f"{kind} stream")
                        for p in sorted(folder.glob(f"{name}*.jsonl"))
                    )
                    for kind, name in _FILE_NAMES.items()
                }
            if any(found.values()):
                streams = {kind: paths[0] if len(paths) == 1 else paths for kind, paths in found.items() if paths}
                return cls(image_root or root, **streams)
        return cls(image_root or root)

    @classmethod
    def from_sources(cls, root: str | Path, sources: PretrainDataFiles) -> PretrainFiles:
        """The streams named by explicit files; a path that does not exist (or an empty folder) is a
        FileNotFoundError naming the key and where the path was looked for."""
        root = Path(root)
        streams: dict[str, tuple[Path, ...]] = {}
        for kind, key in TRAIN_KEYS.items():
            paths: list[Path] = []
            for value in entries(getattr(sources, key)):
                path = resolve_under(root, value)
                if validate.is_present(path) and not path.is_dir():
                    validate.require_regular_file(path, f"{key} entry")  # a broken link or loop: say so
                if not path.exists():
                    where = str(path) if Path(value).is_absolute() else f"{root / value} or {Path.cwd() / value}"
                    raise FileNotFoundError(f"pretrain: {key} entry {value!r} not found (looked for {where})")
                shards = shard_files(path)
                if not shards:
                    raise FileNotFoundError(f"pretrain: {key} entry {value!r}: {path} holds no files")
                paths += shards
            if paths:
                streams[kind] = tuple(paths)
        image_root = resolve_under(root, sources.image_root) if sources.image_root else root
        return cls(image_root, **streams)


def search_folders(root: Path, split: str) -> list[Path]:
    """Folders that may hold a split's pre-training lines, in the order :meth:`PretrainFiles.find` tries them."""
    folders = [root / "annotations" / "pretrain" / split]
    folders += [root / f / split for f in OFFICIAL_PRETRAIN_FOLDERS if f != "."]
    if split == "train":
        folders += [root / f for f in OFFICIAL_PRETRAIN_FOLDERS]
    return [f for f in dict.fromkeys(folders) if f.is_dir()]


def describe_search(root: Path, split: str) -> str:
    """Where :meth:`PretrainFiles.find` looks, in words (for the error when nothing is found)."""
    names = ", ".join(f"{n}*.jsonl" for n in _FILE_NAMES.values())
    folders = [f"annotations/pretrain/{split}"] + [f"{f}/{split}" for f in OFFICIAL_PRETRAIN_FOLDERS if f != "."]
    if split == "train":
        folders += [f for f in OFFICIAL_PRETRAIN_FOLDERS if f != "."] + ["the root"]
    return f"{names} in {', '.join(folders)} under {root}"


_FILE_NAMES = {"image": "image_text", "region": "region", "video": "video"}
_DATASETS: dict[str, type[_LineDataset]] = {
    "image": ImageTextDataset,
    "region": RegionTextDataset,
    "video": VideoTextDataset,
}


def build_pretrain_loaders(
    world_or_paths: str | Path | PretrainFiles,
    split: str,
    tokenizer: Any,
    cfg: PretrainDataConfig,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_threads: int = 0,
    bad: BadRecords | None = None,
) -> dict[str, PretrainStream]:
    """Training streams ``{"image", "region", "video"}`` for the files that exist.

    ``world_or_paths`` is a world folder (files under ``annotations/pretrain/{split}``) or a
    :class:`PretrainFiles` (several files per stream are read as one dataset).
    Region streams draw ``max_images_per_region_batch`` images per batch.
    """
    if isinstance(world_or_paths, PretrainFiles):
        files = world_or_paths
    else:
        files = PretrainFiles.from_world(world_or_paths, split)
        if files.empty():
            raise FileNotFoundError(
                f"no pre-training files under {Path(world_or_paths) / 'annotations/pretrain' / split}"
            )
    batch_sizes = {
        "image": cfg.image_batch_size,
        "region": cfg.max_images_per_region_batch,
        "video": cfg.video_batch_size,
    }
    streams = {}
    for kind, dataset_cls in _DATASETS.items():
        path = getattr(files, kind)
        if path is None:
            continue
        dataset = dataset_cls(path, files.root, tokenizer, cfg, train=True, seed=seed, bad=bad)
        streams[kind] = PretrainStream(dataset, batch_sizes[kind], seed, rank, world_size, num_threads)
    return streams


# ---------------------------------------------------------------------------------------------
# Evaluation sets


def require_image_file(root: Path, value: str, annotation: Path, where: str) -> None:
    """A DataError unless ``root / value`` is inside ``root`` and a file (one stat: nothing is decoded)."""
    path = validate.confined_path(root, value, annotation, where)
    if not path.is_file():
        what = "is not a file" if validate.is_present(path) else "not found"
        raise DataError(annotation, where, f"image {what}: {path}")


class EvalImages:
    """Distinct images under the "test" transform: ``images[i]`` is ``(3, R, R)``."""

    def __init__(
        self, sources: list[tuple[str, bool, str]], root: Path, annotation: Path, cfg: PretrainDataConfig
    ) -> None:
        self.sources = sources  # (path or base64, is_path, record position)
        self.root, self.annotation = root, annotation
        self.transform: ImageTransform = build_transform("test", cfg.resolution, cfg.mean, cfg.std)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, index: int) -> torch.Tensor:
        value, is_path, where = self.sources[index]
        return self.transform(open_rgb(value, self.root, is_path, self.annotation, where))[0]

    def check_paths(self) -> None:
        """The one-line DataError of the first image path outside the root or not a file (nothing decoded)."""
        for value, is_path, where in self.sources:
            if is_path:
                require_image_file(self.root, value, self.annotation, where)

    def batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """``(b, 3, R, R)`` tensors over all images in order."""
        for start in range(0, len(self), batch_size):
            yield torch.stack([self[i] for i in range(start, min(start + batch_size, len(self)))])


@dataclass
class ImageTextEval:
    """Zero-shot retrieval set: distinct images and every caption, each caption naming its image."""

    images: EvalImages
    captions: list[str]  # after pre_caption
    text_ids: torch.Tensor  # (T, L) long, [CLS] ... [SEP], padded to the longest caption
    text_atts: torch.Tensor  # (T, L) long
    text_image_index: torch.Tensor  # (T,) long: the image of each caption
    image_text_index: list[list[int]]  # the captions of each image


def eval_image_text(
    world: str | Path,
    split: str,
    tokenizer: Any,
    cfg: PretrainDataConfig,
    jsonl_path: str | Path | None = None,
    image_root: str | Path | None = None,
) -> ImageTextEval:
    """Every caption of every image of ``annotations/pretrain/{split}/image_text.jsonl`` (or ``jsonl_path``).

    ``jsonl_path`` may also be an ALBEF retrieval JSON list (``coco_test.json``: ``image`` and a
    ``caption`` list per image). Image paths are relative to ``image_root`` (default: ``world``).
    """
    world = Path(world)
    path = Path(jsonl_path) if jsonl_path else world / "annotations" / "pretrain" / split / "image_text.jsonl"
    records, positions = _read_numbered(path, xvlm_pretrain.check_image_text, None, lines=not is_json_list(path))
    text = PretrainText(tokenizer, cfg)
    image_of: dict[str, int] = {}
    sources, raw, caption_positions, text_image = [], [], [], []
    for record, where in zip(records, positions):
        key = record.get("image") or record["binary"]
        if key not in image_of:
            image_of[key] = len(sources)
            sources.append((key, "image" in record, where))
        for caption, _ in all_captions(record[_caption_key(record)], cfg.language, cfg.caption_language):
            raw.append(caption)
            caption_positions.append(where)
            text_image.append(image_of[key])
    cleaned, ids = zip(*(_tokenised_one(text, c, path, where) for c, where in zip(raw, caption_positions)))
    length = max(len(row) for row in ids)
    image_texts: list[list[int]] = [[] for _ in sources]
    for t, i in enumerate(text_image):
        image_texts[i].append(t)
    return ImageTextEval(
        images=EvalImages(sources, Path(image_root) if image_root else world, path, cfg),
        captions=list(cleaned),
        text_ids=_pad_rows(ids, length, text.pad_id),
        text_atts=_pad_rows([[1] * len(row) for row in ids], length, 0),
        text_image_index=torch.tensor(text_image, dtype=torch.long),
        image_text_index=image_texts,
    )


class GroundingEval:
    """RefCOCO+ referring expressions: ``ge[i]`` → image, tokenised text and the ground-truth box.

    Item: ``image`` (3, R, R); ``text_ids`` (L,) long; ``text`` str; ``box`` (4,) float ``[x, y, w, h]``
    in pixels of the R × R resized image; ``orig_box`` (4,) and ``orig_size`` (width, height) in the
    original image (IoU is reported there); ``ref_id`` int. Decoded images are cached per file
    (refexps share images).
    """

    def __init__(self, path: Path, root: Path, tokenizer: Any, cfg: PretrainDataConfig, cache_size: int = 32) -> None:
        self.path, self.root, self.cfg = path, root, cfg
        self.records, self.positions = _read_numbered(path, albef.check_refcoco_record, None, lines=False)
        for record, where in zip(self.records, self.positions):
            if "bbox" not in record:
                raise DataError(path, where, "grounding evaluation needs a 'bbox' on every refexp")
        self.text = PretrainText(tokenizer, cfg)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, tuple[int, int]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.records)

    def check_paths(self) -> None:
        """The one-line DataError of the first image outside the root or not a file (nothing decoded)."""
        for record, where in zip(self.records, self.positions):
            require_image_file(self.root, record["image"], self.path, where)

    def _image(self, index: int) -> tuple[torch.Tensor, tuple[int, int]]:
        record, where = self.records[index], self.positions[index]
        name = record["image"]
        if name not in self._cache:
            picture = open_rgb(name, self.root, True, self.path, where)
            image, _ = resize(picture, None, self.cfg.resolution)
            self._cache[name] = (normalize(to_tensor(image), self.cfg.mean, self.cfg.std), picture.size)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        # Boxes are in the record's pixels: every record stating a size must agree with the image (cached or not).
        validate.check_size(self._cache[name][1], validate.declared_size(record), name, self.path, where)
        return self._cache[name]

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        image, (width, height) = self._image(index)
        orig_box = torch.tensor(record["bbox"][:4], dtype=torch.float32)  # (4,)
        scale = torch.tensor([self.cfg.resolution / width, self.cfg.resolution / height] * 2)
        caption, ids = _tokenised_one(self.text, record["text"], self.path, self.positions[index])
        return {
            "image": image,
            "text_ids": torch.tensor(ids, dtype=torch.long),
            "text": caption,
            "box": orig_box * scale,
            "orig_box": orig_box,
            "orig_size": (width, height),
            "ref_id": record.get("ref_id", index),
        }

    def collate(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """``image`` (B, 3, R, R), ``text_ids``/``text_atts`` (B, L), ``box`` (B, 4), ``ref_id`` list."""
        length = max(len(item["text_ids"]) for item in items)
        return {
            "image": torch.stack([item["image"] for item in items]),
            "text_ids": _pad_rows([item["text_ids"].tolist() for item in items], length, self.text.pad_id),
            "text_atts": _pad_rows([[1] * len(item["text_ids"]) for item in items], length, 0),
            "box": torch.stack([item["box"] for item in items]),
            "orig_box": torch.stack([item["orig_box"] for item in items]),
            "ref_id": [item["ref_id"] for item in items],
        }


def _tokenised_one(text: PretrainText, caption: str, path: Path, where: str) -> tuple[str, list[int]]:
    try:
        return text.token_ids(caption)
    except ValueError as e:
        raise DataError(path, where, f"bad text {caption!r}: {e}") from None


def eval_grounding(
    world: str | Path,
    split: str,
    tokenizer: Any,
    cfg: PretrainDataConfig,
    json_path: str | Path | None = None,
    image_root: str | Path | None = None,
) -> GroundingEval:
    """The refexps of ``annotations/refcoco+/refcoco+_{split}.json`` (or ``json_path``); images under
    ``image_root`` (default: ``world``)."""
    world = Path(world)
    path = Path(json_path) if json_path else world / "annotations" / "refcoco+" / f"refcoco+_{split}.json"
    return GroundingEval(path, Path(image_root) if image_root else world, tokenizer, cfg)


def is_json_list(path: Path) -> bool:
    """Whether a file holds one JSON list (its first non-blank character is ``[``) rather than JSON lines.

    Read as bytes: a file that is not UTF-8 gets the reader's one-line error naming its line, not a decode
    error here. A missing or unreadable file is the reader's one line too.
    """
    try:
        with open(path, "rb") as f:
            while chunk := f.read(4096):
                stripped = chunk.lstrip()
                if stripped:
                    return stripped.startswith(b"[")
    except OSError:
        return False  # the reader names the fault
    return False
