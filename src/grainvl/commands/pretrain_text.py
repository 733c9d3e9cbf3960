"""``grainvl pretrain-text``: pre-train a BERT-family text encoder with MLM or TACO (MLM + token alignment)."""

from __future__ import annotations

import argparse
from pathlib import Path


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
    p.add_argument("--config", type=Path, help="YAML with TextPretrainConfig fields (flags below override it)")
    p.add_argument("--objective", choices=("mlm", "taco"), help="pre-training objective (default mlm)")
    p.add_argument(
        "--model",
        help="preset (bert-tiny, bert-mini, bert-small, bert-medium, bert-base), architecture JSON, or HF folder",
    )
    p.add_argument("--tokenizer", help="tokenizer folder (default: the model folder's, else the packaged MiniLM's)")
    p.add_argument(
        "--corpus",
        action="append",
        help="corpus: builtin:english (Python stdlib docstring prose), a world folder, a .jsonl file of "
        '{"text": ...} lines, or a text file (one document per line, or blank-line separated); repeat to combine',
    )
    p.add_argument("--steps", type=int, help="optimizer steps")
    p.add_argument("--batch-size", type=int, help="blocks per batch (default 32)")
    p.add_argument("--seq-len", type=int, help="tokens per block (default 128)")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    p.add_argument(
        "--export-every", type=int, help="also save the encoder as a HF folder every N steps (RUN/encoders/)"
    )
    p.add_argument("--out", help="run folder (default runs/pretrain_text)")
    p.add_argument("--resume", help="run folder or checkpoint folder to continue from")
    p.add_argument("--seed", type=int, help="seed of the initial weights, data order and masks (default 42)")
    p.add_argument(
        "--write-corpus",
        type=Path,
        metavar="FILE.jsonl",
        help='write the documents read from --corpus as {"text": ...} JSON lines to FILE and exit (no training)',
    )
    p.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted overrides, e.g. taco.temperature=0.1"
    )
    p.set_defaults(func=_cmd_pretrain_text)


def _cmd_pretrain_text(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.config import load_config
    from grainvl.recipes.pretrain_text import TextPretrainConfig, main_print, run_text_pretrain

    overrides = list(args.set)
    flags = (
        ("objective", "objective"),
        ("model", "model"),
        ("tokenizer", "tokenizer"),
        ("steps", "train.steps"),
        ("batch_size", "data.batch_size"),
        ("seq_len", "data.seq_len"),
        ("lr", "optim.lr"),
        ("export_every", "export_every"),
        ("out", "train.run_dir"),
        ("seed", "train.seed"),
    )
    for flag, key in flags:
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.corpus:
        # JSON list syntax keeps paths with commas or colons intact through the YAML override parser.
        import json

        overrides.append(f"data.corpus={json.dumps(args.corpus)}")
    cfg = load_config(TextPretrainConfig, args.config, overrides)
    if args.write_corpus is not None:
        return _write_corpus(cfg.data.corpus, cfg.data.layout, args.write_corpus)
    main_print(run_text_pretrain(cfg, resume=args.resume))
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
