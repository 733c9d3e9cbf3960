"""``grainvl tokenizer``: train a tokenizer on world text, rebuild the packaged multilingual one, count [UNK]s."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="train a tokenizer on world text", description="Tokenizer utilities.")
    tsub = p.add_subparsers(dest="tokenizer_command", required=True, metavar="{train,multilingual,unk-rate}")
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
    _overwrite_flag(t)
    t.set_defaults(func=_cmd_tokenizer_train)
    _register_multilingual(tsub)
    _register_unk_rate(tsub)


def _overwrite_flag(parser: argparse.ArgumentParser) -> None:
    # Not a config field: it says what may be replaced, not what is trained.
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out folder that is not empty and not a tokenizer folder (its contents are deleted)",
    )


def _register_multilingual(tsub: argparse._SubParsersAction) -> None:
    m = tsub.add_parser(
        "multilingual",
        help="rebuild the packaged six-language tokenizer (world-multilingual) from the world's grammars",
        description="Sample the text of SCENES scenes and VIDEOS clips in all six world languages (nothing is "
        "rendered) and train the lower-cased Unigram that the cclm-* presets use. The defaults reproduce the "
        "packaged folder byte for byte: grainvl tokenizer multilingual --out "
        "src/grainvl/data/tokenizers/world-multilingual",
    )
    add_config_args(m, "grainvl.data.tokenization:MultilingualTokenizerConfig")
    shortcut(m, "--out", field="out", type=Path, help="output folder (required)")
    shortcut(m, "--scenes", field="scenes", type=int, help="scenes whose text is sampled")
    shortcut(m, "--videos", field="videos", type=int, help="video clips whose text is sampled")
    shortcut(m, "--seed", field="seed", type=int, help="world seed of the sample")
    shortcut(m, "--vocab-size", field="vocab_size", type=int, help="upper bound on the vocabulary size")
    _overwrite_flag(m)
    m.set_defaults(func=_cmd_tokenizer_multilingual)


def _register_unk_rate(tsub: argparse._SubParsersAction) -> None:
    u = tsub.add_parser(
        "unk-rate",
        help="per-language share of tokens a model's tokenizer turns into its unknown token",
        description="Tokenise the multilingual captions of a world (every split's image_text_multilingual.jsonl) "
        'or a JSON-lines file ("caption": {lang: text}, or "lang" with a caption/text/sentence field) and print '
        "tokens, unknown tokens and their rate per language. Exit status 1 when any language reaches --max-rate.",
    )
    add_config_args(u, "grainvl.data.tokenization:UnknownRateConfig")
    shortcut(u, "--data", field="data", type=Path, help="world folder or JSON-lines file (required)")
    shortcut(u, "--model", field="model", help="model whose tokenizer is measured (preset, JSON or folder)")
    shortcut(u, "--tokenizer", field="tokenizer", help="a tokenizer folder or packaged name instead of --model's")
    shortcut(u, "--max-rate", field="max_rate", type=float, help="highest allowed unknown rate per language")
    u.set_defaults(func=_cmd_tokenizer_unk_rate)


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


def _cmd_tokenizer_multilingual(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import MultilingualTokenizerConfig, train_world_multilingual
    from grainvl.utils.fileio import check_output_dir, staged_dir

    cfg = config_from_args(MultilingualTokenizerConfig, args)
    out = Path(cfg.out)
    check_output_dir(out, args.overwrite, replaceable=is_tokenizer_folder)
    with staged_dir(out, overwrite=args.overwrite, replaceable=is_tokenizer_folder) as staged:
        tok = train_world_multilingual(cfg, staged)
    print(f"trained a six-language unigram tokenizer with {len(tok)} tokens ({cfg.scenes} scenes) -> {cfg.out}")
    return 0


def _cmd_tokenizer_unk_rate(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import (
        UnknownRateConfig,
        format_unknown_rates,
        load_tokenizer,
        resolve_tokenizer_folder,
        texts_by_language,
        unknown_token_rates,
    )
    from grainvl.models.factory import get_tokenizer

    cfg = config_from_args(UnknownRateConfig, args)
    if not cfg.data:
        raise ValueError("tokenizer unk-rate needs --data (a world folder or a JSON-lines file)")
    tokenizer = load_tokenizer(resolve_tokenizer_folder(cfg.tokenizer)) if cfg.tokenizer else get_tokenizer(cfg.model)
    rates = unknown_token_rates(tokenizer, texts_by_language(cfg.data))
    name = cfg.tokenizer or cfg.model
    print(f"unknown tokens of {name}'s tokenizer ({len(tokenizer)} tokens) on {cfg.data}")
    print(format_unknown_rates(rates))
    failing = sorted(lang for lang, count in rates.items() if count.rate >= cfg.max_rate)
    if failing:
        print(f"unknown rate >= {cfg.max_rate:.2%} in: {', '.join(failing)}")
        return 1
    return 0
