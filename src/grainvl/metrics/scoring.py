"""Score official-format prediction files (``grainvl score``): read, check, score, print.

Each ``score_*`` function reads the ground truth with the toolkit's readers
(``grainvl.data.formats``), checks the predictions record by record (a bad file is a
:class:`~grainvl.errors.DataError` naming file, record and reason), prints what the reference
evaluation prints through ``echo`` and returns the toolkit's metric dict (keys as in the issue-5
contract: ``vqa_acc``, ``acc``, ``acc@0.5``, ``txt_r1`` ..., ``CIDEr`` ...).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grainvl.data.formats import validate
from grainvl.data.formats.albef import nlvr_label, read_nlvr2, read_refcoco, read_retrieval, read_vqa
from grainvl.data.formats.coco_caption import read_caption_gt, read_caption_results
from grainvl.data.formats.vqa_v2 import join_questions_annotations, read_vqa_annotations, read_vqa_questions
from grainvl.errors import DataError
from grainvl.metrics.captioning import caption_scores, coco_caption_inputs
from grainvl.metrics.classification import accuracy
from grainvl.metrics.grounding import denormalize_cxcywh, iou_xywh
from grainvl.metrics.retrieval import caption_index, retrieval_metrics_from_topk
from grainvl.metrics.vqa import REVISIONS, exact_match_accuracy, vqa_evaluate
from grainvl.utils import fileio

Echo = Callable[[str], None]


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _examples(keys: set) -> str:
    return ", ".join(repr(k) for k in sorted(keys, key=str)[:3])


# ------------------------------------------------------------------------------------------------ VQA
def read_vqa_results(path: Path) -> dict[Hashable, str]:
    """``[{"question_id", "answer"}, ...]`` (VQA v2 / X-VLM result json) → ``{question_id: answer}``.

    A repeated question id is a DataError (the official loader would silently keep the last one).
    """
    seen: dict[Any, str] = {}

    def check(record: Any, where: str) -> None:
        validate.require_fields(record, {"answer": str}, path, where)
        validate.require_id(record, "question_id", path, where)
        validate.claim_unique(seen, record["question_id"], "duplicate question_id {key}", path, where)

    answers = validate.read_json_records(path, check)
    return {r["question_id"]: r["answer"] for r in answers}


def _require_same_questions(predictions: dict, truth: dict, pred_path: Path) -> None:
    missing, extra = set(truth) - set(predictions), set(predictions) - set(truth)
    if missing or extra:
        raise DataError(
            pred_path,
            None,
            "results do not correspond to the annotations (as the official loadRes asserts): "
            f"{len(missing)} question(s) without a prediction ({_examples(missing)}), "
            f"{len(extra)} unknown question id(s) ({_examples(extra)})",
        )


def _print_vqa(result: Any, echo: Echo, question_types: bool = True) -> None:
    """The lines of the official ``vqaEvalDemo.py`` (X-VLM's ``vqa_eval`` omits the question types)."""
    echo("\n")
    echo(f"Overall Accuracy is: {result.overall:.2f}\n")
    if question_types and result.per_question_type:
        echo("Per Question Type Accuracy is the following:")
        for name, acc in result.per_question_type.items():
            echo(f"{name} : {acc:.2f}")
        echo("\n")
    if result.per_answer_type:
        echo("Per Answer Type Accuracy is the following:")
        for name, acc in result.per_answer_type.items():
            echo(f"{name} : {acc:.2f}")
        echo("\n")


def score_vqa_v2(
    pred: Path, annotations: Path, questions: Path | None = None, echo: Echo = print, revision: str = "official"
) -> dict[str, Any]:
    """Official accuracy of a VQA v2 result file against ``v2_mscoco_*_annotations.json``.

    ``revision``: whose answer normalisation (``official``, ``xvlm``, ``normalized``; see
    :func:`grainvl.metrics.vqa.compared_answers`).
    """

    ann_doc = read_vqa_annotations(annotations)
    if questions is not None:
        join_questions_annotations(read_vqa_questions(questions), ann_doc, annotations)
    anns = ann_doc["annotations"]
    predictions = read_vqa_results(pred)
    answers = {a["question_id"]: [x["answer"] for x in a["answers"]] for a in anns}
    _require_same_questions(predictions, answers, pred)
    result = vqa_evaluate(
        predictions,
        answers,
        answer_types={a["question_id"]: a["answer_type"] for a in anns},
        question_types={a["question_id"]: a["question_type"] for a in anns},
        # The official leave-one-out drops answer records equal to the left-out one (unique answer ids).
        annotators={
            a["question_id"]: [(x["answer"], x["answer_confidence"], x["answer_id"]) for x in a["answers"]]
            for a in anns
        },
        revision=revision,
    )
    _print_vqa(result, echo)
    return {"vqa_acc": result.overall, "answer_type": result.per_answer_type, "question_type": result.per_question_type}


def score_vqa_json(
    pred: Path, gt: Path, metric: str = "auto", echo: Echo = print, revision: str = "official"
) -> dict[str, Any]:
    """An X-VLM ``vqa_{split}.json`` (answer lists: official accuracy) or VLUE ``vqa_vlue_test.json``
    (one answer string: exact match over the predictions, VLUE's ``calculate_acc``)."""

    records = read_vqa(gt)
    for i, record in enumerate(records):
        if "answer" not in record:
            raise DataError(gt, f"index {i}", "no 'answer': a test split without answers cannot be scored")
    all_single = all(isinstance(r["answer"], str) for r in records)
    if metric == "auto":
        metric = "exact" if all_single else "vqa"
    predictions = read_vqa_results(pred)
    if metric == "exact":
        if not all_single:
            i = next(i for i, r in enumerate(records) if not isinstance(r["answer"], str))
            raise DataError(gt, f"index {i}", "exact match needs one answer string per question (use --metric vqa)")
        answers = {r["question_id"]: r["answer"] for r in records}
        unknown = set(predictions) - set(answers)
        if unknown:
            raise DataError(pred, None, f"{len(unknown)} prediction(s) for unknown question ids ({_examples(unknown)})")
        missing = set(answers) - set(predictions)
        if missing:
            _warn(f"{len(missing)} question(s) have no prediction; like VLUE's calculate_acc they are not counted")
        n = len(predictions)
        n_correct = sum(1 for qid, answer in predictions.items() if answer.strip() == answers[qid].strip())
        echo(f"n_questions: {n}, n_correct: {n_correct}")
        echo(f"acc: {n_correct / n}")
        return {"vqa_acc": exact_match_accuracy(predictions, answers)}
    answers = {r["question_id"]: r["answer"] if isinstance(r["answer"], list) else [r["answer"]] for r in records}
    single = [qid for qid, a in answers.items() if len(a) < 2]
    if single:
        _warn(f"{len(single)} question(s) have one answer: the official leave-one-out accuracy is 0 for them")
    _require_same_questions(predictions, answers, pred)
    result = vqa_evaluate(predictions, answers, revision=revision)
    _print_vqa(result, echo)
    return {"vqa_acc": result.overall}


def score_vqa(
    pred: Path,
    gt: Path,
    questions: Path | None = None,
    metric: str = "auto",
    echo: Echo = print,
    revision: str = "official",
) -> dict[str, Any]:
    """VQA v2 annotations (a JSON object) or an X-VLM/VLUE list (a JSON array), told apart by the file."""
    if _first_char(gt) == "{":
        if metric == "exact":
            raise ValueError("--metric exact applies to VLUE's single-answer json, not to VQA v2 annotations")
        return score_vqa_v2(pred, gt, questions, echo=echo, revision=revision)
    if questions is not None:
        raise ValueError("--questions goes with VQA v2 annotation files, not with an X-VLM/VLUE vqa json")
    return score_vqa_json(pred, gt, metric=metric, echo=echo, revision=revision)


def _first_char(path: Path) -> str:
    """The first non-blank character of a JSON file (cheap format sniffing: "{" or "[")."""
    try:
        with open(path, encoding="utf-8") as f:
            while chunk := f.read(4096):
                stripped = chunk.lstrip().lstrip("\ufeff")
                if stripped:
                    return stripped[0]
    except FileNotFoundError:
        raise DataError(path, None, "file not found") from None
    except UnicodeDecodeError as e:
        raise DataError(path, None, f"not UTF-8 text ({e.reason})") from None
    raise DataError(path, None, "empty file")


# ----------------------------------------------------------------------------------------- captioning
def score_captioning(pred: Path, gt: Path, meteor: bool = True, echo: Echo = print) -> dict[str, float]:
    """pycocoevalcap scores of a COCO caption result file, printed as ``coco_caption_eval`` does."""

    gt_doc = read_caption_gt(gt)
    results = read_caption_results(pred, gt_image_ids={image["id"] for image in gt_doc["images"]})
    gts, res = coco_caption_inputs(gt_doc, results)
    no_refs = {key for key, refs in gts.items() if not refs}
    if no_refs:
        raise DataError(gt, None, f"{len(no_refs)} image(s) have no reference caption ({_examples(no_refs)})")
    missing = set(gts) - set(res)
    if missing:
        raise DataError(pred, None, f"{len(missing)} ground-truth image(s) have no caption ({_examples(missing)})")
    scores = caption_scores(gts, res, meteor=meteor)
    for name, value in scores.items():
        echo(f"{name}: {value:.3f}")
    return scores


# ------------------------------------------------------------------------------------------ retrieval
def read_ranked_lists(path: Path, n_images: int, n_texts: int) -> tuple[list[list[int]], list[list[int]]]:
    """``{"i2t": [[text index, ...] per image], "t2i": [[image index, ...] per text]}``, best first.

    Indices follow the ground-truth file (images in file order; captions numbered in file order
    over the whole file). Each list must hold distinct valid indices, at least
    ``min(10, gallery size)`` of them.
    """
    doc = fileio.read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("i2t"), list) or not isinstance(doc.get("t2i"), list):
        raise DataError(path, None, 'expected a JSON object {"i2t": [[...]], "t2i": [[...]]}')
    lists = []
    for key, n_queries, gallery in (("i2t", n_images, n_texts), ("t2i", n_texts, n_images)):
        rows = doc[key]
        if len(rows) != n_queries:
            raise DataError(path, key, f"{len(rows)} ranked lists for {n_queries} queries")
        for q, row in enumerate(rows):
            where = f"{key}[{q}]"
            if not isinstance(row, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in row):
                raise DataError(path, where, "a ranked list should be a list of integer indices")
            if len(row) < min(10, gallery):
                raise DataError(path, where, f"{len(row)} entries; R@10 needs at least {min(10, gallery)}")
            if len(set(row)) != len(row):
                raise DataError(path, where, "repeated index in a ranked list")
            bad = [v for v in row if not 0 <= v < gallery]
            if bad:
                raise DataError(path, where, f"index {bad[0]} outside the gallery of {gallery}")
        lists.append(rows)
    return lists[0], lists[1]


