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

from grainvl.commands import add_config_args, config_from_args, shortcut

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
    add_config_args(p, "grainvl.metrics.scoring:ScoreConfig")
    shortcut(p, "task", field="task", nargs="?", choices=TASKS, help="which task the files belong to")
    shortcut(p, "--pred", field="pred", type=Path, help="prediction file (official result format)")
    shortcut(p, "--gt", field="gt", type=Path, help="ground-truth file (official format)")
    shortcut(
        p,
        "--questions",
        field="questions",
        type=Path,
        help="vqa: the VQA v2 questions file (v2_OpenEnded_mscoco_*_questions.json); checks that every "
        "annotated question exists, as the official loader pairs them",
    )
    shortcut(
        p,
        "--metric",
        field="metric",
        choices=("auto", "vqa", "exact"),
        help="vqa with an X-VLM/VLUE json: 'vqa' = official soft accuracy over the answer lists, "
        "'exact' = VLUE exact match; 'auto' picks exact when every answer is a single string (default)",
    )
    shortcut(
        p,
        "--revision",
        field="revision",
        choices=("official", "xvlm", "normalized"),
        help="vqa: whose answer normalisation: 'official' (GT-Vision-Lab master, the evaluation server; default), "
        "'xvlm' (the older vqaEval.py X-VLM and VLUE ship), 'normalized' (both sides always normalised)",
    )
    shortcut(
        p,
        "--no-meteor",
        field="meteor",
        action="store_false",
        help="captioning: skip METEOR (saves the METEOR JVM start)",
    )
    shortcut(p, "--out", field="out", type=Path, help="also write the metrics as a JSON object to this file")
    p.set_defaults(func=_cmd_score)


def _cmd_score(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.metrics import scoring
    from grainvl.utils import fileio

    cfg = config_from_args(scoring.ScoreConfig, args)
    if cfg.task not in TASKS:
        raise ValueError(f"score task must be one of {', '.join(TASKS)}, got {cfg.task!r}")
    questions = None if cfg.questions is None else Path(cfg.questions)
    metrics: dict[str, Any] = scoring.score_files(
        cfg.task,
        Path(cfg.pred),
        Path(cfg.gt),
        questions=questions,
        metric=cfg.metric,
        meteor=cfg.meteor,
        revision=cfg.revision,
    )
    if cfg.out is not None:
        fileio.write_json(Path(cfg.out), metrics)
    return 0
