"""Turn world annotations into records of the official dataset formats, split by split.

``WorldExporter`` receives images and videos one at a time (in id order), streams the
pre-training JSON-lines files as it goes (bounded memory), and keeps the compact per-split lists
that JSON-list formats (COCO, VQA v2, NLVR2, RefCOCO+, IGLUE, VLUE) need until ``finish``.
Every record is a plain dict in the official schema; the readers in ``grainvl.data.formats``
validate exactly these dicts. Layout: docs/world_layout.md.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.data.formats import albef, coco_caption, iglue, msrvtt, vlue, vqa_v2
from grainvl.data.formats.xvlm_pretrain import LineWriter
from grainvl.data.world.annotations import (
    ImageAnnotations,
    NLVRItem,
    ParallelPair,
    VideoAnnotations,
    XVNLIItem,
)
from grainvl.data.world.ontology import SPLITS

ID_SPLITS = ("train", "val", "test")
IGLUE_TEST_SPLIT = "test"  # IGLUE test sets come from the ID test split; zero-shot trains on English train
# English train only (the IGLUE protocol fine-tunes in English); dev (from the ID val split: model selection on
# English, few-shot items in the other languages) and test in every language.
IGLUE_SPLITS = {"train": "train", "val": "dev", IGLUE_TEST_SPLIT: "test"}


def image_relpath(split: str, image_id: int) -> str:
    return f"images/{split}/{image_id:08d}.jpg"


def frame_relpath(split: str, video_id: int, t: int) -> str:
    """Video ids are unique across splits, so frames live in one flat ``videos/video{id}`` folder as MSR-VTT's do."""
    del split
    return f"videos/video{video_id}/{t:02d}.jpg"


@dataclass
class SplitRecords:
    """Compact per-split records for the JSON-list formats."""

    retrieval: list[dict[str, Any]] = field(default_factory=list)
    karpathy: list[dict[str, Any]] = field(default_factory=list)
    caption_gt_images: list[dict[str, Any]] = field(default_factory=list)
    caption_gt_annotations: list[dict[str, Any]] = field(default_factory=list)
    vqa_questions: list[dict[str, Any]] = field(default_factory=list)
    vqa_annotations: list[dict[str, Any]] = field(default_factory=list)
    vqa_xvlm: list[dict[str, Any]] = field(default_factory=list)
    nlvr: list[dict[str, Any]] = field(default_factory=list)
    refcoco: list[dict[str, Any]] = field(default_factory=list)
    video_retrieval: list[dict[str, Any]] = field(default_factory=list)
    video_qa: list[dict[str, Any]] = field(default_factory=list)
    xvnli: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    xgqa: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    marvl: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    xflickrco: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))


