"""Where a task's files and images are: the world's layout, the official layouts, or explicit files.

One :class:`DataLayout` answers, for a task and a split, which annotation files to read
(:meth:`DataLayout.split_files`) and which folder image paths are relative to
(:meth:`DataLayout.image_root`). Fine-tuning, evaluation and ``grainvl data check`` all ask it, so
a file found by one is found by the others and an image resolves the same way everywhere.

Files are found, in this order:

1. explicit files (:class:`DataFiles`, the keys of the official X-VLM / X²-VLM configs:
   ``train_file``, ``val_file``, ``test_file``, ``answer_list``, ``image_root``, ``vqa_root``,
   ``vg_root``, ``ans2label_file``; X²-VLM's video-QA ``valid_file`` / ``img_rdir`` too); a relative
   path is tried under the data root, then under the working directory;
2. the world's layout, ``annotations/<task>/<official name>``;
3. the official names in the official folders: ``data/finetune/``, ``finetune/``, the root itself,
   ``<task folder>/`` and, for VQA v2 question/annotation pairs, any folder one level below the root.

Split names: ``val`` also finds ``dev`` files (NLVR2 ships ``nlvr_dev.json``) and VQA v2's
``val2014``; ``train`` finds ``train2014``; ``test`` finds ``test2015`` / ``test-dev2015``.

Tasks get the layout of a data root with :func:`layout_for`; a recipe that has explicit files
registers them first with :func:`register_layout`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.data.formats import vqa_v2
from grainvl.data.formats.validate import allow_outside_root, is_present, require_regular_file
from grainvl.errors import DataError
from grainvl.utils.fileio import read_json

TASK_FOLDERS = {
    "retrieval": "retrieval",
    "video_retrieval": "msrvtt",
    "vqa": "vqa",
    "nlvr2": "nlvr2",
    "grounding": "refcoco+",
    "captioning": "captioning",
    "videoqa": "msrvtt",
}
FILE_NAMES = {
    "retrieval": ("coco_{s}.json", "flickr30k_{s}.json"),
    "video_retrieval": ("msrvtt_ret_{s}.json",),
    "vqa": ("vqa_{s}.json",),
    "nlvr2": ("nlvr_{s}.json",),
    "grounding": ("refcoco+_{s}.json",),
    "captioning": ("coco_karpathy_{s}.json",),
    "videoqa": ("msrvtt_qa_{s}.jsonl", "msrvtt_qa_{s}.json"),
}
# Official names that carry more than the split: MSR-VTT retrieval ships the 7k / 9k training splits
# and the 1k-A test split (``msrvtt_ret_train7k.json``, ``msrvtt_ret_test1k.json``).
SPLIT_NAMES = {
    "video_retrieval": {
        "train": ("msrvtt_ret_train7k.json", "msrvtt_ret_train9k.json"),
        "test": ("msrvtt_ret_test1k.json",),
    },
}
# The video-QA answer vocabulary {answer: label}: the world's, X²-VLM's (ClipBERT's) and a prefixed one.
ANS2LABEL_NAMES = ("ans2label.json", "train_ans2label.json", "msrvtt_qa_ans2label.json")
SPLIT_SYNONYMS = {"val": ("val", "dev"), "dev": ("dev", "val")}
VQA_SUBTYPES = {"train": ("train2014",), "val": ("val2014",), "test": ("test2015", "test-dev2015")}
OFFICIAL_FOLDERS = ("data/finetune", "finetune", ".")
OFFICIAL_KEYS = (
    "train_file", "val_file", "test_file", "image_root", "vqa_root", "vg_root", "answer_list", "ans2label_file"
)  # fmt: skip
# X²-VLM's video-QA configs name two of them differently (``VQA_msrvtt.py``).
OFFICIAL_ALIASES = {"valid_file": "val_file", "img_rdir": "image_root"}


@dataclass
class DataFiles:
    """Explicit data files, named by the official X-VLM / X²-VLM config keys (one path or a list)."""

    train_file: list[str] | str | None = None
    val_file: list[str] | str | None = None
    test_file: list[str] | str | None = None  # several files: one split each, named by the file (refcoco+_val → val)
    image_root: str = ""  # image paths in the files are relative to this ("" : the data root)
    vqa_root: str = ""  # VQA images ("" : image_root)
    vg_root: str = ""  # Visual Genome QA images (records with "dataset": "vg")
    answer_list: str = ""  # VQA candidate answers ("" : answer_list.json, else the most frequent answers)
    ans2label_file: str = ""  # video-QA answer vocabulary ("" : ans2label.json / train_ans2label.json)
    allow_outside_root: bool = False  # records may name images outside the image roots (absolute, '..', links out)

    def empty(self) -> bool:
        return not any(getattr(self, k) for k in OFFICIAL_KEYS)


def as_list(value: list[str] | str | None) -> list[str]:
    if not value:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def split_of(path: str | Path) -> str:
    """The split an official file name names (``refcoco+_testA.json`` → ``testA``; ``*_test_ood`` → ``test_ood``)."""
    stem = Path(path).name.split(".")[0]
    if stem.endswith("_test_ood"):
        return "test_ood"
    return stem.rsplit("_", 1)[-1]


def _vqa_subtype(split: str) -> tuple[str, ...]:
    return (*VQA_SUBTYPES.get(split, ()), split)


@dataclass
class DataLayout:
    """The files and image folders of one data root (see the module docstring)."""

    root: Path
    files: DataFiles = field(default_factory=DataFiles)

    def __post_init__(self) -> None:
        self.root = Path(self.root)

    # ------------------------------------------------------------------ paths
    def resolve(self, value: str) -> Path:
        """An official config path: absolute, else under the data root, else under the working directory."""
        path = Path(value)
        if path.is_absolute():
            return path
        under_root = self.root / path
        return under_root if under_root.exists() or not path.exists() else path

    def image_root(self, task: str = "", source: str = "") -> Path:
        """The folder image paths of ``task``'s records are relative to (``source`` "vg": Visual Genome)."""
        f = self.files
        if source == "vg" and f.vg_root:
            return self.resolve(f.vg_root)
        if task == "vqa" and f.vqa_root:
            return self.resolve(f.vqa_root)
        return self.resolve(f.image_root) if f.image_root else self.root

    def image_roots(self) -> list[Path]:
        """Every folder this layout's record paths are relative to (data root, image, VQA and VG roots)."""
        roots = [self.root, self.image_root(), self.image_root("vqa"), self.image_root("", "vg")]
        return list(dict.fromkeys(roots))

    def permit_outside(self) -> None:
        """With ``files.allow_outside_root``, let records name files outside every image root (for this process)."""
        if self.files.allow_outside_root:
            for folder in self.image_roots():
                allow_outside_root(folder)

    # ------------------------------------------------------------------ splits
    def explicit_splits(self) -> dict[str, list[Path]]:
        """Splits named by the explicit files: ``train``, ``val`` and one per ``test_file`` entry.

        A named file that is there but is not a regular file (a folder, a broken symlink) is a DataError;
        a missing one is left to the reader ("file not found", or a skipped evaluation split).
        """
        out: dict[str, list[Path]] = {}
        if as_list(self.files.train_file):
            out["train"] = [self._explicit(p) for p in as_list(self.files.train_file)]
        if as_list(self.files.val_file):
            out["val"] = [self._explicit(p) for p in as_list(self.files.val_file)]
        tests = as_list(self.files.test_file)
        for value in tests:
            name = "test" if len(tests) == 1 else split_of(value)
            out.setdefault(name, []).append(self._explicit(value))
        return out

    def _explicit(self, value: str) -> Path:
        path = self.resolve(value)
        return require_regular_file(path, "configured file") if is_present(path) else path

    def search_folders(self, task: str) -> list[Path]:
        folders = [self.root / "annotations" / TASK_FOLDERS.get(task, task)]
        folders += [self.root / f for f in OFFICIAL_FOLDERS] + [self.root / TASK_FOLDERS.get(task, task)]
        return [f for f in dict.fromkeys(folders) if f.is_dir()]

    def split_files(self, task: str, split: str) -> list[Path]:
        """The files of ``task``'s ``split`` ([] when the split does not exist).

        VQA may answer with a VQA v2 pair ``[questions, annotations]`` (annotations absent on test).
        """
        explicit = self.explicit_splits()
        if explicit:
            return explicit.get(split, [])
        declared = declared_files(self.root)
        for s in SPLIT_SYNONYMS.get(split, (split,)):
            names = [n.format(s=s) for n in FILE_NAMES.get(task, ())] + list(SPLIT_NAMES.get(task, {}).get(s, ()))
            for folder in self.search_folders(task):
                for name in names:
                    found = expected_file(self.root, folder / name, declared, f"{task} {s} file")
                    if found is not None:
                        return [found]
        return self.vqa_v2_pair(split) if task == "vqa" else []

    def vqa_v2_pair(self, split: str) -> list[Path]:
        """``[questions, annotations?]`` of a VQA v2 split below the root (one folder level deep)."""
        folders = self.search_folders("vqa") + sorted(p for p in self.root.iterdir() if p.is_dir())
        for sub in _vqa_subtype(split):
            for folder in dict.fromkeys(folders):
                questions = folder / f"v2_OpenEnded_mscoco_{sub}_questions.json"
                if questions.is_file():
                    annotations = folder / f"v2_mscoco_{sub}_annotations.json"
                    return [questions, annotations] if annotations.is_file() else [questions]
        return []

    def vqa_annotations(self, split: str) -> Path | None:
        """The official annotation file that scores VQA ``split`` (None: score from the records' answers)."""
        for path in self.split_files("vqa", split):
            if path.name.endswith("_annotations.json"):
                return path
        world = self.root / "annotations" / "vqa" / f"v2_mscoco_{split}_annotations.json"
        return expected_file(self.root, world, declared_files(self.root), "VQA annotation file")

    def answer_list(self) -> Path | None:
        """``answer_list.json`` (explicit, the world's, or an official folder's); None: derive it."""
        if self.files.answer_list:
            return self.resolve(self.files.answer_list)
        declared = declared_files(self.root)
        for folder in self.search_folders("vqa"):
            found = expected_file(self.root, folder / "answer_list.json", declared, "VQA answer list")
            if found is not None:
                return found
        return None

    def ans2label(self) -> Path | None:
        """The video-QA ``{answer: label}`` file (explicit ``ans2label_file``, else an official name); None: none."""
        if self.files.ans2label_file:
            return self.resolve(self.files.ans2label_file)
        declared = declared_files(self.root)
        for folder in self.search_folders("videoqa"):
            for name in ANS2LABEL_NAMES:
                found = expected_file(self.root, folder / name, declared, "video-QA answer vocabulary")
                if found is not None:
                    return found
        return None

    def describe_missing(self, task: str, split: str) -> str:
        """One line saying where ``split`` was looked for."""
        if self.explicit_splits():
            return f"{task}: no {split!r} split among the configured files"
        names = ", ".join(
            [n.format(s=split) for n in FILE_NAMES.get(task, ())] + list(SPLIT_NAMES.get(task, {}).get(split, ()))
        )
        return f"{task}: no {split!r} split under {self.root} ({names})"


