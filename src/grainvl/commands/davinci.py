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
    dsub = p.add_subparsers(dest="davinci_command", required=True, metavar="{tokenizer,pretrain,caption,answer}")
    _register_tokenizer(dsub)
    _register_pretrain(dsub)
    _register_caption(dsub)
    _register_answer(dsub)


def _register_tokenizer(dsub: argparse._SubParsersAction) -> None:
    t = dsub.add_parser(
        "tokenizer",
        help="train the VQ image tokenizer on a world (or convert a taming VQGAN)",
        description="Train DaVinci's image tokenizer (a small VQGAN-family VQ autoencoder, stride 16) on a world's "
        "train images resized to --resolution (whole, or random crops with --crop), freeze it and report "
        "reconstruction PSNR and the share of codes used on the ID (test) and OOD (test_ood) images; writes "
        "OUT/tokenizer, OUT/reconstructions.png (rows: ID originals, ID reconstructions, OOD originals, OOD "
        "reconstructions), OUT/results.jsonl and checkpoints. With --from-taming CKPT --taming-config YAML it"
        " instead converts a taming-transformers VQGAN into the tokenizer folder OUT.",
    )
    add_config_args(t, "grainvl.recipes.davinci_tokenizer:DavinciTokenizerConfig")
    shortcut(t, "--world", field="data.world", help="world folder to train and evaluate on (required to train)")
    shortcut(t, "--out", field="train.run_dir", help="run folder (with --from-taming: the tokenizer folder)")
    shortcut(t, "--steps", field="train.steps", type=int, help="optimizer steps")
    shortcut(t, "--batch-size", field="data.batch_size", type=int, help="training images (or crops) per step")
    shortcut(
        t,
        "--resolution",
        field="data.resolution",
        type=int,
        help="resize every world image to this side (PIL bicubic) for training and evaluation: the DaVinci model's "
        "image side (davinci-small 128, davinci-tiny 64); 0: native size",
    )
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


def _predict_args(t: argparse.ArgumentParser, config: str, json_help: str) -> None:
    """What caption and answer share: their config class, the model, the image files and --json."""
    add_config_args(t, f"grainvl.recipes.davinci_predict:{config}")
    shortcut(t, "--model", field="model", help="DaVinci run folder (pretrain or fine-tuned), model folder or preset")
    shortcut(t, "--image", field="images", action="append", metavar="FILE", help="image file; repeat for several")
    t.add_argument("--json", action="store_true", help=f"print {json_help}")


def _register_caption(dsub: argparse._SubParsersAction) -> None:
    t = dsub.add_parser(
        "caption",
        help="caption image files with a DaVinci (fine-tuned captioning run, or zero-shot from a pre-trained one)",
        description="Caption image files (read with PIL, RGB, stretched to the model's resolution as the captioning "
        "test does). A fine-tuned captioning run (grainvl finetune captioning --model ...) captions exactly as its "
        "test: image + empty text in the encoder, [CLS] + prompt in the decoder, beam search; any other DaVinci "
        "(a davinci pretrain run, a model folder, a preset) captions zero-shot with the prompt as the encoder's "
        "text prefix, as pre-training's prefix LM taught it. Prints PATH<TAB>caption per image (--json: a JSON "
        "list); stderr says which of the two made them. See docs/davinci.md, 'Caption an image, answer a question'.",
    )
    _predict_args(t, "CaptionConfig", "a JSON list instead of PATH<TAB>caption lines")
    shortcut(t, "--prompt", field="prompt", help="the caption's opening words (default: the captioning task's)")
    shortcut(t, "--beams", field="beams", type=int, help="beam size (0: the captioning task's, 2)")
    shortcut(t, "--max-length", field="max_length", type=int, help="generated tokens (0: the captioning task's, 20)")
    t.set_defaults(func=_cmd_predict)


def _register_answer(dsub: argparse._SubParsersAction) -> None:
    t = dsub.add_parser(
        "answer",
        help="answer a question about image files with a DaVinci (ranked answer list, or free generation)",
        description="Answer one question about each image file. With an answer list (--answers FILE, the official "
        "answer_list.json format; else a fine-tuned vqa run's own) the list is ranked as the VQA test ranks it: "
        "first-token top-k, then full-answer log-likelihood re-ranking; prints PATH<TAB>answer<TAB>score for the "
        "--top best (score: log p of the whole answer). Without a list the answer is generated (image + question "
        "in the encoder, greedy or beam search over text ids) and scored the same way. --json: a JSON list; stderr "
        "says which was done. See docs/davinci.md, 'Caption an image, answer a question'.",
    )
    _predict_args(t, "AnswerConfig", "a JSON list instead of PATH<TAB>answer<TAB>score lines")
    shortcut(t, "--question", field="question", help="the question (asked of every image)")
    shortcut(t, "--answers", field="answers", metavar="FILE", help="answer_list.json to rank (default: the run's)")
    shortcut(t, "--k", field="k", type=int, help="first-token shortlist of the ranking (0: the run's k_test, 128)")
    shortcut(t, "--top", field="top", type=int, help="ranked answers printed per image")
    shortcut(t, "--beams", field="beams", type=int, help="free generation: beam size (1: greedy)")
    shortcut(t, "--max-length", field="max_length", type=int, help="free generation: answer tokens")
    t.set_defaults(func=_cmd_predict)


def _cmd_predict(args: argparse.Namespace) -> int:
    """``caption`` or ``answer``: build the config, run, print the mode on stderr and the results on stdout."""
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import sys

    from grainvl.recipes import davinci_predict as predict

    if args.davinci_command == "caption":
        report = predict.run_caption(config_from_args(predict.CaptionConfig, args))
        text = predict.format_captions(report, args.json)
    else:
        report = predict.run_answer(config_from_args(predict.AnswerConfig, args))
        text = predict.format_answers(report, args.json)
    print(f"# {report['mode']}", file=sys.stderr)
    print(text)
    return 0
