"""``grainvl tokenizer train``: train a WordPiece or unigram tokenizer on world text."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a tokenizer on world text", description="Tokenizer utilities.")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="{train}")
    t = tsub.add_parser(
        "train",
        help="train a WordPiece or unigram (SentencePiece-style) tokenizer on a world's captions",
        description="Train a tokenizer for from-scratch or multilingual models on the captions, questions and "
        "parallel text of a world folder (or any text file, one sentence per line); saves a Hugging Face folder.",
    )
    add_config_args(t, "grainvl.data.tokenization:TokenizerTrainConfig")
    shortcut(t, "--corpus", field="corpus", type=Path, help="world folder or a text file (required)")
    shortcut(t, "--kind", field="kind", choices=("wordpiece", "unigram"), help="tokenizer kind")
    shortcut(t, "--vocab-size", field="vocab_size", type=int, help="vocabulary size")
    shortcut(t, "--out", field="out", type=Path, help="output folder (required)")
    # Not a TokenizerTrainConfig field: it says what may be replaced, not what is trained.
    t.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out folder that is not empty and not a tokenizer folder (its contents are deleted)",
    )
    t.set_defaults(func=_cmd_tokenizer_train)


def is_tokenizer_folder(path: Path) -> bool:
    """A Hugging Face tokenizer folder (what ``tokenizer train`` writes): replaced by the next training."""
    return (path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import TokenizerTrainConfig, train_sentencepiece, train_wordpiece
    from grainvl.data.world.corpus import world_sentences
    from grainvl.utils.fileio import check_output_dir, staged_dir

    cfg = config_from_args(TokenizerTrainConfig, args)
    if cfg.kind not in ("wordpiece", "unigram"):
        raise ValueError(f"tokenizer kind must be wordpiece or unigram, got {cfg.kind!r}")
    out = Path(cfg.out)
    check_output_dir(out, args.overwrite, replaceable=is_tokenizer_folder)  # before reading the corpus: fail fast
    texts = list(world_sentences(cfg.corpus))
    trainer = train_wordpiece if cfg.kind == "wordpiece" else train_sentencepiece
    with staged_dir(out, overwrite=args.overwrite, replaceable=is_tokenizer_folder) as staged:
        tok = trainer(texts, cfg.vocab_size, staged)
    print(f"trained a {cfg.kind} tokenizer with {len(tok)} tokens on {len(texts)} sentences -> {cfg.out}")
    return 0
