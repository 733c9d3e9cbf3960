"""Datasets and collators for retrieval (image and video), NLVR2 and grounding fine-tuning.

They read the official-format files through the validators of :mod:`grainvl.data.formats` and
reuse the pre-training pipelines (:mod:`grainvl.data.transforms`, ``PretrainText``), so captions
are cleaned and tokenised exactly as in pre-training and images get the X-VLM fine-tuning
transform (random resized crop, scale (0.5, 1); flip; RandAugment(2, 7)).

Every training dataset draws its randomness from ``sample(index, epoch)``'s own seeded streams
(string seeds hash with SHA-512), and :class:`EpochLoader` passes the epoch, so a resumed run sees
exactly the batches an uninterrupted one would.

File layout (a world root or a real dataset root; image paths in the files are relative to it):

* image retrieval ``annotations/retrieval/coco_{split}.json`` (ALBEF ``{image, caption, image_id}``)
* video retrieval ``annotations/msrvtt/msrvtt_ret_{split}.json`` (``{video, caption}``)
* NLVR2 ``annotations/nlvr2/nlvr_{split}.json`` (``{images: [left, right], sentence, label}``)
* grounding ``annotations/refcoco+/refcoco+_{split}.json`` (``{image, text, ref_id, bbox}``)
"""

from __future__ import annotations

import base64
import io
import random
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from grainvl.data.formats import albef, msrvtt, validate
from grainvl.data.iterators import RepeatingLoader
from grainvl.data.layout import vqa_v2_records
from grainvl.data.pretrain import (
    EvalImages,
    ImageTextEval,
    PretrainDataConfig,
    PretrainText,
    _pad_rows,
    _read_numbered,
    all_captions,
    flip_transforms,
    may_flip,
    open_rgb,
)
from grainvl.data.transforms import build_transform, sample_frame_ids, video_transform
from grainvl.errors import DataError
from grainvl.utils import fileio

Record = dict[str, Any]
Sample = dict[str, Any]

FRAME_SUFFIXES = msrvtt.FRAME_SUFFIXES


# ---------------------------------------------------------------------------------------------- paths
def retrieval_file(world: Path, split: str, video: bool = False) -> Path:
    if video:
        return Path(world) / "annotations" / "msrvtt" / f"msrvtt_ret_{split}.json"
    return Path(world) / "annotations" / "retrieval" / f"coco_{split}.json"


def nlvr_file(world: Path, split: str) -> Path:
    return Path(world) / "annotations" / "nlvr2" / f"nlvr_{split}.json"


def grounding_file(world: Path, split: str) -> Path:
    return Path(world) / "annotations" / "refcoco+" / f"refcoco+_{split}.json"


def require_file(path: Path, task: str) -> Path:
    """``path`` when it is a regular file; a missing one says how to get data, anything else what it is."""
    if not validate.is_present(path):
        raise FileNotFoundError(
            f"{path}: no {task} file (generate a world with `grainvl world`, or point --data-root / --config at "
            "a dataset in the official layout)"
        )
    return validate.require_regular_file(path, f"{task} file")


Paths = Path | str | Sequence[Path | str]


def as_paths(paths: Paths) -> list[Path]:
    """One annotation file or several (an official ``train_file`` list) as a list of paths."""
    return [Path(p) for p in paths] if isinstance(paths, (list, tuple)) else [Path(paths)]


def is_json_lines(path: Path) -> bool:
    """Whether a ``.json`` file is JSON lines (NLVR2 as shipped) rather than one JSON list."""
    with Path(path).open("rb") as f:
        head = f.read(4096).lstrip()
    return not head.startswith(b"[")


