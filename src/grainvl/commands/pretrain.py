"""``grainvl pretrain``: X²-VLM pre-training (python or torchrun), then zero-shot evaluation."""

from __future__ import annotations

import argparse

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="X²-VLM pre-training (ITC, ITM, MLM on images, regions and video; box regression)",
        description="Pre-train an X²-VLM variant on X-VLM-format data (a world folder by default). Works under plain "
        "python and under torchrun (DDP: gloo on CPU, NCCL on GPU). Ends with zero-shot retrieval and grounding on "
        "the ID test and OOD splits next to chance, the model in RUN/model, metrics in RUN/metrics.jsonl and "
        "RUN/results.jsonl. Settings: PretrainConfig (configs/pretrain/).",
    )
    add_config_args(p, "grainvl.recipes.pretrain:PretrainConfig")
    shortcut(
        p, "--model", field="model", help="registered architecture (grainvl.list_models()) or an architecture JSON"
    )
    shortcut(p, "--data", field="data.world", help="world folder (annotations/pretrain/{split}/*.jsonl)")
    shortcut(p, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(p, "--out", field="train.run_dir", help="run folder (checkpoints, metrics, model)")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from (default: none, a fresh run)")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.pretrain import PretrainConfig, format_report, run_pretrain
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(PretrainConfig, args)
    print_report(run_pretrain(cfg, resume=args.resume), format_report)
    return 0
