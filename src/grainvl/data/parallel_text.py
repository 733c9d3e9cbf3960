"""CCLM pre-training data: parallel sentences, multilingual image captions and the cross-view schedule.

CCLM (davinci_cclm_vlue.md B.3–B.4) treats an image–caption pair and a translation pair as two views of
one object. This module holds its data side, on the same machinery as the X²-VLM streams of
:mod:`grainvl.data.pretrain` (per-sample random streams keyed by ``(seed, kind, epoch, index)``, the
:class:`~grainvl.data.pretrain.PretrainStream` cursor), so every stream resumes exactly:

* :class:`ParallelTextDataset` — ``{"source_text", "target_text"[, "source_lang", "target_lang"]}`` lines
  (the world's ``para_text.jsonl`` and the official CCLM format). Each sample swaps the two sides with
  probability 0.5 (the official ``ParaTextDataset``), masks sentence a for the conditional MLM
  (:data:`~grainvl.data.masking.CCLM_PARA_MASKING`) and keeps sentence b whole.
* :class:`MultilingualImageTextDataset` — image lines whose caption is ``{lang: text}`` (one language drawn
  per sample, as the official ``get_caption``) or the official list of such dicts.
* :class:`CrossViewSchedule` — the official CCLM iteration (``Pretrain.py``): a parallel-text batch, then
  the main batch (with region data: a region *or* an image batch, 50/50, both on the first iteration);
  every batch is its own optimizer step. :attr:`CrossViewSchedule.ends_iteration` tells a scheduler wrapper
  when to step once per iteration.

Bad lines (a missing side, an empty sentence, an unknown language code, a caption or sentence the
tokenizer does not cover) are DataErrors naming file and line; ``skip_bad`` skips and counts them.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from grainvl.data.formats import validate, xvlm_pretrain
from grainvl.data.iterators import StatefulIterator
from grainvl.data.masking import CCLM_CAPTION_MASKING, CCLM_PARA_MASKING, MaskingOptions
from grainvl.data.pretrain import (
    EncodedText,
    ImageTextDataset,
    PretrainDataConfig,
    PretrainDataFiles,
    PretrainStream,
    PretrainText,
    Record,
    RegionTextDataset,
    Sample,
    _LineDataset,
    entries,
    resolve_under,
    search_folders,
    shard_files,
    text_batch,
)
from grainvl.errors import BadRecords, DataError

# ISO 639-1 codes: a language field outside this list is a typo or a non-standard tag, not a language.
ISO_639_1 = frozenset(
    [
        "aa",
        "ab",
        "ae",
        "af",
        "ak",
        "am",
        "an",
        "ar",
        "as",
        "av",
        "ay",
        "az",
        "ba",
        "be",
        "bg",
        "bh",
        "bi",
        "bm",
        "bn",
        "bo",
        "br",
        "bs",
        "ca",
        "ce",
        "ch",
        "co",
        "cr",
        "cs",
        "cu",
        "cv",
        "cy",
        "da",
        "de",
        "dv",
        "dz",
        "ee",
        "el",
        "en",
        "eo",
        "es",
        "et",
        "eu",
        "fa",
        "ff",
        "fi",
        "fj",
        "fo",
        "fr",
        "fy",
        "ga",
        "gd",
        "gl",
        "gn",
        "gu",
        "gv",
        "ha",
        "he",
        "hi",
        "ho",
        "hr",
        "ht",
        "hu",
        "hy",
        "hz",
        "ia",
        "id",
        "ie",
        "ig",
        "ii",
        "ik",
        "io",
        "is",
        "it",
        "iu",
        "ja",
        "jv",
        "ka",
        "kg",
        "ki",
        "kj",
        "kk",
        "kl",
        "km",
        "kn",
        "ko",
        "kr",
        "ks",
        "ku",
        "kv",
        "kw",
        "ky",
        "la",
        "lb",
        "lg",
        "li",
        "ln",
        "lo",
        "lt",
        "lu",
        "lv",
        "mg",
        "mh",
        "mi",
        "mk",
        "ml",
        "mn",
        "mr",
        "ms",
        "mt",
        "my",
        "na",
        "nb",
        "nd",
        "ne",
        "ng",
        "nl",
        "nn",
        "no",
        "nr",
        "nv",
        "ny",
        "oc",
        "oj",
        "om",
        "or",
        "os",
        "pa",
        "pi",
        "pl",
        "ps",
        "pt",
        "qu",
        "rm",
        "rn",
        "ro",
        "ru",
        "rw",
        "sa",
        "sc",
        "sd",
        "se",
        "sg",
        "si",
        "sk",
        "sl",
        "sm",
        "sn",
        "so",
        "sq",
        "sr",
        "ss",
        "st",
        "su",
        "sv",
        "sw",
        "ta",
        "te",
        "tg",
        "th",
        "ti",
        "tk",
        "tl",
        "tn",
        "to",
        "tr",
        "ts",
        "tt",
        "tw",
        "ty",
        "ug",
        "uk",
        "ur",
        "uz",
        "ve",
        "vi",
        "vo",
        "wa",
        "wo",
        "xh",
        "yi",
        "yo",
        "za",
        "zh",
        "zu",
    ]
)
# A text is "not covered" by the tokenizer when more than this share of its pieces is the unknown token.
# MiniLM's WordPiece turns about half of a Chinese caption into [UNK]; a covering vocabulary gives ~0.
MAX_UNKNOWN_SHARE = 0.2
PARA_MAX_TOKENS = 64  # official texts_para.max_tokens (captions: 40)


@dataclass
class CrossViewDataConfig:
    """The CCLM-specific data settings (the image/region geometry stays in :class:`PretrainDataConfig`)."""

    para_batch_size: int = 16  # texts_para.batch_size (per rank)
    para_max_tokens: int = PARA_MAX_TOKENS
    para_masking: MaskingOptions = CCLM_PARA_MASKING
    caption_masking: MaskingOptions = CCLM_CAPTION_MASKING
    swap_prob: float = 0.5  # a and b swapped with this probability (official: 0.5)
    languages: tuple[str, ...] = ()  # official language_chosen: only these languages are read; () = all
    max_unknown_share: float = MAX_UNKNOWN_SHARE
    para_prob: float = 1.0  # texts_para.iter_perc: chance of a parallel-text step per iteration
    region_prob: float = 0.5  # with region data: chance that an iteration's main step is a region batch
    para_weight: float = 1.0  # loss weight of parallel-text batches (X²-VLM's mtexts.iter_perc)

    def __post_init__(self) -> None:
        if self.para_batch_size < 2:
            raise ValueError(f"para_batch_size must be >= 2 (TTM draws in-batch negatives), got {self.para_batch_size}")
        if not 0.0 <= self.swap_prob <= 1.0 or not 0.0 < self.max_unknown_share <= 1.0:
            raise ValueError(f"swap_prob must be in [0, 1] and max_unknown_share in (0, 1], got {self}")
        bad = [lang for lang in self.languages if lang.split("-")[0].lower() not in ISO_639_1]
        if bad:
            raise ValueError(f"data languages {bad} are not ISO 639-1 codes")


# ---------------------------------------------------------------------------------------------- checks
def check_language(code: Any, name: str, path: Path, where: str) -> str:
    """``code`` when it is an ISO 639-1 code (``zh``, ``de``; a region tag ``zh-CN`` is accepted); else a DataError."""
    base = code.split("-")[0].split("_")[0].lower() if isinstance(code, str) else None
    if base not in ISO_639_1:
        raise DataError(path, where, f"unknown language code {code!r} in {name!r} (expected ISO 639-1, e.g. 'de')")
    return code


def check_covered(text: PretrainText, sentence: str, lang: str, max_share: float, path: Path, where: str) -> None:
    """A DataError when more than ``max_share`` of the sentence's pieces are the tokenizer's unknown token."""
    unk = text.tokenizer.unk_token_id
    if unk is None:
        return  # a byte-level vocabulary has no unknown token: it covers every language
    try:
        _, ids = text.token_ids(sentence)
    except ValueError as e:  # pre_caption left nothing
        raise DataError(path, where, f"empty {lang} text {sentence!r}: {e}") from None
    pieces = ids[1:-1]  # without [CLS] / [SEP]
    unknown = sum(i == unk for i in pieces)
    if pieces and unknown / len(pieces) > max_share:
        raise DataError(
            path,
            where,
            f"the tokenizer does not cover language {lang!r}: {unknown} of {len(pieces)} pieces are unknown "
            f"in {sentence[:40]!r} (use a multilingual preset such as cclm-small, or data.languages to leave it out)",
        )


def flatten_caption_dicts(value: Any, path: Path, where: str) -> Any:
    """The official ``[{lang: text}, ...]`` caption list as one ``{lang: [text, ...]}`` dict; other values as given.

    The official reader draws a dict, then a language; drawing a language, then one of its texts, is the
    same distribution when every dict has the same languages (the UC2/CCLM files do).
    """
    if not (isinstance(value, list) and value and all(isinstance(v, dict) for v in value)):
        return value
    merged: dict[str, list[Any]] = {}
    for entry in value:
        for lang, text in entry.items():
            merged.setdefault(lang, []).extend(text if isinstance(text, list) else [text])
    if not merged:
        raise DataError(path, where, "empty caption dicts (no languages)")
    return merged


def chosen_languages(value: dict[str, Any], languages: Sequence[str], path: Path, where: str) -> dict[str, Any]:
    """``value`` restricted to ``languages`` (all when empty); a line with none of them is a DataError."""
    if not languages:
        return value
    kept = {lang: text for lang, text in value.items() if lang in languages}
    if not kept:
        raise DataError(path, where, f"no caption in the chosen languages {list(languages)}; it has {sorted(value)}")
    return kept


# ---------------------------------------------------------------------------------------------- image–caption
class MultilingualImageTextDataset(ImageTextDataset):
    """Image lines with ``{lang: caption}`` dicts; one language is drawn per sample (official ``get_caption``).

    On reading, each line's caption is flattened (official list of dicts), restricted to ``languages``, and
    every language code and caption is checked (ISO 639-1; covered by the tokenizer).
    """

    def __init__(self, *args: Any, view: CrossViewDataConfig | None = None, **kwargs: Any) -> None:
        self.view = view or CrossViewDataConfig()  # read by the validator, which runs inside __init__
        super().__init__(*args, **kwargs)

    def _validator(self) -> validate.Validator:
        def check(record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
            if isinstance(record, dict) and "caption" in record:
                caption = flatten_caption_dicts(record["caption"], path, where)
                if isinstance(caption, dict):
                    caption = chosen_languages(caption, self.view.languages, path, where)
                record["caption"] = caption
            xvlm_pretrain.check_image_text(record, path, where, images)
            value = record.get("caption", record.get("desc"))
            if isinstance(value, dict):
                for lang, texts in value.items():
                    check_language(lang, "caption", path, where)
                    for text in texts if isinstance(texts, list) else [texts]:
                        check_covered(self.text, text, lang, self.view.max_unknown_share, path, where)

        return check


# ---------------------------------------------------------------------------------------------- parallel text
class ParallelTextDataset(_LineDataset):
    """Translation pairs → ``{"a": EncodedText (masked), "b": EncodedText, "langs": (lang_a, lang_b)}``.

    Sentence a is the one the conditional MLM predicts; b is what it attends to. Which side of the line
    is a is a coin of the sample's text stream (p = ``swap_prob`` for target-as-a), so it is the same
    after a resume. ``cfg`` should carry the parallel-text masking and ``max_tokens`` (:func:`para_config`).
    """

    kind = "para"
    has_test_mode = False

    def __init__(self, *args: Any, view: CrossViewDataConfig | None = None, **kwargs: Any) -> None:
        self.view = view or CrossViewDataConfig()
        super().__init__(*args, **kwargs)

    def _validator(self) -> validate.Validator:
        return self._check

    def _check(self, record: Any, path: Path, where: str, images: validate.ImageChecker) -> None:
        if not isinstance(record, dict):
            raise DataError(path, where, f"expected a JSON object, got {type(record).__name__}")
        for side in ("source", "target"):
            key = f"{side}_text"
            if key not in record:
                raise DataError(path, where, f"missing field {key!r} (a parallel pair needs both sides)")
            validate.require_text(record[key], key, path, where, validate.caption_cleaning)
            lang = record.get(f"{side}_lang")
            if lang is not None:
                check_language(lang, f"{side}_lang", path, where)
        if self._chosen(record):  # a pair left out by ``languages`` need not be covered by the tokenizer
            for side in ("source", "target"):
                lang = record.get(f"{side}_lang") or "?"
                check_covered(self.text, record[f"{side}_text"], lang, self.view.max_unknown_share, path, where)

    def _chosen(self, record: Record) -> bool:
        """Whether every stated language of the pair is among ``languages`` (always, when none are chosen)."""
        stated = {record.get("source_lang"), record.get("target_lang")} - {None}
        return not self.view.languages or stated <= set(self.view.languages)

    def _image_ids(self) -> list[int]:
        return list(range(len(self.records)))  # no images: every line is its own item

    def _setup(self) -> None:
        """Keep only pairs whose stated languages are all among ``languages`` (official ``language_chosen``)."""
        keep = [i for i, record in enumerate(self.records) if self._chosen(record)]
        self.left_out = len(self.records) - len(keep)  # pairs in other languages (not errors)
        self.records = [self.records[i] for i in keep]
        self.positions = [self.positions[i] for i in keep]
        self.file_of = [self.file_of[i] for i in keep]
        self.image_ids = self._image_ids()
        if not self.records:
            raise DataError(self.path, None, f"no parallel pair in the chosen languages {list(self.view.languages)}")

    def make_sample(self, index: int, vision_rng: random.Random, text_rng: random.Random) -> Sample:
        record = self.records[index]
        sides = [(record["source_text"], record.get("source_lang")), (record["target_text"], record.get("target_lang"))]
        if text_rng.random() < self.view.swap_prob:
            sides.reverse()
        (text_a, lang_a), (text_b, lang_b) = sides
        encoded_a = self._encode(text_a, text_rng, index)
        caption_b, ids_b = self.text.token_ids(text_b)
        encoded_b = EncodedText(caption_b, ids_b, ids_b, [], [])  # b is never masked
        return {"a": encoded_a, "b": encoded_b, "langs": (lang_a, lang_b), "index": index}

    def collate(self, samples: list[Sample], rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        return collate_para(samples, self.text.pad_id, self.cfg.max_masks)


def collate_para(samples: Sequence[Sample], pad_id: int, max_masks: int) -> dict[str, torch.Tensor]:
    """Sentence a's fields as an image batch's text fields (B, L) / (B, M), sentence b as ``text_ids_2`` /
    ``text_atts_2`` (B, L2), and ``pair_ids`` (B,) long (the line index, for hard-negative exclusion)."""
    batch = text_batch([s["a"] for s in samples], pad_id, max_masks)
    second = text_batch([s["b"] for s in samples], pad_id, 1)
    batch["text_ids_2"], batch["text_atts_2"] = second["text_ids"], second["text_atts"]
    batch["pair_ids"] = torch.tensor([s["index"] for s in samples], dtype=torch.long)
    return batch


def para_config(cfg: PretrainDataConfig, view: CrossViewDataConfig) -> PretrainDataConfig:
    """The data settings of parallel text: its own length and masking (official ``texts_para``)."""
    return dataclasses.replace(
        cfg, max_tokens=view.para_max_tokens, max_words=view.para_max_tokens, **dataclasses.asdict(view.para_masking)
    )


def caption_config(cfg: PretrainDataConfig, view: CrossViewDataConfig) -> PretrainDataConfig:
    """Image and region captions with CCLM's masking (rate 0.4, at most 12, no whole-word expansion)."""
    return dataclasses.replace(cfg, **dataclasses.asdict(view.caption_masking))


