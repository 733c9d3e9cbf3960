"""``grainvl davinci <sub>``: the DaVinci system (issue 17). ``tokenizer``: train or convert the image tokenizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "davinci",
        help="DaVinci (generative vision-language model): image tokenizer, ...",
        description="DaVinci: one encoder-decoder over text and discrete image codes (arXiv 2206.07699). "
        "See docs/davinci.md.",
    )
    dsub = p.add_subparsers(dest="davinci_command", required=True, metavar="{tokenizer,pretrain}")
    _register_tokenizer(dsub)
    _register_pretrain(dsub)


def _register_tokenizer(dsub: argparse._SubParsersAction) -> None:
    t = dsub.add_parser(
        "tokenizer",
        help="train the VQ image tokenizer on a world (or convert a taming VQGAN)",
        description="Train DaVinci's image tokenizer (a small VQGAN-family VQ autoencoder, stride 16) on a world's "
        "train images (whole, or random crops with --crop), freeze it and report reconstruction PSNR and the share "
        "of codes used on the ID (test) and OOD (test_ood) images; writes OUT/tokenizer, "
        "OUT/reconstructions.png (rows: ID originals, ID reconstructions, OOD originals, OOD "
        "reconstructions), OUT/results.jsonl and checkpoints. With --from-taming CKPT --taming-config YAML it"
        " instead converts a taming-transformers VQGAN into the tokenizer folder OUT.",
    )
    add_config_args(t, "grainvl.recipes.davinci_tokenizer:DavinciTokenizerConfig")
    shortcut(t, "--world", field="data.world", help="world folder to train and evaluate on (required to train)")
    shortcut(t, "--out", field="train.run_dir", help="run folder (with --from-taming: the tokenizer folder)")
    shortcut(t, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(t, "--batch-size", field="data.batch_size", type=int, help="training crops per step")
    shortcut(
        t,
        "--crop",
        field="data.crop",
        type=int,
        help="training crop side in pixels (a multiple of 16; 0: whole images)",
    )
    shortcut(t, "--codebook-size", field="model.codebook_size", type=int, help="number of codes")
    shortcut(
        t,
        "--quantizer",
        field="model.quantizer",
        choices=("ema", "straight_through"),
        help="codebook learning: EMA updates with dead-code restarts, or gradient (straight-through)",
    )
    shortcut(t, "--lr", field="optim.lr", type=float, help="peak learning rate")
    shortcut(t, "--seed", field="train.seed", type=int, help="seed of the weights and the crops")
    t.add_argument("--resume", help="run folder or checkpoint folder to continue from (default: none, a fresh run)")
    t.add_argument(
        "--from-taming",
        type=Path,
        metavar="CKPT",
        help="convert this taming-transformers VQGAN checkpoint (.ckpt, read weights-only, or .safetensors) instead "
        "of training (default: none, train)",
    )
    t.add_argument(
        "--taming-config",
        type=Path,
        metavar="YAML",
        help="the checkpoint's taming config (model.params.ddconfig, n_embed, embed_dim) (default: none)",
    )
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="with --from-taming: replace an --out folder that is not empty and not a model folder",
    )
    t.set_defaults(func=_cmd_tokenizer)


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.davinci_tokenizer import (
        DavinciTokenizerConfig,
        convert_taming,
        format_report,
        run_tokenizer_training,
    )
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(DavinciTokenizerConfig, args)
    if args.from_taming is not None:
        if args.taming_config is None:
            raise ValueError("--from-taming needs --taming-config YAML (the checkpoint's ddconfig)")
        report = convert_taming(args.from_taming, args.taming_config, Path(cfg.train.run_dir), args.overwrite)
        print(f"converted {args.from_taming} ({report['params'] / 1e6:.1f}M params) -> {report['tokenizer_dir']}")
        return 0
    print_report(run_tokenizer_training(cfg, resume=args.resume), format_report)
    return 0


def _register_pretrain(dsub: argparse._SubParsersAction) -> None:
    t = dsub.add_parser(
        "pretrain",
        help="pre-train DaVinci (prefix LM + prefix image modelling + text-only prefix LM)",
        description="Pre-train a DaVinci preset (davinci-tiny, davinci-small, davinci-base, or an architecture JSON / "
        "DaVinci folder) on a world's image-caption lines and its English text, with the frozen image tokenizer "
        "--tokenizer as the PIM target. Works under plain python and torchrun (DDP). Reports each objective's loss "
        "(plm, pim, text) at the start and the end; writes RUN/model, RUN/metrics.jsonl, checkpoints and "
        "RUN/summary.json. Settings: DaVinciPretrainConfig (docs/davinci.md, 'Model and pre-training').",
    )
    add_config_args(t, "grainvl.recipes.davinci:DaVinciPretrainConfig")
    shortcut(t, "--model", field="model", help="DaVinci preset (grainvl.list_models('davinci')), JSON or folder")
    shortcut(t, "--data", "--world", field="data.world", help="world folder (or a folder with image_text*.jsonl)")
    shortcut(t, "--tokenizer", field="tokenizer", help="image tokenizer folder (grainvl davinci tokenizer)")
    shortcut(t, "--out", field="train.run_dir", help="run folder (checkpoints, metrics, model)")
    shortcut(t, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(t, "--batch-size", field="data.batch_size", type=int, help="image-caption pairs per step and process")
    shortcut(
        t,
        "--prefix-mode",
        field="objectives.prefix_mode",
        choices=("random", "released"),
        help="PIM image prefix: random rows (fixed) or the released config's behaviour (never a prefix)",
    )
    t.add_argument("--resume", help="run folder or checkpoint folder to continue from (default: none, a fresh run)")
    t.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.davinci import DaVinciPretrainConfig, format_report, run_davinci_pretrain
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(DaVinciPretrainConfig, args)
    print_report(run_davinci_pretrain(cfg, resume=args.resume), format_report)
    return 0
