"""IGLUE-style cross-lingual tasks (davinci_cclm_vlue.md §B.5–B.7): ``xvnli``, ``xgqa``, ``marvl``,
``xflickrco`` and ``multi_retrieval``.

The protocol (zero-shot cross-lingual transfer): fine-tune on **English** train, then test every language
that has a test file. :meth:`CrossLingualTask.evaluate` returns each language's metrics as ``metric@lang``
and the task score ``metric``, the mean over the **non-English** languages (IGLUE's average excludes
English, e-bug/iglue #1; with English alone it is the English score). ``grainvl.bench.results.metric_language``
splits the keys back into ``(metric, lang)`` for the results rows.

Heads (official CCLM fine-tuning models):

* ``xvnli``: fusion ``[CLS]`` of (image, hypothesis ``sentence2``) → ``build_mlp(H, 3)``; labels
  contradiction / entailment / neutral = 0 / 1 / 2; SNLI's ``"-"`` (no consensus) is dropped.
* ``xgqa``: **answer classification** over the English training answers (the issue's choice; the
  official CCLM ``VQAModel`` ranks answers with a generative decoder): :class:`VQAModule` with
  ``head="classifier"``, soft-label cross-entropy on the ``label`` scores; accuracy = the predicted
  answer's label score (volta's GQA score), in percent.
* ``marvl``: the NLVR2 head (:class:`~grainvl.tasks.nlvr.NLVRModule`) on MaRVL lines converted by
  :func:`~grainvl.data.formats.iglue.marvl_to_xvlm`.
* ``xflickrco``: the retrieval task (ITC + ITM fine-tuning, ITC top-k then ITM re-rank); IR/TR R@1 are
  ``img_r1`` / ``txt_r1``.
* ``multi_retrieval`` (Multi30K / xCOCO style): trained on the English retrieval split, tested on every
  language of ``annotations/pretrain/{split}/image_text_multilingual.jsonl``; the score is ``r_mean``,
  mean recall = mean(TR mean, IR mean) over R@1/5/10.

Files, per task, language and split (first found): the world's ``annotations/iglue/<task>/<lang>/<split>.<ext>``,
then the IGLUE release (``XVNLI/annotations/<lang>/<split>.jsonl``, ``xFlickrCO/annotations/<lang>/...``,
``xGQA/annotations/few_shot/<lang>/<split>.json``, ``marvl/zero_shot/annotations/marvl-<lang>.jsonl`` as
MaRVL's test). The English train file may also be given explicitly (``files.train_file``).

Options: ``lang`` (None: every language; a code: only that one), ``translate_test`` (evaluate each test
item on its **English side**: the release's ``annotations_machine-translate`` file when there is one, else
the English test item with the same id; the world's files are aligned by id), ``shots`` (train on the
first N items of ``lang``'s few-shot file ``train_<N>``, else its ``train``, else its ``dev`` file instead
of English train; the finetune recipe's ``--shots``).
"""

from __future__ import annotations

import abc
import copy
import json
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from grainvl.data.downstream import (
    RecordsDataset,
    RetrievalEvalSet,
    RetrievalTrainDataset,
    make_loader,
    pad_texts,
    read_records,
    tokenise,
)
from grainvl.data.downstream_gen import collate_vqa
from grainvl.data.formats import iglue
from grainvl.data.iterators import StatefulIterator
from grainvl.data.masking import pre_question
from grainvl.data.pretrain import (
    EvalImages,
    ImageTextEval,
    PretrainDataConfig,
    PretrainText,
    eval_image_text,
    open_rgb,
)
from grainvl.data.transforms import build_transform
from grainvl.errors import DataError
from grainvl.models.xvlm import XVLM, _init_linear, build_mlp
from grainvl.tasks.base import (
    DataOptions,
    DownstreamTask,
    TaskModule,
    data_files,
    image_root,
    inference_call,
    model_data_config,
    resolve_split,
    write_json_result,
)
from grainvl.tasks.nlvr import NLVRModule
from grainvl.tasks.retrieval import RetrievalModule, evaluate_retrieval
from grainvl.tasks.vqa import VQAModule, predict_answers

