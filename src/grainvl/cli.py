"""``grainvl <command>``: the command-line entry point (also ``python -m grainvl``).

Every command has ``--help``. Bad input ends with one line on stderr naming the file, the record
and the reason, and exit status 2; nothing is half-written (files are written atomically).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from grainvl import __version__
from grainvl.errors import DataError

EXIT_BAD_INPUT = 2


# ---------------------------------------------------------------------------------------------- world
def _add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "world",
        help="generate the synthetic world (images, videos, multilingual text) in official dataset formats",
        description="Generate a seeded synthetic world in the official formats of COCO, VQA v2, NLVR2, RefCOCO+, "
        "X-VLM pre-training json, MSR-VTT, IGLUE, VLUE, GLUE, SQuAD and ConvAI2 (layout: docs/world_layout.md). "
        "The same options give byte-identical files and manifest.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--config", type=Path, help="YAML file with WorldConfig fields (flags below override it)")
    p.add_argument("--images", type=int, help="still images over all splits (default 200)")
    p.add_argument("--videos", type=int, help="video clips over all splits (default 10)")
    p.add_argument("--seed", type=int, help="world seed (default 0)")
    p.add_argument("--resolution", type=int, help="image side in pixels, 64-384 (default 224)")
    p.add_argument("--frames", type=int, help="frames per video clip (default 8)")
    p.add_argument("--shards", action="store_true", default=None, help="also write WebDataset tar shards")
    p.add_argument("--shard-size", type=int, help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="generator processes (output does not depend on it)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. text_train=50")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_world)


def _world_config(args: argparse.Namespace):
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.config import load_config
    from grainvl.data.world.generate import WorldConfig

    overrides = list(args.set)
    for flag in ("images", "videos", "seed", "resolution", "frames", "shards", "shard_size"):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{flag}={value}")
    return load_config(WorldConfig, args.config, overrides)


def _cmd_world(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.world.generate import format_world_summary, generate_world, progress_printer

    cfg = _world_config(args)
    start = time.perf_counter()
    summary = generate_world(cfg, args.out, workers=args.workers, progress=progress_printer(not args.quiet))
    elapsed = time.perf_counter() - start
    print(format_world_summary(summary))
    rate = cfg.images / max(elapsed, 1e-9)
    print(f"wrote {summary.files} files to {args.out} in {elapsed:.1f} s ({rate:.0f} images/s overall)")
    return 0


# ---------------------------------------------------------------------------------------------- data
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset utilities (check)", description="Dataset utilities.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{check}")
    c = dsub.add_parser(
        "check",
        help="validate a dataset file or folder and print counts and errors",
        description="Validate a dataset file or a folder (a world or real data in official formats): every record, "
        "every referenced image, and the manifest checksums when there is one. Exit 0 when clean, 2 otherwise.",
    )
    c.add_argument("path", type=Path, help="file or folder")
    c.add_argument("--format", help="force a format for a single file (see --list-formats)")
    c.add_argument("--skip-bad", action="store_true", help="list every bad record instead of the first per file")
    c.add_argument("--by-format", action="store_true", help="one table row per format instead of one per file")
    c.add_argument("--list-formats", action="store_true", help="print the known formats and exit")
    c.set_defaults(func=_cmd_data_check)


def _cmd_data_check(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.check import check_path, format_report
    from grainvl.data.formats.registry import FORMATS, load_all

    if args.list_formats:
        load_all()
        for spec in FORMATS.values():
            print(f"{spec.name:<28} {', '.join(spec.patterns):<44} {spec.description}")
        return 0
    report = check_path(args.path, fmt=args.format, skip_bad=args.skip_bad)
    print(format_report(report, by_format=args.by_format))
    if not report.ok:
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    return 0 if report.ok else EXIT_BAD_INPUT


# ---------------------------------------------------------------------------------------------- tokenizer
def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a tokenizer on world text", description="Tokenizer utilities.")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="{train}")
    t = tsub.add_parser(
        "train",
        help="train a WordPiece or unigram (SentencePiece-style) tokenizer on a world's captions",
        description="Train a tokenizer for from-scratch or multilingual models on the captions, questions and "
        "parallel text of a world folder (or any text file, one sentence per line); saves a Hugging Face folder.",
    )
    t.add_argument("--corpus", required=True, type=Path, help="world folder or a text file")
    t.add_argument("--kind", choices=("wordpiece", "unigram"), default="wordpiece")
    t.add_argument("--vocab-size", type=int, default=8000)
    t.add_argument("--out", required=True, type=Path)
    t.set_defaults(func=_cmd_tokenizer_train)


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import train_sentencepiece, train_wordpiece
    from grainvl.data.world.corpus import world_sentences

    texts = list(world_sentences(args.corpus))
    trainer = train_wordpiece if args.kind == "wordpiece" else train_sentencepiece
    tok = trainer(texts, args.vocab_size, args.out)
    print(f"trained a {args.kind} tokenizer with {len(tok)} tokens on {len(texts)} sentences -> {args.out}")
    return 0


# ---------------------------------------------------------------------------------------------- pretrain
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="X²-VLM pre-training (ITC, ITM, MLM on images, regions and video; box regression)",
        description="Pre-train an X²-VLM variant on X-VLM-format data (a world folder by default). Works under plain "
        "python and under torchrun (DDP: gloo on CPU, NCCL on GPU). Ends with zero-shot retrieval and grounding on "
        "the ID test and OOD splits next to chance, the model in RUN/model, metrics in RUN/metrics.jsonl and "
        "RUN/results.jsonl.",
    )
    p.add_argument("--config", type=Path, help="YAML with PretrainConfig fields (see configs/pretrain/)")
    p.add_argument("--model", help="registered architecture (grainvl.list_models()) or an architecture JSON file")
    p.add_argument("--data", help="world folder (annotations/pretrain/{split}/*.jsonl)")
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--out", help="run folder (checkpoints, metrics, model)")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. optim.lr=3e-4")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.config import load_config
    from grainvl.recipes.pretrain import PretrainConfig, main_print, run_pretrain

    overrides = list(args.set)
    for flag, key in (("model", "model"), ("data", "data.world"), ("steps", "train.steps"), ("out", "train.run_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    cfg = load_config(PretrainConfig, args.config, overrides)
    main_print(run_pretrain(cfg, resume=args.resume))
    return 0


# ---------------------------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on the embedded synthetic world (what `make demo` runs)",
        description="The whole pipeline on the synthetic world: generate it (ID and OOD splits, every official "
        "format), check it, draw a contact sheet, pre-train xvlm-small and print zero-shot retrieval and grounding "
        "next to chance, compress it (distill -> prune -> shrink), then benchmark three models on the five VLUE "
        "tasks (fine-tune, ID and OOD evaluation, latency, FLOPs, energy): OUT/report.md, OUT/results.jsonl, "
        "OUT/pareto.png. Settings: configs/pretrain/demo_small.yaml and configs/demo.yaml.",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    p.add_argument("--images", type=int, default=500, help="world images over all splits (default 500)")
    p.add_argument("--videos", type=int, default=40, help="world video clips (default 40)")
    p.add_argument("--resolution", type=int, default=160, help="world image side in pixels (default 160)")
    p.add_argument("--seed", type=int, default=0, help="seed of the world and the run (default 0)")
    p.add_argument("--workers", type=int, default=2, help="world generator processes (default 2)")
    p.add_argument("--steps", type=int, help="pre-training steps (default: configs/pretrain/demo_small.yaml, 160)")
    p.add_argument("--no-pretrain", action="store_true", help="stop after the world, the check and the contact sheet")
    p.add_argument("--no-bench", action="store_true", help="stop after pre-training (no compression, no benchmark)")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.demo import run_demo

    return run_demo(
        args.out,
        images=args.images,
        videos=args.videos,
        seed=args.seed,
        workers=args.workers,
        steps=args.steps,
        resolution=args.resolution,
        pretrain=not args.no_pretrain,
        bench=not args.no_bench,
    )


# ---------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="grainvl",
        description="grainvl: multi-grained vision-language models and efficient language models, "
        "offline and measured.",
    )
    parser.add_argument("--version", action="version", version=f"grainvl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")
    for add in (_add_world, _add_data, _add_tokenizer, _add_pretrain, _add_demo):
        add(sub)
    from grainvl.commands import register_all

    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (ValueError, FileNotFoundError) as e:
        if os.environ.get("GRAINVL_DEBUG"):
            raise
        # Configuration mistakes (bad option values, missing files) get one line, not a traceback.
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
