"""``grainvl convert``: official X-VLM / X²-VLM / CCLM checkpoints and Hugging Face towers <-> grainvl folders."""

from __future__ import annotations

import argparse
from pathlib import Path

FROM_FORMATS = ("official-x2vlm", "official-xvlm", "official-cclm", "hf-bert", "hf-xlmr", "hf-vit", "hf-beit")
TO_FORMATS = ("official-x2vlm", "official-xvlm", "official-cclm", "hf-bert", "hf-xlmr", "hf-vit", "hf-beit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert official X-VLM/X²-VLM/CCLM checkpoints or Hugging Face towers to grainvl folders, and back",
        description="Import: --from FORMAT --input FILE_OR_FOLDER --output DIR writes a from_pretrained folder "
        "(official-*: a full model; hf-*: a grainvl tower folder). Export: --to FORMAT --input GRAINVL_DIR --output "
        "PATH writes an official checkpoint (.th/.pth/.safetensors) or a Hugging Face folder. Strict by default: "
        "every missing, unexpected or mis-shaped key is reported by name (docs/interop.md).",
    )
    direction = p.add_mutually_exclusive_group(required=True)
    direction.add_argument("--from", dest="source_format", choices=FROM_FORMATS, help="format of --input (import)")
    direction.add_argument("--to", dest="target_format", choices=TO_FORMATS, help="format to write (export)")
    p.add_argument("--input", required=True, type=Path, help="checkpoint file (.th/.pth/.safetensors) or folder")
    p.add_argument("--output", required=True, type=Path, help="folder (import, --to hf-*) or checkpoint file")
    p.add_argument("--config", type=Path, help="official config YAML (image_res, text layers, text_encoder path ...)")
    p.add_argument("--text-config", type=Path, help="BERT/RoBERTa config.json of the official text encoder")
    p.add_argument(
        "--tokenizer",
        type=Path,
        help="tokenizer folder copied into the output (default: MiniLM's "
        "bert-base-uncased vocabulary when the vocabulary has 30522 entries)",
    )
    p.add_argument(
        "--layout",
        choices=("pretrain", "finetune", "roberta"),
        default="pretrain",
        help="--to official-x2vlm/xvlm: text_encoder.bert.*+cls (pretrain), text_encoder.* (finetune) or "
        "text_encoder.roberta.*+lm_head (roberta)",
    )
    p.add_argument(
        "--no-strict",
        dest="strict",
        action="store_false",
        help="convert despite missing/unexpected keys (listed in conversion_report.json); mis-shaped keys always fail",
    )
    p.add_argument("--name", default="converted", help="model name stored in config.json")
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.errors import DataError

    try:
        if args.source_format:
            return _import(args)
        return _export(args)
    except KeyError as error:  # a required official key is absent: the file is not of the stated format
        raise DataError(
            args.input, None, f"required key {error} not found: not a {args.source_format} checkpoint"
        ) from None


def _import(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from grainvl.models import convert
    from grainvl.utils.fileio import atomic_write_text

    fmt = args.source_format
    if fmt.startswith("official-"):
        model, report = convert.load_official(args.input, fmt, args.config, args.text_config, args.strict, args.name)
        tokenizer = _tokenizer(args.tokenizer)
        if tokenizer is not None:
            model.config.tokenizer = ""
        model.save_pretrained(args.output, tokenizer=tokenizer)
        what = f"{model.config.text.layout} model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    else:
        if not args.input.is_dir():
            raise FileNotFoundError(f"{args.input}: {fmt} needs a Hugging Face folder (config.json + weights)")
        tower, config, report = convert.load_hf_tower(fmt, args.input, args.strict)
        convert.save_tower(tower, config, args.output, source_format=fmt)
        what = f"{type(tower).__name__} tower, {sum(p.numel() for p in tower.parameters()) / 1e6:.1f}M parameters"
    atomic_write_text(args.output / "conversion_report.json", json.dumps(report.to_dict(), indent=2))
    print(f"converted {args.input} ({fmt}, {report.layout or 'tower'}) -> {args.output}: {what}")
    _print_report(report)
    return 0


def _export(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.models import convert
    from grainvl.models.xvlm import XVLM

    fmt = args.target_format
    config_file = args.input / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{args.input}: no config.json (expected a grainvl model or tower folder)")
    if convert.TOWER_FILE_KEY in convert.read_json_config(config_file):
        if not fmt.startswith("hf-"):
            raise ValueError(f"{args.input} is a tower folder; only hf-* formats can be written from it")
        tower, tower_config = convert.load_tower(args.input)
    else:
        model = XVLM.from_pretrained(args.input).eval()
        if fmt.startswith("official-"):
            convert.save_official(model, args.output, fmt, args.layout)
            print(f"wrote {fmt} ({args.layout} layout) checkpoint {args.output}")
            return 0
        tower, tower_config = convert.model_tower(model, fmt)
    convert.save_hf_tower(tower, tower_config, fmt, args.output)
    print(f"wrote Hugging Face {fmt} folder {args.output}")
    return 0


def _tokenizer(folder: Path | None):
    if folder is None:
        return None
    from grainvl.data.tokenization import load_tokenizer

    return load_tokenizer(folder)


def _print_report(report) -> None:
    for label in ("missing", "unexpected", "ignored", "resized", "notes"):
        items = getattr(report, label)
        if items:
            shown = ", ".join(items[:6]) + (f" ... (+{len(items) - 6})" if len(items) > 6 else "")
            print(f"  {label} ({len(items)}): {shown}")