Record = dict[str, Any]
ENGLISH = "en"
XVNLI_CLASSES = ("contradiction", "entailment", "neutral")  # official label ids 0 / 1 / 2
# The world's and the release's folder and file extension per task.
EXTENSIONS = {"xvnli": ".jsonl", "xgqa": ".json", "marvl": ".jsonl", "xflickrco": ".jsonl"}
RELEASE_FOLDERS = {
    "xvnli": "XVNLI/annotations",
    "xgqa": "xGQA/annotations/few_shot",
    "marvl": "marvl/few_shot/annotations",
    "xflickrco": "xFlickrCO/annotations",
}
TEXT_FIELDS = {"xvnli": "sentence2", "xgqa": "sent", "marvl": "caption", "xflickrco": "sentences"}
VALIDATORS = {
    "xvnli": iglue.check_xvnli_record,
    "xgqa": iglue.check_xgqa_record,
    "marvl": iglue.check_marvl_record,
    "xflickrco": iglue.check_xflickrco_record,
}


# ---------------------------------------------------------------------------------------------- files
def iglue_file(world: Path, task: str, lang: str, split: str) -> Path | None:
    """The ``task`` file of ``lang``'s ``split`` (``train``, ``dev``, ``test``, ``train_48``), None if absent."""
    ext = EXTENSIONS[task]
    candidates = [world / "annotations" / "iglue" / task / lang / f"{split}{ext}"]
    if task == "marvl":  # MaRVL's release: one zero-shot test file per language, few-shot files beside it
        if split == "test":
            candidates.append(world / "marvl" / "zero_shot" / "annotations" / f"marvl-{lang}.jsonl")
        candidates.append(world / RELEASE_FOLDERS[task] / f"marvl-{lang}_{split.replace('_', '')}.jsonl")
    else:
        candidates.append(world / RELEASE_FOLDERS[task] / lang / f"{split}{ext}")
    return next((p for p in candidates if p.is_file()), None)


def translated_file(world: Path, task: str, lang: str) -> Path | None:
    """The release's machine-translated (to English) test file of ``lang``, if it ships one."""
    folder = {"xvnli": "XVNLI", "xflickrco": "xFlickrCO"}.get(task)
    if folder is not None:
        base = world / folder / "annotations_machine-translate" / lang
        candidates = [base / "test.jsonl", base / "test_gmt.jsonl"]
    elif task == "marvl":
        candidates = [world / "marvl" / "zero_shot" / "annotations_machine-translate" / f"marvl-{lang}_gmt.jsonl"]
    else:
        return None
    return next((p for p in candidates if p.is_file()), None)


def language_folders(world: Path, task: str) -> list[str]:
    """Every language code with a folder (or a MaRVL file) for ``task``, sorted."""
    found: set[str] = set()
    for base in (world / "annotations" / "iglue" / task, world / RELEASE_FOLDERS[task]):
        if base.is_dir():
            found |= {p.name for p in base.iterdir() if p.is_dir()}
    marvl_tests = world / "marvl" / "zero_shot" / "annotations"
    if task == "marvl" and marvl_tests.is_dir():
        found |= {p.stem.removeprefix("marvl-") for p in marvl_tests.glob("marvl-*.jsonl")}
    return sorted(found)


