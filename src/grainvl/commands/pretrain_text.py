"""``grainvl pretrain-text``: pre-train a BERT-family text encoder with MLM or TACO (MLM + token alignment)."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain-text",
        help="pre-train a BERT text encoder with MLM or TACO (token-alignment contrastive objective)",
        description="Pre-train a BERT-family text encoder from scratch (presets bert-tiny/mini/small/medium/base) or "
        "from a local Hugging Face folder, with masked language modelling (--objective mlm) or TACO (--objective "
        "taco: MLM + token-alignment contrastive loss, arXiv 2204.04163). Works under plain python and torchrun. "
        "Writes RUN/encoder (a Hugging Face BertForMaskedLM folder with tokenizer), checkpoints, RUN/metrics.jsonl "
        "and RUN/results.jsonl. See docs/taco.md.",
    )
    add_config_args(p, "grainvl.recipes.pretrain_text:TextPretrainConfig")
    shortcut(p, "--objective", field="objective", choices=("mlm", "taco"), help="pre-training objective (default mlm)")
    shortcut(
        p,
        "--model",
        field="model",
        help="preset (bert-tiny, bert-mini, bert-small, bert-medium, bert-base), architecture JSON, or HF folder",
    )
    shortcut(p, "--tokenizer", field="tokenizer", help="tokenizer folder (default: the model folder's, else MiniLM's)")
    shortcut(
        p,
        "--corpus",
        field="data.corpus",
        action="append",
        help="corpus: builtin:english (Python stdlib docstring prose), a world folder, a .jsonl file of "
        '{"text": ...} lines, or a text file (one document per line, or blank-line separated); repeat to combine',
    )
    shortcut(p, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(p, "--batch-size", field="data.batch_size", type=int, help="blocks per batch (default 32)")
    shortcut(p, "--seq-len", field="data.seq_len", type=int, help="tokens per block (default 128)")
    shortcut(p, "--lr", field="optim.lr", type=float, help="peak learning rate (default 1e-4)")
    shortcut(
        p,
        "--export-every",
        field="export_every",
        type=int,
        help="also save the encoder as a HF folder every N steps (RUN/encoders/)",
    )
    shortcut(p, "--out", field="train.run_dir", help="run folder (default runs/pretrain_text)")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from (default: none, a fresh run)")
    shortcut(p, "--seed", field="train.seed", type=int, help="seed of the weights, data order and masks (default 42)")
    p.add_argument(
        "--write-corpus",
        type=Path,
        metavar="FILE.jsonl",
        help='write the documents read from --corpus as {"text": ...} JSON lines to FILE and exit (no training; '
        "default: none, train)",
    )
    p.set_defaults(func=_cmd_pretrain_text)


def _cmd_pretrain_text(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.pretrain_text import TextPretrainConfig, format_report, run_text_pretrain
    from grainvl.recipes.scaffold import print_report

    cfg = config_from_args(TextPretrainConfig, args)
    if args.write_corpus is not None:
        return _write_corpus(cfg.data.corpus, cfg.data.layout, args.write_corpus)
    print_report(run_text_pretrain(cfg, resume=args.resume), format_report)
    return 0


def _write_corpus(specs: tuple[str, ...], layout: str, out: Path) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.text_corpus import load_corpora
    from grainvl.utils.fileio import write_jsonl

    documents = load_corpora(specs, layout)  # type: ignore[arg-type]
    write_jsonl(out, ({"text": d} for d in documents))
    words = sum(len(d.split()) for d in documents)
    print(f"wrote {len(documents)} documents ({words} words) from {', '.join(specs)} to {out}")
    return 0