def score_retrieval(pred: Path, gt: Path, echo: Echo = print) -> dict[str, float]:
    """R@1/5/10 of ranked lists against an ALBEF/VLUE retrieval test file (``itm_eval``'s dict)."""

    records = read_retrieval(gt)
    if not records:
        raise DataError(gt, None, "no images")
    texts, img2txt, txt2img = caption_index(records)
    i2t, t2i = read_ranked_lists(pred, len(records), len(texts))
    metrics = retrieval_metrics_from_topk(i2t, t2i, img2txt, txt2img)
    for line in retrieval_table(metrics):
        echo(line)
    return metrics


def retrieval_table(metrics: dict[str, float]) -> list[str]:
    """``itm_eval``'s numbers (percent) as a small table: one row per direction, then ``r_mean``."""
    lines = [f"{'':<16}{'R@1':>8}{'R@5':>8}{'R@10':>8}{'mean':>8}"]
    for name, prefix in (("text retrieval", "txt"), ("image retrieval", "img")):
        values = [metrics[f"{prefix}_r{k}"] for k in (1, 5, 10)] + [metrics[f"{prefix}_r_mean"]]
        lines.append(f"{name:<16}" + "".join(f"{v:>8.2f}" for v in values))
    lines.append(f"{'r_mean':<16}{metrics['r_mean']:>32.2f}")
    return lines


