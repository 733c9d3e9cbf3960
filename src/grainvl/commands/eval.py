"""``grainvl eval TASK --model RUN --world W --split id|ood``: evaluate a fine-tuned run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a fine-tuned run on a world split (id = test, ood = test_ood)",
        description="Reload a `grainvl finetune` run folder exactly (model, task head, task options) and evaluate "
        "it on a split of a world or dataset root. Prints the metrics as JSON; --out also writes the predictions "
        "in the official result format and metrics.json there. Works under torchrun: ranks share the split and "
        "rank 0 merges the predictions. Settings: EvalConfig.",
    )
    add_config_args(p, "grainvl.recipes.finetune:EvalConfig")
    shortcut(p, "task", field="task", nargs="?", help="the task the run was fine-tuned on (checked against task.json)")
    shortcut(p, "--model", field="model", type=Path, help="fine-tuned run folder (RUN of `grainvl finetune`)")
    shortcut(p, "--world", field="world", type=Path, help="world (or dataset) root with the annotation files")
    shortcut(p, "--split", field="split", help="id (test, default), ood (test_ood), or a split name such as val")
    shortcut(p, "--out", field="out", type=Path, help="folder for predictions and metrics.json")
    p.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.finetune import EvalConfig, load_finetuned
    from grainvl.tasks.base import resolve_split
    from grainvl.utils.distributed import cleanup, detect_env, get_rank, init_distributed
    from grainvl.utils.fileio import write_json

    cfg = config_from_args(EvalConfig, args)
    run, world, out = Path(cfg.model), Path(cfg.world), None if cfg.out is None else Path(cfg.out)
    meta = run / "task.json"
    if meta.is_file() and json.loads(meta.read_text(encoding="utf-8")).get("task") != cfg.task:
        found = json.loads(meta.read_text(encoding="utf-8")).get("task")
        raise ValueError(f"{run} was fine-tuned on {found!r}, not {cfg.task!r}")
    split = resolve_split(cfg.split)
    init_distributed(detect_env())
    try:
        task, module, tokenizer = load_finetuned(run, world)
        module.to(detect_env().device)
        metrics = task.evaluate(module, tokenizer, world, split, out_dir=out)
    finally:
        cleanup()
    if get_rank() == 0:
        if out is not None:
            write_json(out / "metrics.json", {"task": cfg.task, "split": split, **metrics})
        print(json.dumps({"task": cfg.task, "split": split, "metrics": metrics}, indent=2))
    return 0