def non_english_mean(per_lang: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the non-English languages (IGLUE's average); English alone: its own."""
    langs = [lang for lang in per_lang if lang != ENGLISH] or list(per_lang)
    if not langs:
        return {}
    metrics = [m for m in per_lang[langs[0]] if all(m in per_lang[lang] for lang in langs)]
    return {m: sum(per_lang[lang][m] for lang in langs) / len(langs) for m in metrics}


def alignment_key(task: str, record: Record) -> str:
    """The id that ties one test item across languages (the world's MaRVL ids are ``<lang>-<item>``)."""
    if task == "xvnli":
        return str(record["pairID"])
    if task == "xgqa":
        return str(record["question_id"])
    if task == "marvl":
        return str(record["id"]).removeprefix(f"{record['language']}-")
    return str(record["id"])


def english_side(task: str, records: list[Record], positions: list[str], english: Path, path: Path) -> list[Record]:
    """``records`` with their text replaced by the English test item of the same id (translate-test)."""
    en_records, _ = read_records(english, VALIDATORS[task], task)
    by_key = {alignment_key(task, r): r for r in en_records}
    field = TEXT_FIELDS[task]
    out = []
    for record, where in zip(records, positions):
        source = by_key.get(alignment_key(task, record))
        if source is None:
            reason = f"translate-test: no English item with id {alignment_key(task, record)!r} in {english}"
            raise DataError(path, where, reason)
        out.append({**record, field: source[field]})
    return out


# ---------------------------------------------------------------------------------------------- datasets
EnglishSide = Callable[[list[Record], list[str]], list[Record]]
"""Translate-test: ``(records, positions) -> records`` with the English text swapped in."""


def _transform(cfg: PretrainDataConfig, train: bool) -> Any:
    # Never mirrored: hypotheses, questions and MaRVL statements talk about left and right.
    kind = "finetune" if train else "test"
    return build_transform(kind, cfg.resolution, cfg.mean, cfg.std, augment=cfg.augment, hflip=False)


class _IGLUEDataset(RecordsDataset):
    """A :class:`RecordsDataset` of one IGLUE file with the un-mirrored transform and the translate-test hook."""

    english: EnglishSide | None = None

    def __init__(
        self,
        path: Path,
        root: Path,
        tokenizer: Any,
        cfg: PretrainDataConfig,
        train: bool,
        seed: int,
        limit: int,
        english: EnglishSide | None = None,
    ) -> None:
        self.english = english
        super().__init__(path, root, tokenizer, cfg, VALIDATORS[self.kind], train, seed, limit)

    def _setup(self) -> None:
        if self.english is not None:
            self.records = self.english(self.records, self.positions)
        self.transform = _transform(self.cfg, self.train)

    def picture(self, name: str, index: int, epoch: int) -> torch.Tensor:
        """The image ``name`` (relative to the root) under the split's transform: (3, R, R)."""
        picture = open_rgb(name, self.root, True, self.path, self.positions[index])
        return self.transform(picture, rng=self.rng(index, epoch))[0]


class XVNLIDataset(_IGLUEDataset):
    """XVNLI lines → ``{"image" (3, R, R), "text_ids" (hypothesis), "label" 0/1/2, "index"}``; "-" lines dropped."""

    kind = "xvnli"

    def _setup(self) -> None:
        super()._setup()
        kept = [(r, w) for r, w in zip(self.records, self.positions) if r["gold_label"] in XVNLI_CLASSES]
        if not kept:
            raise DataError(self.path, "file", "no XVNLI item with a gold label (every line is '-')")
        self.records, self.positions = [r for r, _ in kept], [w for _, w in kept]

    def sample(self, index: int, epoch: int) -> dict[str, Any]:
        record = self.records[index]
        return {
            "image": self.picture(iglue.image_file(record["Flikr30kID"]), index, epoch),
            "text_ids": self._ids(record["sentence2"], index),
            "label": XVNLI_CLASSES.index(record["gold_label"]),
            "index": index,
        }

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            **self._text_batch(samples),  # image (B, 3, R, R), text (B, L)
            "label": torch.tensor([s["label"] for s in samples], dtype=torch.long),  # (B,)
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),  # (B,)
        }


class MarvlDataset(_IGLUEDataset):
    """MaRVL lines → NLVR2 batches ``{"image" (2, 3, R, R) [left, right], "text_ids", "label" 0/1, "index"}``."""

    kind = "marvl"

    def _setup(self) -> None:
        super()._setup()
        self.records = iglue.marvl_to_xvlm(self.records)  # the official marvl_preproc conversion

    def sample(self, index: int, epoch: int) -> dict[str, Any]:
        record = self.records[index]
        images = torch.stack([self.picture(name, index, epoch) for name in record["images"]])  # (2, 3, R, R)
        text_ids = self._ids(record["sentence"], index)
        return {"image": images, "text_ids": text_ids, "label": int(record["label"]), "index": index}

    collate = XVNLIDataset.collate