# ---------------------------------------------------------------------------------------------- files
@dataclass(frozen=True)
class CrossViewFiles:
    """The CCLM training streams: multilingual image lines, parallel text and (optional) region lines."""

    root: Path
    image: tuple[Path, ...] = ()
    para: tuple[Path, ...] = ()
    region: tuple[Path, ...] = ()

    @classmethod
    def find(cls, root: str | Path, split: str, image_root: Path | None = None) -> CrossViewFiles:
        """By name under a data root: ``image_text_multilingual*.jsonl`` (else ``image_text*.jsonl``),
        ``para_text*.jsonl`` and ``region*.jsonl`` in the first folder of :func:`search_folders` holding any."""
        root = Path(root)
        for folder in search_folders(root, split):
            image = _glob(folder, "image_text_multilingual") or _glob(folder, "image_text")
            found = cls(image_root or root, image, _glob(folder, "para_text"), _glob(folder, "region"))
            if found.image or found.para:
                return found
        return cls(image_root or root)

    @classmethod
    def from_sources(cls, root: str | Path, sources: PretrainDataFiles) -> CrossViewFiles:
        """Explicit files by the official CCLM keys: ``train_file`` (multilingual image lines),
        ``train_file_text`` (parallel text), ``train_file_regions``; a missing path is FileNotFoundError."""
        root = Path(root)
        streams = {}
        for kind, key in (("image", "train_file"), ("para", "train_file_text"), ("region", "train_file_regions")):
            paths: list[Path] = []
            for value in entries(getattr(sources, key)):
                path = resolve_under(root, value)
                if not path.exists():
                    raise FileNotFoundError(f"pretrain: {key} entry {value!r} not found (looked for {path})")
                paths += shard_files(path)
            streams[kind] = tuple(paths)
        image_root = resolve_under(root, sources.image_root) if sources.image_root else root
        return cls(image_root, **streams)