# ---------------------------------------------------------------------------------------------- NLVR2
# 1 and 0 look up True and False (equal keys in a dict); other ints and floats are rejected before.
_PRED_LABELS: dict[Any, bool] = {True: True, False: False, "True": True, "False": False}


def score_nlvr2(pred: Path, gt: Path, echo: Echo = print) -> dict[str, float]:
    """Accuracy of a JSON list of labels (true/false, "True"/"False" or 1/0), one per GT pair in order."""

    records = read_nlvr2(gt)
    labels = [nlvr_label(r["label"], gt, f"index {i}") for i, r in enumerate(records)]
    preds = validate.require_list(fileio.read_json(pred), pred)
    if len(preds) != len(labels):
        raise DataError(pred, None, f"{len(preds)} predictions for {len(labels)} ground-truth pairs")
    parsed = []
    for i, value in enumerate(preds):
        if not isinstance(value, (bool, int, str)) or value not in _PRED_LABELS:
            raise DataError(pred, f"index {i}", f'label should be true/false, "True"/"False" or 1/0, got {value!r}')
        parsed.append(_PRED_LABELS[value])
    if not labels:
        raise DataError(gt, None, "no pairs")
    acc = accuracy(parsed, labels)
    echo(f"acc: {acc:.2f}")  # percent (X-VLM's NLVR.py prints the fraction: "acc: 0.xxxx")
    return {"acc": acc}