class XGQADataset(_IGLUEDataset):
    """xGQA (volta list) → VQA batches (:func:`collate_vqa`): answers are the ``label`` keys, weights their scores."""

    kind = "xgqa"
    answer_index: dict[str, int] | None = None

    def sample(self, index: int, epoch: int) -> dict[str, Any]:
        record = self.records[index]
        labels = record.get("label", {})
        return {
            "image": self.picture(iglue.image_file(record["img_id"]), index, epoch),
            "question": pre_question(record["sent"], max(self.cfg.max_words, 50)),
            "question_id": record["question_id"],
            "answers": list(labels) or [""],  # an unlabelled test question still collates
            "weights": [float(v) for v in labels.values()] or [0.0],
        }

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_vqa(samples, self.tokenizer, self.cfg.max_tokens if self.train else None, self.answer_index)


class XFlickrCOTrainDataset(RetrievalTrainDataset):
    """xFlickr&CO lines as retrieval training pairs ``{image: img_path, caption: sentences, image_id: id}``."""

    def __init__(self, path: Path, root: Path, tokenizer: Any, cfg: PretrainDataConfig, seed: int, limit: int) -> None:
        self.kind, self.video = "xflickrco", False
        # The retrieval dataset's reader wants ALBEF records: read xFlickr&CO's, then convert.
        RecordsDataset.__init__(self, path, root, tokenizer, cfg, iglue.check_xflickrco_record, True, seed, limit)
        self.records = [{"image": r["img_path"], "caption": r["sentences"], "image_id": r["id"]} for r in self.records]
        ids: dict[str, int] = {}
        self.idx = [ids.setdefault(r["image_id"], len(ids)) for r in self.records]  # equal ids: one image
        self.transform = self.transform_no_flip = _transform(cfg, True)


def xflickrco_eval_set(
    path: Path, root: Path, tokenizer: Any, cfg: PretrainDataConfig, limit: int, english: EnglishSide | None
) -> RetrievalEvalSet:
    """Every sentence of every image of an xFlickr&CO test file (images de-duplicated by ``img_path``)."""
    records, positions = read_records(path, iglue.check_xflickrco_record, "xflickrco")
    if limit > 0:
        records, positions = records[:limit], positions[:limit]
    if english is not None:
        records = english(records, positions)
    text = PretrainText(tokenizer, cfg)
    item_of: dict[str, int] = {}
    sources: list[tuple[str, bool, str]] = []
    rows, captions, text_item = [], [], []
    for record, where in zip(records, positions):
        if record["img_path"] not in item_of:
            item_of[record["img_path"]] = len(sources)
            sources.append((record["img_path"], True, where))
        for sentence in record["sentences"]:
            rows.append(tokenise(text, sentence, path, where))
            captions.append(sentence)
            text_item.append(item_of[record["img_path"]])
    text_ids, text_atts = pad_texts(rows, text.pad_id)  # (T, L)
    item_texts: list[list[int]] = [[] for _ in sources]
    for t, i in enumerate(text_item):
        item_texts[i].append(t)
    images = EvalImages(sources, root, path, cfg)
    data = ImageTextEval(images, captions, text_ids, text_atts, torch.tensor(text_item), item_texts)
    return RetrievalEvalSet(data, [s[0] for s in sources], False)


# ---------------------------------------------------------------------------------------------- modules
class XVNLIModule(TaskModule):
    """Fusion ``[CLS]`` of (image, hypothesis) → ``cls_head`` MLP → 3 classes (official ``XVLM4XVNLI``)."""

    def __init__(self, model: XVLM) -> None:
        super().__init__(model)
        self.cls_head = build_mlp(model.config.text.hidden_size, len(XVNLI_CLASSES))
        self.cls_head.apply(_init_linear)

    def logits(self, image: torch.Tensor, text_ids: torch.Tensor, text_atts: torch.Tensor) -> torch.Tensor:
        """image (B, 3, R, R), hypothesis (B, L) → (B, 3)."""
        vis, vis_atts = self.model.encode_image(image)  # (B, 1+N, D)
        fused = self.model.encode_multimodal(text_ids, text_atts, vis, vis_atts)  # (B, L, H)
        return self.cls_head(fused[:, 0])

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        logits = self.logits(batch["image"], batch["text_ids"], batch["text_atts"])
        acc = float((logits.argmax(-1) == batch["label"]).float().mean())
        return {"xvnli_loss": F.cross_entropy(logits, batch["label"])}, {"train_acc": acc}