class WorldExporter:
    """Collects world annotations and writes every official-format file under ``out/annotations``."""

    def __init__(self, out: Path, languages: tuple[str, ...]) -> None:
        self.out = out
        self.languages = languages
        self.splits = {s: SplitRecords() for s in SPLITS}
        self.counts: dict[str, Counter[str]] = {s: Counter() for s in SPLITS}
        self.answer_counter: Counter[str] = Counter()
        self.video_answer_counter: Counter[str] = Counter()
        self._sinks: dict[tuple[str, str], LineWriter] = {}
        self._caption_ann_id = 0

    # ------------------------------------------------------------------ streaming pre-training files
    def _sink(self, split: str, name: str, kind: str | None = None) -> LineWriter:
        """The pre-training file ``name`` of ``split``; ``kind`` (default: ``name``) picks its record checks."""
        key = (split, name)
        if key not in self._sinks:
            path = self.out / "annotations" / "pretrain" / split / f"{name}.jsonl"
            self._sinks[key] = LineWriter(path, kind or name)
        return self._sinks[key]

    def add_image(self, ann: ImageAnnotations, xvnli: XVNLIItem, pairs: list[ParallelPair]) -> None:
        scene = ann.scene
        split, rel = scene.split, image_relpath(scene.split, scene.image_id)
        en = ann.captions["en"]
        self._sink(split, "image_text").write({"image": rel, "caption": en, "image_id": scene.image_id})
        pick = scene.image_id % len(en)  # one paraphrase per language per line, aligned across languages
        self._sink(split, "image_text_multilingual", "image_text").write(
            {"image": rel, "caption": {lang: ann.captions[lang][pick] for lang in self.languages}}
        )
        self._sink(split, "region").write(_region_record(ann, rel))
        for pair in pairs:
            self._sink(split, "para_text").write(
                {
                    "source_text": pair.source_text,
                    "target_text": pair.target_text,
                    "source_lang": pair.source_lang,
                    "target_lang": pair.target_lang,
                }
            )
        self._add_finetune_image(ann, rel)
        self._add_xvnli(split, rel, xvnli)
        counts = self.counts[split]
        counts["images"] += 1
        counts["objects"] += len(scene.objects)
        counts["captions"] += sum(len(c) for c in ann.captions.values())
        counts["region_phrases"] += len(scene.objects)
        counts["vqa_questions"] += len(ann.vqa)
        counts["refexps"] += len(ann.refexps)
        counts["parallel_pairs"] += len(pairs)

    # ------------------------------------------------------------------ fine-tuning style records
    def _add_finetune_image(self, ann: ImageAnnotations, rel: str) -> None:
        scene, recs = ann.scene, self.splits[ann.scene.split]
        en = ann.captions["en"]
        if scene.split == "train":
            recs.retrieval.extend({"image": rel, "caption": c, "image_id": scene.image_id} for c in en)
            recs.karpathy.extend({"image": rel, "caption": c, "image_id": scene.image_id} for c in en)
        else:
            recs.retrieval.append({"image": rel, "caption": list(en)})
            recs.karpathy.append({"image": rel, "caption": list(en), "image_id": scene.image_id})
        recs.caption_gt_images.append(
            {"id": scene.image_id, "file_name": rel, "width": scene.width, "height": scene.height}
        )
        for c in en:
            self._caption_ann_id += 1
            recs.caption_gt_annotations.append({"image_id": scene.image_id, "id": self._caption_ann_id, "caption": c})
        for q in ann.vqa:
            self._add_vqa(recs, q, rel, scene.split)
        for r in ann.refexps:
            x, y, w, h = scene.objects[r.object_index].box
            recs.refcoco.append(
                {
                    "image": rel,
                    "text": r.texts["en"],
                    "ref_id": r.ref_id,
                    "bbox": [x, y, w, h],
                    "height": scene.height,
                    "width": scene.width,
                }
            )
        if scene.split in IGLUE_SPLITS:
            self._add_iglue_image(ann, rel)

    def _add_vqa(self, recs: SplitRecords, q: Any, rel: str, split: str) -> None:
        recs.vqa_questions.append({"image_id": q.image_id, "question": q.questions["en"], "question_id": q.question_id})
        recs.vqa_annotations.append(
            {
                "question_type": q.question_type,
                "multiple_choice_answer": q.answer,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(q.answers)
                ],
                "image_id": q.image_id,
                "answer_type": q.answer_type,
                "question_id": q.question_id,
            }
        )
        record: dict[str, Any] = {"question_id": q.question_id, "question": q.questions["en"], "image": rel}
        if split != "test":  # X-VLM's vqa_test.json carries no answers (test-dev is scored by the server)
            record["answer"] = list(q.answers)
        record["dataset"] = "vqa"
        recs.vqa_xvlm.append(record)
        if split == "train":
            self.answer_counter.update([q.answer])

    def _add_iglue_image(self, ann: ImageAnnotations, rel: str) -> None:
        scene, recs = ann.scene, self.splits[ann.scene.split]
        langs = ("en",) if scene.split == "train" else self.languages
        for lang in langs:
            recs.xflickrco[lang].append(
                {"sentences": [ann.captions[lang][0]], "id": str(scene.image_id), "img_path": rel}
            )
            for q in ann.vqa:
                recs.xgqa[lang].append(
                    {
                        "img_id": rel,  # a path relative to the world root, so image checks can find it
                        "label": {q.answers_by_lang[lang]: 1.0},
                        "question_id": str(q.question_id),
                        "sent": q.questions[lang],
                    }
                )

    def _add_xvnli(self, split: str, rel: str, item: XVNLIItem) -> None:
        if split not in IGLUE_SPLITS:
            return
        langs = ("en",) if split == "train" else self.languages
        for lang in langs:
            self.splits[split].xvnli[lang].append(
                {
                    "gold_label": item.label,
                    "sentence1": "",
                    "sentence2": item.texts[lang],
                    "captionID": f"{item.image_id}#0",
                    "pairID": str(item.item_id),
                    "Flikr30kID": rel,  # sic: IGLUE's field name keeps the official misspelling
                }
            )

    def add_nlvr(self, split: str, item: NLVRItem) -> None:
        left, right = image_relpath(split, item.left_image_id), image_relpath(split, item.right_image_id)
        label = "True" if item.label else "False"
        self.splits[split].nlvr.append({"images": [left, right], "sentence": item.texts["en"], "label": label})
        self.counts[split]["nlvr_statements"] += 1
        if split in IGLUE_SPLITS:
            langs = ("en",) if split == "train" else self.languages
            for lang in langs:
                self.splits[split].marvl[lang].append(
                    {
                        "concept": "scene",
                        "language": lang,
                        "caption": item.texts[lang],
                        "left_img": left,
                        "right_img": right,
                        "label": item.label,
                        "chapter": "synthetic",
                        "id": f"{lang}-{item.item_id}",
                        "annotator_info": {"annotator_id": "world", "country_of_birth": "", "country_of_residence": ""},
                    }
                )

    def add_video(self, ann: VideoAnnotations) -> None:
        clip, recs = ann.clip, self.splits[ann.clip.split]
        frames = [frame_relpath(clip.split, clip.video_id, t) for t in range(len(clip.frames))]
        en = ann.captions["en"]
        self._sink(clip.split, "video").write({"video_frames": frames, "text": en, "is_continuous": False})
        video_key = f"video{clip.video_id}"
        if clip.split == "train":
            recs.video_retrieval.extend({"video": video_key, "caption": c} for c in en)
        else:
            recs.video_retrieval.append({"video": video_key, "caption": list(en)})
        for q in ann.qa:
            recs.video_qa.append({"video_id": video_key, "question": q.questions["en"], "answer": q.answer})
            if clip.split == "train":
                self.video_answer_counter.update([q.answer])
        self.counts[clip.split]["videos"] += 1
        self.counts[clip.split]["video_captions"] += sum(len(c) for c in ann.captions.values())
        self.counts[clip.split]["video_questions"] += len(ann.qa)

    # ------------------------------------------------------------------ final files
    def finish(self, video_frames: dict[str, list[dict[str, Any]]]) -> None:
        for sink in self._sinks.values():
            sink.close()
        ann = self.out / "annotations"
        for split, recs in self.splits.items():
            if recs.caption_gt_images:
                self._write_image_split(ann, split, recs)
            if recs.video_retrieval:
                msrvtt.write_retrieval(ann / "msrvtt" / f"msrvtt_ret_{split}.json", recs.video_retrieval)
                msrvtt.write_qa(ann / "msrvtt" / f"msrvtt_qa_{split}.jsonl", recs.video_qa)
            self._write_iglue(ann / "iglue", split, recs)
        answers = [a for a, _ in self.answer_counter.most_common()]
        albef.write_answer_list(ann / "vqa" / "answer_list.json", answers)
        video_answers = [a for a, _ in self.video_answer_counter.most_common()]
        msrvtt.write_ans2label(ann / "msrvtt" / "ans2label.json", {a: i for i, a in enumerate(video_answers)})
        if video_frames:
            msrvtt.write_videodatainfo(
                ann / "msrvtt" / "train_val_videodatainfo.json", _msrvtt_info(video_frames, self.splits)
            )
        self._write_vlue(ann / "vlue", self.splits["test_ood"])

    def _write_image_split(self, ann: Path, split: str, recs: SplitRecords) -> None:
        albef.write_retrieval(ann / "retrieval" / f"coco_{split}.json", recs.retrieval)
        albef.write_karpathy(ann / "captioning" / f"coco_karpathy_{split}.json", recs.karpathy)
        coco_caption.write_caption_gt(ann / "captioning" / f"coco_karpathy_{split}_gt.json", _caption_gt(recs))
        subtype = f"world_{split}"
        vqa_v2.write_vqa_questions(
            ann / "vqa" / f"v2_OpenEnded_mscoco_{split}_questions.json", _vqa_questions(recs, subtype)
        )
        vqa_v2.write_vqa_annotations(
            ann / "vqa" / f"v2_mscoco_{split}_annotations.json", _vqa_annotations(recs, subtype)
        )
        albef.write_vqa(ann / "vqa" / f"vqa_{split}.json", recs.vqa_xvlm)
        albef.write_nlvr2(ann / "nlvr2" / f"nlvr_{split}.json", recs.nlvr)
        albef.write_refcoco(ann / "refcoco+" / f"refcoco+_{split}.json", recs.refcoco)

    def _write_iglue(self, root: Path, split: str, recs: SplitRecords) -> None:
        name = IGLUE_SPLITS.get(split, split)  # the world's val split is IGLUE's dev
        for lang, rows in sorted(recs.xvnli.items()):
            iglue.write_xvnli(root / "xvnli" / lang / f"{name}.jsonl", rows)
        for lang, rows in sorted(recs.xgqa.items()):
            iglue.write_xgqa(root / "xgqa" / lang / f"{name}.json", rows)
        for lang, rows in sorted(recs.marvl.items()):
            iglue.write_marvl(root / "marvl" / lang / f"{name}.jsonl", rows)
        for lang, rows in sorted(recs.xflickrco.items()):
            iglue.write_xflickrco(root / "xflickrco" / lang / f"{name}.jsonl", rows)

    def _write_vlue(self, root: Path, recs: SplitRecords) -> None:
        """VLUE's OOD test files, built from test_ood exactly in VLUE's schemas (davinci_cclm_vlue.md §C.2)."""
        if not recs.caption_gt_images:
            return
        vlue.write_vlue_itr(root / "itr_vlue_test.json", recs.retrieval)
        vlue.write_vlue_caption(root / "caption_vlue_test.json", recs.karpathy)
        coco_caption.write_caption_gt(root / "caption_vlue_test_gt.json", _caption_gt(recs))
        vlue.write_vlue_nlvr2(root / "nlvr2_vlue_test.json", recs.nlvr)
        # VLUE's OOD VQA file keeps one answer per question (scored by exact match).
        vqa = [
            {
                "question_id": q["question_id"],
                "question": q["question"],
                "image": q["image"],
                "answer": a["multiple_choice_answer"],
            }
            for q, a in zip(recs.vqa_xvlm, recs.vqa_annotations)
        ]
        vlue.write_vlue_vqa(root / "vqa_vlue_test.json", vqa)
        vlue.write_vlue_refcoco(root / "refcoco+_vlue_test.json", recs.refcoco)


