"""``grainvl finetune TASK``: fine-tune a model on a downstream task, then evaluate ID and OOD."""

from __future__ import annotations

import argparse
from pathlib import Path

TASK_NAMES = ("retrieval", "video_retrieval", "vqa", "nlvr2", "grounding", "captioning", "videoqa")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune on a downstream task (retrieval, VQA, NLVR2, grounding, captioning, video) and evaluate",
        description="Fine-tune a registered model, a saved model folder or a pre-training run on TASK with the "
        "official X²-VLM recipe, then evaluate the ID (test) and OOD (test_ood) splits. Works under plain python "
        "and torchrun (DDP). Writes RUN/model, RUN/head.safetensors, RUN/task.json (reload with `grainvl eval`), "
        "RUN/predictions/*.json in the official result formats, RUN/results.jsonl (one line per metric with "
        "params, GFLOPs, energy and CO2 of the run) and RUN/summary.json. Configs: configs/finetune/TASK.yaml.",
    )
    p.add_argument("task", help=f"task name: {', '.join(TASK_NAMES)}")
    p.add_argument("--model", help="registered architecture, save_pretrained folder, or a run folder with model/")
    p.add_argument("--world", help="world (or dataset) root with the task's official-format annotation files")
    p.add_argument("--out", help="run folder")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--config", type=Path, help="YAML with FinetuneConfig fields (see configs/finetune/)")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue training from")
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. optim.lr=1e-4 options.k_test=32",
    )
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.config import load_config
    from grainvl.recipes.finetune import FinetuneConfig, finetune, main_print

    overrides = list(args.set)
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    cfg = load_config(FinetuneConfig, args.config, overrides)
    report = finetune(args.task, args.model, args.world, args.out, cfg=cfg, resume=args.resume)
    main_print(report)
    return 0