# ---------------------------------------------------------------------------------------------- the protocol
class CrossLingualTask(DownstreamTask):
    """A task tested per language (see the module docstring); subclasses implement the per-language parts."""

    default_options: ClassVar[dict[str, Any]] = {"lang": None, "translate_test": False, "shots": 0}

    # ------------------------------------------------------------------ files
    def languages(self, world: Path, split: str) -> list[str]:
        """The languages with a ``split`` file (only ``options["lang"]`` when it is set), English first."""
        wanted = [self.options["lang"]] if self.options["lang"] else language_folders(world, self.name)
        found = [lang for lang in wanted if iglue_file(world, self.name, lang, resolve_split(split)) is not None]
        return sorted(found, key=lambda lang: (lang != ENGLISH, lang))

    def train_file(self, world: Path) -> tuple[Path, int]:
        """(file, record limit) training reads: English train, or ``lang``'s first ``shots`` items.

        English train: the world's / release's ``en/train`` file, else the configured ``files.train_file``.
        """
        shots, lang = int(self.options["shots"]), self.options["lang"]
        if shots <= 0:
            found = iglue_file(world, self.name, ENGLISH, "train")
            return (found, 0) if found is not None else (data_files(world, self.name, "train")[0], 0)
        if not lang:
            raise ValueError(f"{self.name}: shots need a target language (option 'lang')")
        for split in (f"train_{shots}", "train", "dev"):
            found = iglue_file(world, self.name, lang, split)
            if found is not None:
                return found, shots
        raise FileNotFoundError(
            f"{self.name}: no few-shot file for {lang!r} (train_{shots}, train or dev) under {world}"
        )

    def test_file(self, world: Path, split: str, lang: str) -> tuple[Path, EnglishSide | None]:
        """(file, translate-test hook or None): translate-test reads the release's machine-translated file
        when it ships one, else swaps in the English item with the same id."""
        split = resolve_split(split)
        path = iglue_file(world, self.name, lang, split)
        if path is None:
            raise FileNotFoundError(f"{self.name}: no {split!r} file for language {lang!r} under {world}")
        if not self.options["translate_test"] or lang == ENGLISH:
            return path, None
        translated = translated_file(world, self.name, lang)
        if translated is not None:
            return translated, None
        english = iglue_file(world, self.name, ENGLISH, split)
        if english is None:
            raise FileNotFoundError(f"{self.name}: translate-test needs the English {split!r} file under {world}")
        return path, lambda records, positions: english_side(self.name, records, positions, english, path)

    # ------------------------------------------------------------------ the interface
    def evaluate(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, out_dir: Path | None = None
    ) -> dict[str, float]:
        """``metric@lang`` for every language with the split, and ``metric``: the non-English mean."""
        world = Path(world)
        langs = self.languages(world, split)
        if not langs:
            print(f"{self.name}: no {resolve_split(split)!r} file in any language: nothing scored", file=sys.stderr)
            return {}
        per_lang = {lang: self.evaluate_language(module, tokenizer, world, split, lang, out_dir) for lang in langs}
        per_lang = {lang: m for lang, m in per_lang.items() if m}  # ranks other than 0 get {}
        flat = {f"{metric}@{lang}": value for lang, m in per_lang.items() for metric, value in m.items()}
        return {**non_english_mean(per_lang), **flat} if per_lang else {}

    @abc.abstractmethod
    def evaluate_language(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str, out_dir: Path | None
    ) -> dict[str, float]:
        """Metrics of one language's ``split`` file (collective; rank 0 gets them)."""

    def latency_call(self, module: TaskModule, tokenizer: Any, world: Path, batch_size: int) -> Callable[[], Any]:
        lang = (self.languages(world, "test") or [ENGLISH])[0]
        return self.latency_for(module, tokenizer, world, lang, batch_size)

    @abc.abstractmethod
    def latency_for(
        self, module: TaskModule, tokenizer: Any, world: Path, lang: str, batch_size: int
    ) -> Callable[[], Any]:
        """One inference on ``batch_size`` items of ``lang``'s test file."""


