"""``grainvl finetune TASK``: fine-tune a model on a downstream task, then evaluate ID and OOD."""

from __future__ import annotations

import argparse

from grainvl.commands import add_config_args, config_from_args, shortcut

TASK_NAMES = (
    "retrieval", "video_retrieval", "vqa", "nlvr2", "grounding", "captioning", "videoqa",
    "xvnli", "xgqa", "marvl", "xflickrco", "multi_retrieval",
)  # fmt: skip


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="fine-tune on a downstream task (retrieval, VQA, NLVR2, grounding, captioning, video) and evaluate",
        description="Fine-tune a registered model, a saved model folder or a pre-training run on TASK with the "
        "official X²-VLM recipe, then evaluate the ID (test) and OOD (test_ood) splits. Works under plain python "
        "and torchrun (DDP). Writes RUN/model, RUN/head.safetensors, RUN/task.json (reload with `grainvl eval`), "
        "RUN/predictions/*.json in the official result formats, RUN/results.jsonl (one line per metric with "
        "params, GFLOPs, energy and CO2 of the run) and RUN/summary.json. Settings: FinetuneConfig "
        "(configs/finetune/TASK.yaml), e.g. --set optim.lr=1e-4 options.k_test=32.",
    )
    add_config_args(p, "grainvl.recipes.finetune:FinetuneConfig")
    p.epilog = (
        "--config also takes an official X-VLM / X2-VLM fine-tuning config as it ships (train_file, val_file, "
        "test_file, image_root, vqa_root, vg_root, answer_list, batch sizes, optimizer): see docs/formats.md."
    )
    shortcut(p, "task", field="task", nargs="?", help=f"task name: {', '.join(TASK_NAMES)}")
    shortcut(p, "--model", field="model", help="registered architecture, save_pretrained folder, or a run folder")
    shortcut(
        p,
        "--world",
        "--data-root",
        field="world",
        help="data root: a world, or a dataset with the task's files under their official names and folders",
    )
    shortcut(p, "--image-root", field="files.image_root", help="folder the image paths in the files are relative to")
    shortcut(p, "--out", field="train.run_dir", help="run folder")
    shortcut(p, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(
        p,
        "--skip-bad",
        field="skip_bad",
        action="store_true",
        help="skip bad records (each listed on stderr, the count in RUN/summary.json) instead of stopping at the first",
    )
    shortcut(
        p,
        "--shots",
        field="shots",
        type=int,
        help="cross-lingual tasks: after English fine-tuning, fine-tune on N items of each target language "
        "(its train_N, train or dev file) before testing it (default 0: zero-shot)",
    )
    shortcut(
        p,
        "--translate-test",
        field="translate_test",
        action="store_true",
        help="cross-lingual tasks: test each item's English side (machine-translated file, else the English "
        "item with the same id); rows are labelled '<model> (translate-test)'",
    )
    p.add_argument("--resume", help="run or checkpoint folder to continue training from (default: none, a fresh run)")
    p.set_defaults(func=_cmd_finetune)


def _cmd_finetune(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.finetune import FinetuneConfig, config_tree, finetune, format_report
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(FinetuneConfig, args, translate=lambda tree: config_tree(tree, args.task))
    print_report(finetune(cfg, resume=args.resume), format_report)
    return 0
