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
        "RUN/results.jsonl. Settings: PretrainConfig (configs/pretrain/). With objectives=cclm (or a preset whose "
        'architecture says "objectives": "cclm", e.g. cclm-small): CCLM cross-view pre-training on multilingual '
        "captions and parallel text, ending with zero-shot retrieval per caption language (docs/cclm.md).",
    )
    add_config_args(p, "grainvl.recipes.pretrain:PretrainConfig")
    p.epilog = (
        "--config also takes an official X-VLM / X2-VLM pre-training config as it ships (train_file, "
        "train_file_regions, train_file_videos: JSON-lines files or folders of them; images / regions / videos "
        "batch settings, optimizer, schedular): see docs/formats.md. Every file is looked up before step 1."
    )
    shortcut(
        p, "--model", field="model", help="registered architecture (grainvl.list_models()) or an architecture JSON"
    )
    shortcut(
        p,
        "--data",
        "--data-root",
        field="data.world",
        help="data root: a world (annotations/pretrain/{split}/*.jsonl), a folder with image_text*.jsonl, "
        "region*.jsonl, video*.jsonl (also under data/pretrain/ or pretrain/), or the folder the config's "
        "train_file paths are relative to",
    )
    shortcut(
        p,
        "--image-root",
        field="files.image_root",
        help="folder the image and frame paths in the files are relative to (default: the data root)",
    )
    shortcut(p, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(p, "--out", field="train.run_dir", help="run folder (checkpoints, metrics, model)")
    shortcut(
        p,
        "--skip-bad",
        field="skip_bad",
        action="store_true",
        help="skip bad records (each listed on stderr, the count in RUN/summary.json) instead of stopping at the first",
    )
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from (default: none, a fresh run)")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.pretrain import PretrainConfig, config_tree, format_report, objectives_of, run_pretrain
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(PretrainConfig, args, translate=config_tree)
    if objectives_of(cfg) == "cclm":
        # Deferred: the CCLM recipe (docs/cclm.md) is loaded only for runs that train it.
        from grainvl.recipes.cclm import format_cclm_report, run_cclm

        print_report(run_cclm(cfg, resume=args.resume), format_cclm_report)
        return 0
    print_report(run_pretrain(cfg, resume=args.resume), format_report)
    return 0