class _RecordsTask(CrossLingualTask):
    """A task whose train and test files are read record by record (XVNLI, MaRVL, xGQA): one train stream and one
    per-language test set, built by each task's ``dataset``."""

    @abc.abstractmethod
    def dataset(
        self, module: TaskModule, tokenizer: Any, world: Path, path: Path, train: bool, limit: int, english: Any = None
    ) -> _IGLUEDataset:
        """The records of ``path`` (``english``: the aligned English items, for translate-test)."""

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        path, limit = self.train_file(world)
        data = self.dataset(module, tokenizer, world, path, True, limit or cfg.max_train_samples)
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_dataset(self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str) -> _IGLUEDataset:
        path, english = self.test_file(world, split, lang)
        return self.dataset(module, tokenizer, world, path, False, self.data.max_eval_samples, english)


class _Classification(_RecordsTask):
    """XVNLI and MaRVL: a classifier over (image[s], text) scored by accuracy."""

    dataset_class: ClassVar[type[_IGLUEDataset]]

    def dataset(
        self, module: TaskModule, tokenizer: Any, world: Path, path: Path, train: bool, limit: int, english: Any = None
    ) -> _IGLUEDataset:
        dcfg = model_data_config(module.model, augment=self.data.augment and train)
        root = image_root(world, self.name)
        return self.dataset_class(path, root, tokenizer, dcfg, train, self.data.seed, limit, english)

    @torch.no_grad()
    def evaluate_language(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str, out_dir: Path | None
    ) -> dict[str, float]:
        module.eval()
        data = self.eval_dataset(module, tokenizer, world, split, lang)
        predictions = []
        for indices, _, batch in self.eval_batches(module, data):
            pred = module.logits(batch["image"], batch["text_ids"], batch["text_atts"]).argmax(-1)  # type: ignore[operator]
            for i, p, y in zip(indices, pred.tolist(), batch["label"].tolist()):
                predictions.append({"index": i, "pred": int(p), "label": int(y)})
        merged = self.publish(predictions, "index", out_dir, f"{self.name}_{resolve_split(split)}_{lang}.json")
        if not merged:
            return {}
        return {"acc": 100.0 * sum(p["pred"] == p["label"] for p in merged) / len(merged)}

    def latency_for(
        self, module: TaskModule, tokenizer: Any, world: Path, lang: str, batch_size: int
    ) -> Callable[[], Any]:
        batch = self.latency_batch(module, self.eval_dataset(module, tokenizer, world, "test", lang), batch_size)
        logits = module.logits  # type: ignore[attr-defined]
        return inference_call(module, lambda: logits(batch["image"], batch["text_ids"], batch["text_atts"]))


class XVNLITask(_Classification):
    """XVNLI, 3-way visual entailment on the hypothesis; metric ``acc`` (percent)."""

    name = "xvnli"
    primary_metric = "acc"
    dataset_class = XVNLIDataset

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> XVNLIModule:
        return XVNLIModule(model)


class MarvlTask(_Classification):
    """MaRVL with the NLVR2 head (:class:`~grainvl.tasks.nlvr.NLVRModule`); metric ``acc`` (percent)."""

    name = "marvl"
    primary_metric = "acc"
    dataset_class = MarvlDataset

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> NLVRModule:
        return NLVRModule(model)