def _region_record(ann: ImageAnnotations, rel: str) -> dict[str, Any]:
    scene = ann.scene
    elems = [
        {
            "caption": ann.region_phrases["en"][i],
            "attributes": f"{o.size} {o.texture} {o.color}",
            "bb": list(o.box),
        }
        for i, o in enumerate(scene.objects)
    ]
    return {"image": rel, "caption": ann.captions["en"], "elems": elems, "width": scene.width, "height": scene.height}


def _caption_gt(recs: SplitRecords) -> dict[str, Any]:
    return {
        "info": {"description": "grainvl synthetic world captions (COCO caption format)"},
        "licenses": [],
        "type": "captions",
        "images": recs.caption_gt_images,
        "annotations": recs.caption_gt_annotations,
    }


def _vqa_header(subtype: str) -> dict[str, Any]:
    return {
        "info": {"description": "grainvl synthetic world VQA (VQA v2 format)"},
        "license": {"name": "CC BY 4.0"},
        "data_subtype": subtype,
    }


def _vqa_questions(recs: SplitRecords, subtype: str) -> dict[str, Any]:
    head = _vqa_header(subtype)
    return {**head, "task_type": "Open-Ended", "data_type": "mscoco", "questions": recs.vqa_questions}


def _vqa_annotations(recs: SplitRecords, subtype: str) -> dict[str, Any]:
    head = _vqa_header(subtype)
    return {**head, "data_type": "mscoco", "annotations": recs.vqa_annotations}


def _msrvtt_info(video_frames: dict[str, list[dict[str, Any]]], splits: dict[str, SplitRecords]) -> dict[str, Any]:
    """MSR-VTT's train_val_videodatainfo.json shape: videos plus one sentence row per caption."""
    videos, sentences, sen_id = [], [], 0
    for split in SPLITS:
        for v in video_frames.get(split, []):
            videos.append(
                {
                    "category": 0,
                    "url": "",
                    "video_id": v["video_id"],
                    "start time": 0.0,
                    "end time": float(v["num_frames"]),
                    "split": split,
                    "id": v["id"],
                }
            )
            for caption in v["captions"]:
                sentences.append({"caption": caption, "video_id": v["video_id"], "sen_id": sen_id})
                sen_id += 1
    return {
        "info": {"description": "grainvl synthetic world videos (MSR-VTT format)"},
        "videos": videos,
        "sentences": sentences,
    }