def _glob(folder: Path, stem: str) -> tuple[Path, ...]:
    # image_text*.jsonl would also match image_text_multilingual.jsonl: the stem must be followed by a
    # shard suffix, not by another name.
    paths = sorted(p for p in folder.glob(f"{stem}*.jsonl") if not p.name[len(stem) :].startswith("_multilingual"))
    return tuple(validate.require_regular_file(p, f"{stem} stream") for p in paths)


def build_cross_view_streams(
    files: CrossViewFiles,
    tokenizer: Any,
    cfg: PretrainDataConfig,
    view: CrossViewDataConfig,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    num_threads: int = 0,
    bad: BadRecords | None = None,
) -> dict[str, PretrainStream]:
    """``{"para", "image", "region"}`` streams (those whose files exist); image and para are required."""
    if not files.image or not files.para:
        missing = "image–caption lines" if not files.image else "parallel text (para_text*.jsonl / train_file_text)"
        raise FileNotFoundError(f"CCLM pre-training needs {missing} under {files.root}")
    captions = caption_config(cfg, view)
    streams = {
        "para": ParallelTextDataset(
            files.para, files.root, tokenizer, para_config(cfg, view), seed=seed, bad=bad, view=view
        ),
        "image": MultilingualImageTextDataset(
            files.image, files.root, tokenizer, captions, seed=seed, bad=bad, view=view
        ),
    }
    batch_sizes = {"para": view.para_batch_size, "image": cfg.image_batch_size}
    out = {
        kind: PretrainStream(d, batch_sizes[kind], seed, rank, world_size, num_threads) for kind, d in streams.items()
    }
    if files.region:
        regions = RegionTextDataset(files.region, files.root, tokenizer, captions, seed=seed, bad=bad)
        out["region"] = PretrainStream(regions, cfg.max_images_per_region_batch, seed, rank, world_size, num_threads)
    return out