class XGQATask(_RecordsTask):
    """xGQA: classification over the English training answers; metric ``acc`` (percent, label score)."""

    name = "xgqa"
    primary_metric = "acc"
    default_options: ClassVar[dict[str, Any]] = {**CrossLingualTask.default_options, "answers": None}

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> VQAModule:
        if self.options["answers"] is None:  # recorded in task.json so the head rebuilds with the same rows
            self.options["answers"] = self.answer_vocabulary(world)
        return VQAModule(model, self.options["answers"], tokenizer, head="classifier")

    def answer_vocabulary(self, world: Path) -> list[str]:
        """Every answer of the English training labels, most frequent first (ties alphabetical)."""
        english = with_options(self, shots=0)
        path, _ = english.train_file(world)
        records, _ = read_records(path, iglue.check_xgqa_record, self.name)
        counts = Counter(answer for r in records for answer in r.get("label", {}))
        return sorted(counts, key=lambda a: (-counts[a], a))

    def dataset(
        self, module: TaskModule, tokenizer: Any, world: Path, path: Path, train: bool, limit: int, english: Any = None
    ) -> XGQADataset:
        assert isinstance(module, VQAModule)
        dcfg = model_data_config(module.model, augment=self.data.augment and train)
        data = XGQADataset(path, image_root(world, self.name), tokenizer, dcfg, train, self.data.seed, limit, english)
        data.answer_index = module.answer_index if train else None
        return data

    @torch.no_grad()
    def evaluate_language(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str, out_dir: Path | None
    ) -> dict[str, float]:
        assert isinstance(module, VQAModule)
        data = self.eval_dataset(module, tokenizer, world, split, lang)
        labels = self.english_labels(world, split, lang, data.records)
        # GQA's submission format: [{"questionId", "prediction"}].
        predictions = [{"questionId": q, "prediction": a} for q, a in predict_answers(self, module, data)]
        merged = self.publish(predictions, "questionId", out_dir, f"{self.name}_{resolve_split(split)}_{lang}.json")
        if not merged:
            return {}
        return {"acc": 100.0 * sum(labels[p["questionId"]].get(p["prediction"], 0.0) for p in merged) / len(merged)}

    def english_labels(self, world: Path, split: str, lang: str, records: list[Record]) -> dict[str, dict[str, float]]:
        """``{question_id: label}`` scored against. xGQA's answers are English in every language (only questions
        are translated); the world translates them too, so a test item is scored on the label of the English
        item with the same ``question_id`` when the English file has it."""
        own = {r["question_id"]: r.get("label", {}) for r in records}
        english = iglue_file(world, self.name, ENGLISH, resolve_split(split))
        if lang == ENGLISH or english is None:
            return own
        en_records, _ = read_records(english, iglue.check_xgqa_record, self.name)
        en = {r["question_id"]: r.get("label", {}) for r in en_records}
        return {q: en.get(q, label) for q, label in own.items()}

    def latency_for(
        self, module: TaskModule, tokenizer: Any, world: Path, lang: str, batch_size: int
    ) -> Callable[[], Any]:
        assert isinstance(module, VQAModule)
        batch = self.latency_batch(module, self.eval_dataset(module, tokenizer, world, "test", lang), batch_size)
        return inference_call(
            module, lambda: module.predict(batch["image"], batch["question_ids"], batch["question_atts"])
        )


def with_options(task: CrossLingualTask, **options: Any) -> CrossLingualTask:
    """A copy of ``task`` with some options changed (the original keeps its own)."""
    twin = copy.copy(task)
    twin.options = {**task.options, **options}
    return twin


class _Retrieval(CrossLingualTask):
    """Retrieval tested per language: ITC + ITM fine-tuning, ITC top-k then ITM re-ranking (the retrieval task)."""

    primary_metric = "r_mean"
    default_options: ClassVar[dict[str, Any]] = {**CrossLingualTask.default_options, "k_test": 128, "score": "itm"}

    def build(self, model: XVLM, world: Path, tokenizer: Any) -> RetrievalModule:
        return RetrievalModule(model, itm=True)

    @abc.abstractmethod
    def eval_set(self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str) -> RetrievalEvalSet:
        """The split's evaluation set (each concrete task reads its own files)."""

    def evaluate_language(
        self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str, out_dir: Path | None
    ) -> dict[str, float]:
        data = self.eval_set(module, tokenizer, world, split, lang)
        metrics, predictions = evaluate_retrieval(
            module.model, data, int(self.options["k_test"]), self.options["score"], self.data.eval_batch_size
        )
        write_json_result(out_dir, f"{self.name}_{resolve_split(split)}_{lang}.json", predictions)
        return metrics

    def latency_for(
        self, module: TaskModule, tokenizer: Any, world: Path, lang: str, batch_size: int
    ) -> Callable[[], Any]:
        """One query batch: encode ``batch_size`` images and captions, ITC similarities, ITM on the pairs."""
        data = self.eval_set(module, tokenizer, world, "test", lang).data
        device = next(module.parameters()).device
        images = torch.stack([data.images[i % len(data.images)] for i in range(batch_size)]).to(device)
        texts = [data.image_text_index[i % len(data.images)][0] for i in range(batch_size)]
        text_ids, text_atts = data.text_ids[texts].to(device), data.text_atts[texts].to(device)
        model = module.model

        def run() -> torch.Tensor:
            vis, vis_atts = model.encode_image(images)
            text = model.encode_text(text_ids, text_atts)
            sim = model.image_feat(vis) @ model.text_feat(text).t()  # (B, B)
            return sim.diagonal() + model.itm_logits(model.fuse(text, text_atts, vis, vis_atts))[:, 1]

        return inference_call(module, run)


