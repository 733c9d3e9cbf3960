"""``grainvl score TASK --pred FILE --gt FILE``: score an official-format prediction file.

Prints the lines the reference evaluation prints (VQA ``vqaEvalDemo``/X-VLM ``vqa_eval``, VLUE
``calculate_acc``, X-VLM ``coco_caption_eval``, ``itm_eval``, NLVR2's averaged stats, VLUE's
``grounding_eval_bbox_vlue``); ``--out`` also writes the toolkit's metric dict as JSON. The
prediction formats are in docs/metrics.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TASKS = ("vqa", "captioning", "retrieval", "nlvr2", "grounding")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score a prediction file in the official format against official-format ground truth",
        description="Score predictions as the official evaluation scripts do, and print the numbers they print. "
        "vqa: VQA v2 results json vs v2_mscoco_*_annotations.json (official accuracy), or vs an X-VLM "
        "vqa_{split}.json (answer lists: official accuracy) or VLUE vqa_vlue_test.json (one answer: exact match); "
        "captioning: COCO results json vs COCO caption GT json (pycocoevalcap); retrieval: ranked lists "
        '{"i2t": [[text indices]], "t2i": [[image indices]]} vs an ALBEF/VLUE retrieval test json; '
        "nlvr2: a list of labels in GT order vs nlvr_{split}.json / nlvr2_vlue_test.json; "
        "grounding: [{ref_id, bbox: [x, y, w, h]} | {ref_id, pred: normalised [cx, cy, w, h]}] vs "
        "refcoco+_{split}.json / refcoco+_vlue_test.json. Formats: docs/metrics.md.",
    )
    p.add_argument("task", choices=TASKS, help="which task the files belong to")
    p.add_argument("--pred", required=True, type=Path, help="prediction file (official result format)")
    p.add_argument("--gt", required=True, type=Path, help="ground-truth file (official format)")
    p.add_argument(
        "--questions",
        type=Path,
        help="vqa: the VQA v2 questions file (v2_OpenEnded_mscoco_*_questions.json); checks that every "
        "annotated question exists, as the official loader pairs them",
    )
    p.add_argument(
        "--metric",
        choices=("auto", "vqa", "exact"),
        default="auto",
        help="vqa with an X-VLM/VLUE json: 'vqa' = official soft accuracy over the answer lists, "
        "'exact' = VLUE exact match; 'auto' picks exact when every answer is a single string (default)",
    )
    p.add_argument("--no-meteor", action="store_true", help="captioning: skip METEOR (saves the METEOR JVM start)")
    p.add_argument("--out", type=Path, help="also write the metrics as a JSON object to this file")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.metrics import scoring
    from grainvl.utils import fileio

    metrics: dict[str, Any] = scoring.score_files(
        args.task, args.pred, args.gt, questions=args.questions, metric=args.metric, meteor=not args.no_meteor
    )
    if args.out is not None:
        fileio.write_json(args.out, metrics)
    return 0