def read_records(
    paths: Paths, validator: Callable[..., None], task: str, lines: bool | None = None
) -> tuple[list[Record], list[str]]:
    """Validated records of one or several files, and each one's position for error messages.

    A file is a JSON list or JSON lines (``lines=None``: told by its first character); a VQA v2
    ``*_questions.json`` (with its ``*_annotations.json`` after it) becomes X-VLM VQA records. With
    several files a position names its file too (``vqa_val.json index 3``).
    """
    files = [require_file(p, task) for p in as_paths(paths)]
    if files and files[0].name.endswith("_questions.json"):
        records = vqa_v2_records(files[0], files[1] if len(files) > 1 else None)
        positions = [f"question {i}" for i in range(len(records))]
        per_file = validate.ImageChecker(files[0], None)  # images are decoded lazily; ids are claimed per file
        for record, where in zip(records, positions):
            validator(record, files[0], where, per_file)
        return records, positions
    records, positions = [], []
    for file in files:
        found, where = _read_numbered(file, validator, None, lines=is_json_lines(file) if lines is None else lines)
        records += found
        positions += [f"{file.name} {w}" for w in where] if len(files) > 1 else where
    return records, positions


# ---------------------------------------------------------------------------------------------- text
def tokenise(text: PretrainText, caption: str, path: Path, where: str) -> list[int]:
    """``[CLS] ids [SEP]`` of ``caption`` after pre_caption; a caption that cleans to nothing is a DataError."""
    try:
        return text.token_ids(caption)[1]
    except ValueError as e:
        raise DataError(path, where, f"bad text {caption!r}: {e}") from None


