"""``grainvl eval TASK --model RUN --world W --split id|ood``: evaluate a fine-tuned run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a fine-tuned run on a world split (id = test, ood = test_ood)",
        description="Reload a `grainvl finetune` run folder exactly (model, task head, task options) and evaluate "
        "it on a split of a world or dataset root. Prints the metrics as JSON; --out also writes the predictions "
        "in the official result format and metrics.json there. Works under torchrun: ranks share the split and "
        "rank 0 merges the predictions.",
    )
    p.add_argument("task", help="the task the run was fine-tuned on (checked against RUN/task.json)")
    p.add_argument("--model", required=True, type=Path, help="fine-tuned run folder (RUN of `grainvl finetune`)")
    p.add_argument("--world", required=True, type=Path, help="world (or dataset) root with the annotation files")
    p.add_argument("--split", default="id", help="id (test), ood (test_ood), or a split name such as val")
    p.add_argument("--out", type=Path, help="folder for predictions and metrics.json")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.finetune import load_finetuned
    from grainvl.tasks.base import resolve_split
    from grainvl.utils.distributed import cleanup, detect_env, get_rank, init_distributed
    from grainvl.utils.fileio import write_json

    meta = args.model / "task.json"
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("task") != args.task:
        found = json.loads(meta.read_text(encoding="utf-8")).get("task")
        raise ValueError(f"{args.model} was fine-tuned on {found!r}, not {args.task!r}")
    split = resolve_split(args.split)
    init_distributed(detect_env())
    try:
        task, module, tokenizer = load_finetuned(args.model, args.world)
        module.to(detect_env().device)
        metrics = task.evaluate(module, tokenizer, args.world, split, out_dir=args.out)
    finally:
        cleanup()
    if get_rank() == 0:
        if args.out is not None:
            write_json(args.out / "metrics.json", {"task": args.task, "split": split, **metrics})
        print(json.dumps({"task": args.task, "split": split, "metrics": metrics}, indent=2))
    return 0