# ---------------------------------------------------------------------------------------------- schedule
class CrossViewSchedule:
    """The official CCLM iteration as a stream of single-kind batches ``{kind: batch}``, one per optimizer step.

    Iteration ``i``: a ``para`` batch (with probability ``para_prob``, official ``texts_para.iter_perc`` = 1),
    then the main batch: ``image``, or with a region stream a ``region`` batch with probability
    ``region_prob`` (0.5) and ``image`` otherwise, and both (region first) on iteration 0, as the official
    ``Pretrain.py``. Each entry repeats ``repeat`` times (the loop's ``grad_accum`` micro-batches of one step).

    The coins are keyed by ``(seed, iteration)``, not drawn from a process RNG: every rank takes the same
    kind at the same step (the official coins are seeded per rank, so DDP ranks could all-reduce different
    kinds), and the plan after a resume is the one of the uninterrupted run. The state is the iteration,
    the position in it, and every stream's own state.
    """

    def __init__(
        self,
        streams: Mapping[str, StatefulIterator],
        seed: int = 0,
        para_prob: float = 1.0,
        region_prob: float = 0.5,
        repeat: int = 1,
    ) -> None:
        if "image" not in streams:
            raise ValueError(f"the CCLM schedule needs an image stream, got {sorted(streams)}")
        if repeat < 1 or not 0.0 <= para_prob <= 1.0 or not 0.0 <= region_prob <= 1.0:
            raise ValueError(
                f"bad schedule settings: repeat={repeat}, para_prob={para_prob}, region_prob={region_prob}"
            )
        self.streams, self.seed = dict(streams), seed
        self.para_prob, self.region_prob, self.repeat = para_prob, region_prob, repeat
        self.iteration, self.position = 0, 0

    def plan(self, iteration: int) -> list[str]:
        """The batch kinds of ``iteration``, in order (one optimizer step each)."""
        coins = random.Random(f"grainvl:cclm:schedule:{self.seed}:{iteration}")
        para, region = coins.random() < self.para_prob, coins.random() < self.region_prob
        kinds = ["para"] if para and "para" in self.streams else []
        if "region" not in self.streams:
            return [*kinds, "image"]
        if iteration == 0:
            return [*kinds, "region", "image"]
        return [*kinds, "region" if region else "image"]

    def steps(self, iterations: int) -> int:
        """Optimizer steps of the first ``iterations`` iterations."""
        return sum(len(self.plan(i)) for i in range(iterations))

    def iterations_for(self, steps: int) -> int:
        """Iterations that ``steps`` optimizer steps start (the last may be cut short): the scheduler's length."""
        iterations, done = 0, 0
        while done < steps:
            done += len(self.plan(iterations))
            iterations += 1
        return iterations

    @property
    def ends_iteration(self) -> bool:
        """Whether the batch handed out last finished its iteration (the cursor sits at the next one's start)."""
        return self.position == 0 and self.iteration > 0

    def __iter__(self) -> CrossViewSchedule:
        return self

    def __next__(self) -> dict[str, Any]:
        plan = self.plan(self.iteration)
        kind = plan[self.position // self.repeat]
        batch = {kind: next(self.streams[kind])}
        self.position += 1
        if self.position == len(plan) * self.repeat:
            self.iteration, self.position = self.iteration + 1, 0
        return batch

    def state_dict(self) -> dict[str, Any]:
        streams = {name: stream.state_dict() for name, stream in self.streams.items()}
        return {"iteration": self.iteration, "position": self.position, "repeat": self.repeat, "streams": streams}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["repeat"]) != self.repeat or set(state["streams"]) != set(self.streams):
            raise ValueError(
                f"cannot resume the CCLM schedule: saved repeat={state['repeat']} and streams "
                f"{sorted(state['streams'])}, this run has repeat={self.repeat} and {sorted(self.streams)}"
            )
        for name, stream in self.streams.items():
            stream.load_state_dict(state["streams"][name])
        self.iteration, self.position = int(state["iteration"]), int(state["position"])


def caption_languages(records: Sequence[Record]) -> list[str]:
    """Every language of ``{lang: caption}`` captions among ``records``, in first-seen order."""
    seen: dict[str, None] = {}
    for record in records:
        value = record.get("caption", record.get("desc"))
        if isinstance(value, dict):
            seen.update(dict.fromkeys(value))
    return list(seen)