def pad_texts(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text_ids, text_atts)``, both (B, L) long, padded to the longest row."""
    length = max(len(row) for row in rows)
    return _pad_rows(rows, length, pad_id), _pad_rows([[1] * len(row) for row in rows], length, 0)


# ---------------------------------------------------------------------------------------------- video frames
def video_frame_sources(root: Path, name: str, annotation: Path, where: str) -> tuple[list[str], bool]:
    """The frames of video ``name``: ``(paths relative to root, True)`` or ``(base64 strings, False)``.

    ``name`` is a folder of frame images or a JSON list of base64 frames (``name`` or ``name.json``),
    under ``root`` or, for a bare id such as ``video7010``, under ``root/videos`` (the world's layout);
    either way inside ``root`` (:func:`validate.confined_path`).
    """
    folder = validate.confined_path(root, name, annotation, where)
    if not folder.exists() and not folder.with_name(folder.name + ".json").exists() and "/" not in name:
        folder = validate.confined_path(root, f"videos/{name}", annotation, where)
    if folder.is_dir():
        frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not frames:
            raise DataError(annotation, where, f"video folder {folder} holds no frames")
        return [p.relative_to(root).as_posix() for p in frames], True
    json_path = folder if folder.suffix == ".json" else folder.with_name(folder.name + ".json")
    if not json_path.is_file():
        raise DataError(annotation, where, f"video not found: {folder} (neither a folder of frames nor a .json)")
    frames = fileio.read_json(json_path)
    if not isinstance(frames, list) or not frames or not all(isinstance(f, str) for f in frames):
        raise DataError(annotation, where, f"{json_path} should hold a non-empty list of base64 frames")
    return frames, False


def open_frames(
    root: Path, name: str, frame_len: int, rng: random.Random | None, annotation: Path, where: str
) -> list[Image.Image]:
    """``frame_len`` decoded frames by segment sampling (random with ``rng``, segment middles without)."""
    sources, are_paths = video_frame_sources(root, name, annotation, where)
    chosen = [sources[i] for i in sample_frame_ids(len(sources), frame_len, rng)]
    if are_paths:
        return [open_rgb(f, root, True, annotation, where, "frame") for f in chosen]
    return [_b64_frame(f, annotation, where) for f in chosen]


def _b64_frame(value: str, annotation: Path, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(base64.b64decode(value, validate=True))) as image:
            return image.convert("RGB")
    except Exception as e:  # any decode failure is bad data, reported with its record
        raise DataError(annotation, where, f"corrupt base64 frame: {e}") from None


# ---------------------------------------------------------------------------------------------- base
class RecordsDataset(ABC):
    """Validated records of one official-format JSON file, with per-(epoch, index) random streams."""

    kind = "records"
    json_lines = False  # the file is one JSON list; True: JSON lines (MSRVTT-QA)

    def __init__(
        self,
        path: Paths,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        validator: Callable[..., None],
        train: bool = True,
        seed: int = 0,
        max_records: int = 0,
    ) -> None:
        self.paths = as_paths(path)
        self.path, self.root, self.cfg, self.train, self.seed = self.paths[0], Path(root), cfg, train, seed
        lines = True if self.json_lines else None
        self.records, self.positions = read_records(self.paths, validator, self.kind, lines)
        if max_records > 0:
            self.records, self.positions = self.records[:max_records], self.positions[:max_records]
        if not self.records:
            raise DataError(self.path, "file", "no records")
        self.text = PretrainText(tokenizer, cfg)
        self.tokenizer = tokenizer
        self._setup()

    def _setup(self) -> None:
        """Per-task state built once the records are read (a hook, so no subclass repeats ``__init__``)."""
        return None  # most kinds need nothing more

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index, 0)

    def rng(self, index: int, epoch: int) -> random.Random:
        return random.Random(f"grainvl:{self.kind}:{self.seed}:{epoch}:{index}")

    @abstractmethod
    def sample(self, index: int, epoch: int) -> Sample:
        """The sample at ``index`` for ``epoch`` (its randomness drawn from :meth:`rng`)."""

    @abstractmethod
    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        """A batch dict of tensors from a list of samples."""

    def _ids(self, caption: str, index: int) -> list[int]:
        return tokenise(self.text, caption, self.path, self.positions[index])

    def _text_batch(self, samples: list[Sample], key: str = "image") -> dict[str, Any]:
        """The part every picture-text batch shares: ``key`` stacked (B, ...) and ``text_ids``/``text_atts`` (B, L)."""
        text_ids, text_atts = pad_texts([s["text_ids"] for s in samples], self.text.pad_id)
        return {key: torch.stack([s[key] for s in samples]), "text_ids": text_ids, "text_atts": text_atts}


class EpochLoader(RepeatingLoader):
    """:class:`RepeatingLoader` that samples ``dataset.sample(index, epoch)``: fresh augmentation every epoch."""

    def sample(self, index: int, epoch: int) -> Any:
        return self.dataset.sample(index, epoch)


def make_loader(dataset: RecordsDataset, batch_size: int, seed: int, rank: int, world_size: int) -> EpochLoader:
    """An endless, sharded, resumable loader; the batch shrinks to the rank's shard on tiny data."""
    per_rank = len(dataset) // world_size
    if per_rank < 1:
        raise ValueError(f"{dataset.path}: {len(dataset)} records cannot be shared by {world_size} ranks")
    return EpochLoader(dataset, min(batch_size, per_rank), dataset.collate, seed, rank, world_size)


# ---------------------------------------------------------------------------------------------- retrieval
class RetrievalTrainDataset(RecordsDataset):
    """Image (or video) - caption pairs → ``{"image" (3,R,R) | "video" (F,3,R,R), "text_ids", "idx"}``.

    ``idx`` is the record's ``image_id`` (else the index of its distinct image/video): ITC treats
    pairs with equal ids as positives and ITM never draws them as negatives (official retrieval).
    A record with a list of captions gives one random caption per epoch.
    """

    def __init__(
        self,
        path: Paths,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        video: bool = False,
        seed: int = 0,
        max_records: int = 0,
    ) -> None:
        self.kind, self.video = ("video_retrieval" if video else "retrieval"), video
        validator = msrvtt.check_retrieval_record if video else albef.check_caption_record
        super().__init__(path, root, tokenizer, cfg, validator, True, seed, max_records)
        key = "video" if video else "image"
        # Ids are ints or ALBEF's strings ("coco_9"); equal ids are one image, so a dense index serves ITC/ITM.
        distinct: dict[tuple[str, Any], int] = {}
        self.idx = [
            distinct.setdefault(("id", r["image_id"]) if "image_id" in r else ("item", r[key]), len(distinct))
            for r in self.records
        ]
        self.transform, self.transform_no_flip = flip_transforms("finetune", cfg)

    def sample(self, index: int, epoch: int) -> Sample:
        record, where, rng = self.records[index], self.positions[index], self.rng(index, epoch)
        caption, lang = rng.choice(all_captions(record["caption"]))
        flip_ok = may_flip([(caption, lang)], self.cfg.careful_hflip)
        if self.video:
            frames = open_frames(self.root, record["video"], self.cfg.frame_len, rng, self.path, where)
            video, caption = video_transform(
                frames,
                self.cfg.resolution,
                rng,
                kind="finetune",
                mean=self.cfg.mean,
                std=self.cfg.std,
                hflip=flip_ok,
                augment=self.cfg.augment,
                text=caption,
                lang=lang,
            )
            visual = {"video": video}
        else:
            picture = open_rgb(record["image"], self.root, True, self.path, where)
            transform = self.transform if flip_ok else self.transform_no_flip
            image, _, caption, _ = transform(picture, None, caption, rng=rng, lang=lang)
            visual = {"image": image}
        return {**visual, "text_ids": self._ids(caption, index), "idx": self.idx[index]}

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        batch = self._text_batch(samples, "video" if self.video else "image")  # (B, 3, R, R) or (B, F, 3, R, R)
        return {**batch, "idx": torch.tensor([s["idx"] for s in samples], dtype=torch.long)}  # idx (B,)


class EvalVideos:
    """Distinct videos under the test transform: ``videos[i]`` is ``(F, 3, R, R)`` (segment-middle frames)."""

    def __init__(self, names: list[tuple[str, str]], root: Path, annotation: Path, cfg: PretrainDataConfig) -> None:
        self.names, self.root, self.annotation, self.cfg = names, root, annotation, cfg

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        name, where = self.names[index]
        frames = open_frames(self.root, name, self.cfg.frame_len, None, self.annotation, where)
        video, _ = video_transform(frames, self.cfg.resolution, kind="test", mean=self.cfg.mean, std=self.cfg.std)
        return video

    def batches(self, batch_size: int) -> Any:
        for start in range(0, len(self), batch_size):
            yield torch.stack([self[i] for i in range(start, min(start + batch_size, len(self)))])


@dataclass
class RetrievalEvalSet:
    """A retrieval test split: distinct images/videos and every caption (see :class:`ImageTextEval`)."""

    data: ImageTextEval
    names: list[str]  # the image path / video name of each gallery item
    video: bool


def retrieval_eval_set(
    path: Paths, root: Path, tokenizer: Any, cfg: PretrainDataConfig, video: bool = False, max_records: int = 0
) -> RetrievalEvalSet:
    """Every caption of every image (video) of an ALBEF (MSR-VTT) retrieval test file."""
    validator = msrvtt.check_retrieval_record if video else albef.check_caption_record
    records, positions = read_records(path, validator, "retrieval")
    path = as_paths(path)[0]
    if max_records > 0:
        records, positions = records[:max_records], positions[:max_records]
    text = PretrainText(tokenizer, cfg)
    key = "video" if video else "image"
    item_of: dict[str, int] = {}
    sources: list[tuple[str, str]] = []
    rows, captions, text_item = [], [], []
    for record, where in zip(records, positions):
        if record[key] not in item_of:  # a gallery item may be named by several records
            item_of[record[key]] = len(sources)
            sources.append((record[key], where))
        for caption, _ in all_captions(record["caption"]):
            rows.append(tokenise(text, caption, path, where))
            captions.append(caption)
            text_item.append(item_of[record[key]])
    text_ids, text_atts = pad_texts(rows, text.pad_id)
    item_texts: list[list[int]] = [[] for _ in sources]
    for t, i in enumerate(text_item):
        item_texts[i].append(t)
    gallery: Any = (
        EvalVideos(sources, root, path, cfg)
        if video
        else EvalImages([(name, True, where) for name, where in sources], root, path, cfg)
    )
    data = ImageTextEval(gallery, captions, text_ids, text_atts, torch.tensor(text_item), item_texts)
    warn_small_split(path, len(sources), "videos" if video else "images")
    return RetrievalEvalSet(data, [name for name, _ in sources], video)


SMALL_SPLIT = 10  # R@10 of a gallery this small is 100 whatever the model does


def warn_small_split(path: Path | str, n: int, what: str, minimum: int = SMALL_SPLIT) -> None:
    """One warning line when an evaluation split is too small for its metrics to mean anything (``path``:
    the split's file, or any words naming it)."""
    if n < minimum:
        print(f"warning: {path}: only {n} {what}; metrics on fewer than {minimum} are not meaningful", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- NLVR2
class NLVRDataset(RecordsDataset):
    """NLVR2 pairs → ``{"image" (2, 3, R, R) [left, right], "text_ids", "label" 0/1, "index"}``.

    Training pictures get the fine-tuning crop and RandAugment but **no flip**: the sentences talk
    about "the left/right image" and about left/right inside an image, and neither survives a mirror
    (deviation: the official NLVR2 transform flips; see docs/tasks.md).
    """

    kind = "nlvr2"

    def __init__(
        self,
        path: Paths,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        train: bool = True,
        seed: int = 0,
        max_records: int = 0,
    ) -> None:
        super().__init__(path, root, tokenizer, cfg, albef.check_nlvr_record, train, seed, max_records)
        kind = "finetune" if train else "test"
        self.transform = build_transform(kind, cfg.resolution, cfg.mean, cfg.std, augment=cfg.augment, hflip=False)
        self.labels = [int(albef.nlvr_label(r["label"], self.path, w)) for r, w in zip(self.records, self.positions)]

    def sample(self, index: int, epoch: int) -> Sample:
        record, where = self.records[index], self.positions[index]
        rng = self.rng(index, epoch)
        pictures = [open_rgb(p, self.root, True, self.path, where) for p in record["images"]]
        images = torch.stack([self.transform(p, rng=rng)[0] for p in pictures])  # (2, 3, R, R)
        return {
            "image": images,
            "text_ids": self._ids(record["sentence"], index),
            "label": self.labels[index],
            "index": index,
        }

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        return {
            **self._text_batch(samples),  # image (B, 2, 3, R, R)
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # (B,)
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),  # (B,)
        }


# ---------------------------------------------------------------------------------------------- grounding
class GroundingTrainDataset(RecordsDataset):
    """RefCOCO+ refexps → ``{"image" (3,R,R), "text_ids", "target_box" (4,) normalised (cx, cy, w, h)}``.

    X-VLM's bbox grounding augmentation: a random crop that keeps the referred box whole, a flip
    unless the text mentions left/right (``careful_hflip``; otherwise the words are swapped), and
    colour-only RandAugment (geometric ops would move the box).
    """

    kind = "grounding"

    def __init__(
        self, path: Paths, root: Path, tokenizer: Any, cfg: PretrainDataConfig, seed: int = 0, max_records: int = 0
    ) -> None:
        super().__init__(path, root, tokenizer, cfg, albef.check_refcoco_record, True, seed, max_records)
        for record, where in zip(self.records, self.positions):
            if "bbox" not in record:
                raise DataError(self.path, where, "grounding training needs a 'bbox' on every refexp")
        self.transform, self.transform_no_flip = flip_transforms("finetune", cfg)

    def sample(self, index: int, epoch: int) -> Sample:
        record, where, rng = self.records[index], self.positions[index], self.rng(index, epoch)
        size = validate.declared_size(record)  # the box is in the record's pixels: the image must have them
        picture = open_rgb(record["image"], self.root, True, self.path, where, size=size)
        text = record["text"]
        transform = self.transform if may_flip([(text, "en")], self.cfg.careful_hflip) else self.transform_no_flip
        box = [record["bbox"][:4]]
        image, boxes, text, _ = transform(picture, box, text, rng=rng, target_index=0)
        x, y, w, h = (float(v) / self.cfg.resolution for v in boxes[0])
        return {
            "image": image,
            "text_ids": self._ids(text, index),
            "target_box": torch.tensor([x + w / 2, y + h / 2, w, h], dtype=torch.float32),
        }

    def collate(self, samples: list[Sample]) -> dict[str, Any]:
        return {**self._text_batch(samples), "target_box": torch.stack([s["target_box"] for s in samples])}  # (B, 4)