# ------------------------------------------------------------------------------------------ grounding
def _gt_boxes(records: list[dict], gt: Path) -> dict[Any, dict]:
    """ref_id → the GT record holding its box (several sentences may share a ref_id and its box)."""
    by_ref: dict[Any, dict] = {}
    for i, record in enumerate(records):
        if "bbox" not in record:
            raise DataError(gt, f"index {i}", "no 'bbox': this file cannot be scored")
        known = by_ref.get(record["ref_id"])
        if known is not None and [float(v) for v in known["bbox"][:4]] != [float(v) for v in record["bbox"][:4]]:
            raise DataError(gt, f"index {i}", f"ref_id {record['ref_id']!r} has two different boxes")
        by_ref[record["ref_id"]] = record
    return by_ref


def score_grounding(pred: Path, gt: Path, echo: Echo = print) -> dict[str, float]:
    """Accuracy at IoU >= 0.5 (inclusive-pixel IoU) over the predictions, as VLUE's
    ``grounding_eval_bbox_vlue`` counts: one prediction per sentence, looked up by ``ref_id``."""

    by_ref = _gt_boxes(read_refcoco(gt), gt)
    preds = validate.require_list(fileio.read_json(pred), pred)
    if not preds:
        raise DataError(pred, None, "no predictions")
    boxes, truth = [], []
    for i, p in enumerate(preds):
        where = f"index {i}"
        validate.require_fields(p, {}, pred, where)
        validate.require_id(p, "ref_id", pred, where)
        if p["ref_id"] not in by_ref:
            raise DataError(pred, where, f"ref_id {p['ref_id']!r} is not in the ground truth")
        ref = by_ref[p["ref_id"]]
        boxes.append(_pred_box(p, ref, pred, where, denormalize_cxcywh))
        truth.append([float(v) for v in ref["bbox"][:4]])
    missing = set(by_ref) - {p["ref_id"] for p in preds}
    if missing:
        _warn(f"{len(missing)} ref_id(s) have no prediction; like VLUE's evaluation they are not counted")
    iou = np.atleast_1d(iou_xywh(np.array(boxes), np.array(truth)))
    correct = int(np.sum(iou >= 0.5))
    metrics = {"acc@0.5": 100.0 * correct / len(preds), "miou": 100.0 * float(iou.mean())}
    # Percent (X-VLM's grounding_eval_bbox prints the fraction: "score: 0.xxx").
    echo(f"acc@0.5: {metrics['acc@0.5']:.2f}")
    echo(f"miou: {metrics['miou']:.2f}")
    return metrics