# ---------------------------------------------------------------------------------------------- manifests
MANIFEST = "manifest.json"  # a world's: {"files": {"relative/path": "<sha256 hex>"}, ...}


def manifest_files(manifest_path: Path) -> dict[str, str]:
    """The ``files`` mapping of a ``manifest.json`` (relative POSIX path → sha256 hex)."""
    manifest = read_json(manifest_path)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise DataError(manifest_path, None, "expected a 'files' object mapping relative paths to sha256 hex digests")
    return files


def declared_files(root: Path) -> frozenset[str] | None:
    """The files a world declares (its manifest's relative paths); None when ``root`` has no world manifest.

    What a world declares must be there: a declared annotation file that is missing or not a regular
    file is an error, not a stream or split that quietly does not exist. A ``manifest.json`` of another
    schema (a real dataset's own) declares nothing.
    """
    manifest = root / MANIFEST
    if not manifest.is_file():
        return None
    stat = manifest.stat()
    return _declared(str(manifest), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _declared(manifest: str, mtime_ns: int, size: int) -> frozenset[str] | None:
    """Read once per manifest version: layouts ask for every task and split."""
    del mtime_ns, size  # cache keys only: a rewritten manifest is read again
    doc = read_json(manifest)
    files = doc.get("files") if isinstance(doc, dict) else None
    return frozenset(files) if isinstance(files, dict) else None


def expected_file(root: Path, path: Path, declared: frozenset[str] | None, what: str) -> Path | None:
    """``path`` when it is there as a regular file; None when it is absent and ``declared`` does not list it.

    Anything under the name that is not a regular file (a folder, a broken symlink, a loop) and a file
    the manifest lists but the folder lacks are DataErrors naming the path.
    """
    listed = declared is not None and path.relative_to(root).as_posix() in declared
    if not listed and not is_present(path):
        return None
    if listed and not is_present(path):
        raise DataError(path, None, f"{what} listed in {root / MANIFEST} is missing")
    return require_regular_file(path, what)


# ---------------------------------------------------------------------------------------------- registry
_LAYOUTS: dict[str, DataLayout] = {}


def _key(root: str | Path) -> str:
    return str(Path(root).resolve())


def register_layout(layout: DataLayout) -> DataLayout:
    """Make ``layout_for(layout.root)`` return ``layout`` (explicit files of a config) in this process; its
    ``allow_outside_root`` takes effect too."""
    _LAYOUTS[_key(layout.root)] = layout
    layout.permit_outside()
    return layout


def layout_for(root: str | Path) -> DataLayout:
    """The registered layout of a data root, else the default one (world and official names)."""
    return _LAYOUTS.get(_key(root)) or DataLayout(Path(root))


# ---------------------------------------------------------------------------------------------- official configs
def is_official_config(tree: dict[str, Any]) -> bool:
    """Whether a YAML mapping is an official X-VLM / X²-VLM config (it names files by the official keys)."""
    return any(k in tree for k in ("train_file", "test_file", "val_file", "valid_file"))


def files_from_official(tree: dict[str, Any]) -> DataFiles:
    """The :class:`DataFiles` of an official config mapping (other keys ignored; X²-VLM's ``valid_file`` and
    ``img_rdir`` are ``val_file`` and ``image_root``)."""
    values = {OFFICIAL_ALIASES.get(k, k): v for k, v in tree.items() if v is not None}
    return DataFiles(**{k: values[k] for k in OFFICIAL_KEYS if k in values})


# ---------------------------------------------------------------------------------------------- VQA v2 pairs
_SUBTYPE = re.compile(r"mscoco_(.+)_questions\.json$")


def vqa_v2_records(questions_path: Path, annotations_path: Path | None) -> list[dict[str, Any]]:
    """X-VLM ``vqa_{split}.json`` records from an official VQA v2 pair.

    Images follow COCO's names, ``{subtype}/COCO_{subtype}_{image_id:012d}.jpg`` relative to the
    VQA image root (test-dev questions use the test2015 images); ``answer`` is the ten annotators'
    answers when the annotations are there.
    """
    questions = vqa_v2.read_vqa_questions(questions_path)
    match = _SUBTYPE.search(questions_path.name)
    sub = questions.get("data_subtype") or (match.group(1) if match else "")
    image_sub = "test2015" if sub == "test-dev2015" else sub
    answers: dict[Any, list[str]] = {}
    if annotations_path is not None:
        for ann in vqa_v2.join_questions_annotations(
            questions, vqa_v2.read_vqa_annotations(annotations_path), annotations_path
        ):
            answers[ann["question_id"]] = [a["answer"] for a in ann["answers"]]
    records = []
    for q in questions["questions"]:
        image = f"{image_sub}/COCO_{image_sub}_{int(q['image_id']):012d}.jpg"
        record = {"question_id": q["question_id"], "question": q["question"], "image": image, "dataset": "vqa"}
        if q["question_id"] in answers:
            record["answer"] = answers[q["question_id"]]
        records.append(record)
    return records


def derived_answer_list(annotation_files: list[Path], size: int = 3129) -> list[str]:
    """The ``size`` most frequent answers of the annotation files (X-VLM's ``answer_list.json``: 3,129)."""
    anns: list[dict[str, Any]] = []
    for path in annotation_files:
        anns += vqa_v2.read_vqa_annotations(path)["annotations"]
    return vqa_v2.vqa_answer_list(anns, size)