class XFlickrCOTask(_Retrieval):
    """xFlickr&CO retrieval; IR / TR R@1 are ``img_r1`` / ``txt_r1``, the score ``r_mean``."""

    name = "xflickrco"

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        path, limit = self.train_file(world)
        dcfg = model_data_config(module.model, augment=cfg.augment)
        root = image_root(world, self.name)
        data = XFlickrCOTrainDataset(path, root, tokenizer, dcfg, cfg.seed, limit or cfg.max_train_samples)
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_set(self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str) -> RetrievalEvalSet:
        path, english = self.test_file(world, split, lang)
        dcfg = model_data_config(module.model, augment=False)
        return xflickrco_eval_set(path, image_root(world, self.name), tokenizer, dcfg, self.data.max_eval_samples,
                                  english)  # fmt: skip


MULTILINGUAL_CAPTIONS = "image_text_multilingual.jsonl"


class MultiRetrievalTask(_Retrieval):
    """Multi30K / xCOCO-style multilingual retrieval: English retrieval train, every caption language tested.

    Test captions: ``annotations/pretrain/<split>/image_text_multilingual.jsonl`` (``caption: {lang: text}``),
    one gallery per language; translate-test scores every language on the English captions. ``--shots``
    is not offered (no per-language training captions in the world's retrieval files).
    """

    name = "multi_retrieval"

    def captions_file(self, world: Path, split: str) -> Path:
        return world / "annotations" / "pretrain" / resolve_split(split) / MULTILINGUAL_CAPTIONS

    def languages(self, world: Path, split: str) -> list[str]:
        path = self.captions_file(world, split)
        if not path.is_file():
            return []
        with path.open(encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        caption = json.loads(first).get("caption", {})
        langs = sorted(caption) if isinstance(caption, dict) else [ENGLISH]
        if self.options["lang"]:
            langs = [lang for lang in langs if lang == self.options["lang"]]
        return sorted(langs, key=lambda lang: (lang != ENGLISH, lang))

    def train_file(self, world: Path) -> tuple[Path, int]:
        """The English retrieval train file (``annotations/retrieval/coco_train.json`` in a world)."""
        if int(self.options["shots"]) > 0:
            raise ValueError("multi_retrieval: --shots is not supported (English retrieval train only)")
        return data_files(world, "retrieval", "train")[0], 0

    def train_stream(
        self, module: TaskModule, tokenizer: Any, world: Path, cfg: DataOptions, rank: int, world_size: int
    ) -> StatefulIterator:
        self.data = cfg
        dcfg = model_data_config(module.model, augment=cfg.augment)
        train = self.train_file(world)[0]
        data = RetrievalTrainDataset(train, image_root(world, "retrieval"), tokenizer, dcfg, False, cfg.seed,
                                     cfg.max_train_samples)  # fmt: skip
        return make_loader(data, cfg.batch_size, cfg.seed, rank, world_size)

    def eval_set(self, module: TaskModule, tokenizer: Any, world: Path, split: str, lang: str) -> RetrievalEvalSet:
        shown = ENGLISH if self.options["translate_test"] else lang  # the aligned English caption of each image
        dcfg = model_data_config(module.model, augment=False, language=shown)
        path = self.captions_file(world, split)
        data = eval_image_text(world, resolve_split(split), tokenizer, dcfg, jsonl_path=path, image_root=world)
        return RetrievalEvalSet(data, [s[0] for s in data.images.sources], False)