def _pred_box(p: dict, ref: dict, path: Path, where: str, denormalize: Callable) -> list[float]:
    """Pixel ``[x, y, w, h]`` of a prediction: ``bbox`` as given, or the box head's normalised
    ``pred`` ``(cx, cy, w, h)`` scaled by the GT record's ``width``/``height`` (the official way)."""
    key = "bbox" if "bbox" in p else "pred" if "pred" in p else None
    if key is None:
        raise DataError(path, where, "needs 'bbox' ([x, y, w, h] pixels) or 'pred' (normalised [cx, cy, w, h])")
    box = p[key]
    if not isinstance(box, list) or len(box) != 4 or not all(_is_number(v) for v in box):
        raise DataError(path, where, f"'{key}' should be four numbers, got {box!r}")
    if key == "bbox":
        return [float(v) for v in box]
    if "width" not in ref or "height" not in ref:
        raise DataError(path, where, "a normalised 'pred' needs the image width/height in the ground-truth record")
    return [float(v) for v in denormalize(box, ref["width"], ref["height"])]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------------------------------- dispatch
def score_files(
    task: str,
    pred: str | Path,
    gt: str | Path,
    questions: str | Path | None = None,
    metric: str = "auto",
    meteor: bool = True,
    echo: Echo = print,
    revision: str = "official",
) -> dict[str, Any]:
    """Score ``pred`` against ``gt`` for ``task`` (vqa, captioning, retrieval, nlvr2, grounding).

    ``revision`` (vqa): the answer normalisation of the ``official`` evaluator, of the ``xvlm`` copy
    X-VLM / VLUE ship, or ``normalized`` (both sides always normalised).
    """
    pred, gt = Path(pred), Path(gt)
    questions = None if questions is None else Path(questions)
    if task != "vqa" and (questions is not None or metric != "auto" or revision != "official"):
        raise ValueError("--questions, --metric and --revision apply to the vqa task only")
    if revision not in REVISIONS:
        raise ValueError(f"--revision should be one of {', '.join(REVISIONS)}, got {revision!r}")
    if task == "vqa":
        return score_vqa(pred, gt, questions, metric=metric, echo=echo, revision=revision)
    if task == "captioning":
        return score_captioning(pred, gt, meteor=meteor, echo=echo)
    if task == "retrieval":
        return score_retrieval(pred, gt, echo=echo)
    if task == "nlvr2":
        return score_nlvr2(pred, gt, echo=echo)
    if task == "grounding":
        return score_grounding(pred, gt, echo=echo)
    raise ValueError(f"unknown task {task!r}; choose from vqa, captioning, retrieval, nlvr2, grounding")


@dataclass
class ScoreConfig:
    """``grainvl score``: an official-format prediction file scored against official ground truth."""

    task: str  # vqa, captioning, retrieval, nlvr2 or grounding
    pred: str  # prediction file (official result format)
    gt: str  # ground-truth file (official format)
    questions: str | None = None  # vqa: the VQA v2 questions file, to check every annotated question exists
    metric: str = "auto"  # vqa with an X-VLM/VLUE json: vqa (soft accuracy), exact, or auto
    revision: str = "official"  # vqa accuracy: official (GT-Vision-Lab master), xvlm (X-VLM/VLUE copy), normalized
    meteor: bool = True  # captioning: False skips METEOR (and its JVM start)
    out: str | None = None  # also write the metrics as a JSON object here
