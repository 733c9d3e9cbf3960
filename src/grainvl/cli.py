"""``grainvl <command>``: the command-line entry point (also ``python -m grainvl``).

Every command has ``--help`` and is configured by one typed dataclass: ``--config FILE.yaml`` and
``--set a.b=c`` on every command, its other flags are shortcuts for fields (grainvl.commands). Bad
input ends with one line on stderr naming the file, the record and the reason, and exit status 2;
nothing is half-written (files are written atomically).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from grainvl import __version__
from grainvl.commands import add_config_args, config_from_args, register_all, shortcut
from grainvl.errors import DataError

EXIT_BAD_INPUT = 2


# ---------------------------------------------------------------------------------------------- world
def _add_world(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "world",
        help="generate the synthetic world (images, videos, multilingual text) in official dataset formats",
        description="Generate a seeded synthetic world in the official formats of COCO, VQA v2, NLVR2, RefCOCO+, "
        "X-VLM pre-training json, MSR-VTT, IGLUE, VLUE, GLUE, SQuAD and ConvAI2 (layout: docs/world_layout.md). "
        "The same WorldConfig gives byte-identical files and manifest.",
    )
    # --out, --workers and --quiet say where and how fast, not what: they are not WorldConfig fields.
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_config_args(p, "WorldConfig")
    shortcut(p, "--images", field="images", type=int, help="still images over all splits (default 200)")
    shortcut(p, "--videos", field="videos", type=int, help="video clips over all splits (default 10)")
    shortcut(p, "--seed", field="seed", type=int, help="world seed (default 0)")
    shortcut(p, "--resolution", field="resolution", type=int, help="image side in pixels, 64-384 (default 224)")
    shortcut(p, "--frames", field="frames", type=int, help="frames per video clip (default 8)")
    shortcut(p, "--shards", field="shards", action="store_true", help="also write WebDataset tar shards")
    shortcut(p, "--shard-size", field="shard_size", type=int, help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="generator processes (output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_world)


def _world_config(args: argparse.Namespace):
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.world.generate import WorldConfig

    return config_from_args(WorldConfig, args)


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
    add_config_args(c, "CheckConfig")
    shortcut(c, "path", field="path", nargs="?", help="file or folder")
    shortcut(c, "--format", field="format", help="force a format for a single file (see --list-formats)")
    shortcut(
        c, "--skip-bad", field="skip_bad", action="store_true", help="list every bad record, not the first per file"
    )
    shortcut(c, "--by-format", field="by_format", action="store_true", help="one table row per format, not per file")
    c.add_argument("--list-formats", action="store_true", help="print the known formats and exit")
    c.set_defaults(func=_cmd_data_check)


def _cmd_data_check(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.check import CheckConfig, check_path, format_report
    from grainvl.data.formats.registry import FORMATS, load_all

    if args.list_formats:
        load_all()
        for spec in FORMATS.values():
            print(f"{spec.name:<28} {', '.join(spec.patterns):<44} {spec.description}")
        return 0
    cfg = config_from_args(CheckConfig, args)
    report = check_path(cfg.path, fmt=cfg.format, skip_bad=cfg.skip_bad)
    print(format_report(report, by_format=cfg.by_format))
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
    add_config_args(t, "TokenizerTrainConfig")
    shortcut(t, "--corpus", field="corpus", type=Path, help="world folder or a text file")
    shortcut(t, "--kind", field="kind", choices=("wordpiece", "unigram"), help="tokenizer kind (default wordpiece)")
    shortcut(t, "--vocab-size", field="vocab_size", type=int, help="vocabulary size (default 8000)")
    shortcut(t, "--out", field="out", type=Path, help="output folder")
    t.set_defaults(func=_cmd_tokenizer_train)


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import TokenizerTrainConfig, train_sentencepiece, train_wordpiece
    from grainvl.data.world.corpus import world_sentences

    cfg = config_from_args(TokenizerTrainConfig, args)
    if cfg.kind not in ("wordpiece", "unigram"):
        raise ValueError(f"tokenizer kind must be wordpiece or unigram, got {cfg.kind!r}")
    texts = list(world_sentences(cfg.corpus))
    trainer = train_wordpiece if cfg.kind == "wordpiece" else train_sentencepiece
    tok = trainer(texts, cfg.vocab_size, Path(cfg.out))
    print(f"trained a {cfg.kind} tokenizer with {len(tok)} tokens on {len(texts)} sentences -> {cfg.out}")
    return 0


# ---------------------------------------------------------------------------------------------- pretrain
def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="X²-VLM pre-training (ITC, ITM, MLM on images, regions and video; box regression)",
        description="Pre-train an X²-VLM variant on X-VLM-format data (a world folder by default). Works under plain "
        "python and under torchrun (DDP: gloo on CPU, NCCL on GPU). Ends with zero-shot retrieval and grounding on "
        "the ID test and OOD splits next to chance, the model in RUN/model, metrics in RUN/metrics.jsonl and "
        "RUN/results.jsonl. Settings: PretrainConfig (configs/pretrain/).",
    )
    add_config_args(p, "PretrainConfig")
    shortcut(
        p, "--model", field="model", help="registered architecture (grainvl.list_models()) or an architecture JSON"
    )
    shortcut(p, "--data", field="data.world", help="world folder (annotations/pretrain/{split}/*.jsonl)")
    shortcut(p, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(p, "--out", field="train.run_dir", help="run folder (checkpoints, metrics, model)")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from")
    p.set_defaults(func=_cmd_pretrain)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.pretrain import PretrainConfig, format_report, run_pretrain
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(PretrainConfig, args)
    print_report(run_pretrain(cfg, resume=args.resume), format_report)
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
        "OUT/pareto.png. Settings: DemoConfig (configs/demo.yaml, the default --config) and "
        "configs/pretrain/demo_small.yaml.",
    )
    add_config_args(p, "DemoConfig")
    shortcut(p, "--out", field="out", type=Path, help="output folder (default runs/demo)")
    shortcut(p, "--images", field="images", type=int, help="world images over all splits (default 500)")
    shortcut(p, "--videos", field="videos", type=int, help="world video clips (default 40)")
    shortcut(p, "--resolution", field="resolution", type=int, help="world image side in pixels (default 160)")
    shortcut(p, "--seed", field="seed", type=int, help="seed of the world and the run (default 0)")
    shortcut(p, "--workers", field="workers", type=int, help="world generator processes (default 2)")
    shortcut(p, "--steps", field="steps", type=int, help="pre-training steps (default: demo_small.yaml's, 160)")
    shortcut(
        p,
        "--no-pretrain",
        field="skip_pretrain",
        action="store_true",
        help="stop after the world, the check and the contact sheet",
    )
    shortcut(
        p, "--no-bench", field="skip_bench", action="store_true", help="stop after pre-training (no compress, bench)"
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.demo import DEMO_CONFIG, DemoConfig, run_demo

    return run_demo(config_from_args(DemoConfig, args, default_yaml=DEMO_CONFIG if DEMO_CONFIG.exists() else None))


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
