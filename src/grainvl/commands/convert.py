"""``grainvl convert``: official X-VLM / X²-VLM / CCLM checkpoints and Hugging Face towers <-> grainvl folders."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut

FROM_FORMATS = ("official-x2vlm", "official-xvlm", "official-cclm", "hf-bert", "hf-xlmr", "hf-vit", "hf-beit")
TO_FORMATS = ("official-x2vlm", "official-xvlm", "official-cclm", "hf-bert", "hf-xlmr", "hf-vit", "hf-beit")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert official X-VLM/X²-VLM/CCLM checkpoints or Hugging Face towers to grainvl folders, and back",
        description="Import: --from FORMAT --input FILE_OR_FOLDER --output DIR writes a from_pretrained folder "
        "(official-*: a full model; hf-*: a grainvl tower folder). Export: --to FORMAT --input GRAINVL_DIR --output "
        "PATH writes an official checkpoint (.th/.pth/.safetensors) or a Hugging Face folder. Strict by default: "
        "every missing, unexpected or mis-shaped key is reported by name (docs/interop.md). Settings: ConvertConfig; "
        "the official YAML is --official-config.",
    )
    add_config_args(p, "grainvl.models.convert:ConvertConfig")
    direction = p.add_mutually_exclusive_group()
    shortcut(
        direction,
        "--from",
        dest="source_format",
        field="source_format",
        choices=FROM_FORMATS,
        help="format of --input (import)",
    )
    shortcut(
        direction,
        "--to",
        dest="target_format",
        field="target_format",
        choices=TO_FORMATS,
        help="format to write (export)",
    )
    shortcut(p, "--input", field="input", type=Path, help="checkpoint file (.th/.pth/.safetensors) or folder")
    shortcut(p, "--output", field="output", type=Path, help="folder (import, --to hf-*) or checkpoint file")
    shortcut(
        p,
        "--official-config",
        field="official_config",
        type=Path,
        help="official config YAML (image_res, text layers, text_encoder path ...); --config is grainvl's own",
    )
    shortcut(
        p, "--text-config", field="text_config", type=Path, help="BERT/RoBERTa config.json of the official text encoder"
    )
    shortcut(
        p,
        "--cross-config",
        field="cross_config",
        type=Path,
        help="official-cclm (X²-VLM CrossViewLM): the cross encoder's own BERT config.json (heads, FFN width, "
        "LayerNorm eps); needed when the cross encoder's shape differs from the text encoder's",
    )
    shortcut(
        p,
        "--tokenizer",
        field="tokenizer",
        type=Path,
        help="tokenizer folder copied into the output (default: MiniLM's "
        "bert-base-uncased vocabulary when the vocabulary has 30522 entries)",
    )
    shortcut(
        p,
        "--layout",
        field="layout",
        choices=("pretrain", "finetune", "roberta"),
        help="--to official-*, single-stack models: text_encoder.bert.*+cls (pretrain, default), text_encoder.* "
        "(finetune) or text_encoder.roberta.*+lm_head (roberta; not official-cclm); a CrossViewLM has one layout",
    )
    shortcut(
        p,
        "--no-strict",
        dest="strict",
        field="strict",
        action="store_false",
        help="convert despite missing/unexpected keys (listed in conversion_report.json); mis-shaped keys always fail",
    )
    shortcut(p, "--name", field="name", help="model name stored in config.json (default converted)")
    shortcut(
        p,
        "--overwrite",
        field="overwrite",
        action="store_true",
        help="replace an --output folder that is not empty and not a model folder (its contents are deleted)",
    )
    p.set_defaults(func=_cmd_convert)


def _cmd_convert(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.errors import DataError
    from grainvl.models.convert import ConvertConfig

    cfg = config_from_args(ConvertConfig, args)
    _check_output(cfg)  # before the (slow) load: a bad --output fails in one line, and nothing is destroyed
    try:
        if cfg.source_format:
            return _import(cfg)
        return _export(cfg)
    except KeyError as error:  # a required official key is absent: the file is not of the stated format
        raise DataError(
            cfg.input, None, f"required key {error} not found: not a {cfg.source_format} checkpoint"
        ) from None


def _check_output(cfg) -> None:
    """An official checkpoint is a file (plus its YAML and BERT JSON); every other output is a model folder, and a
    non-empty folder that is not one is replaced only with --overwrite."""
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.utils.fileio import check_output_dir, is_weights_folder, require_writable_file

    output = Path(cfg.output)
    if cfg.target_format and cfg.target_format.startswith("official-"):
        # Deferred: as above (convert imports torch).
        from grainvl.models.convert import official_config_paths

        for path in (output, *official_config_paths(output)):
            require_writable_file(path)
    else:
        check_output_dir(output, cfg.overwrite, replaceable=is_weights_folder)


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def _import(cfg) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    import json

    from grainvl.models import convert
    from grainvl.utils.fileio import atomic_write_text

    fmt, source, output = cfg.source_format, Path(cfg.input), Path(cfg.output)
    if fmt.startswith("official-"):
        official, text, cross = _path(cfg.official_config), _path(cfg.text_config), _path(cfg.cross_config)
        model, report = convert.load_official(source, fmt, official, text, cfg.strict, cfg.name, cross)
        tokenizer = _tokenizer(_path(cfg.tokenizer))
        if tokenizer is not None:
            model.config.tokenizer = ""
        model.save_pretrained(output, tokenizer=tokenizer, overwrite=cfg.overwrite)
        what = f"{model.config.text.layout} model, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters"
    else:
        if not source.is_dir():
            raise FileNotFoundError(f"{source}: {fmt} needs a Hugging Face folder (config.json + weights)")
        tower, config, report = convert.load_hf_tower(fmt, source, cfg.strict)
        convert.save_tower(tower, config, output, source_format=fmt, overwrite=cfg.overwrite)
        what = f"{type(tower).__name__} tower, {sum(p.numel() for p in tower.parameters()) / 1e6:.1f}M parameters"
    atomic_write_text(output / "conversion_report.json", json.dumps(report.to_dict(), indent=2))
    print(f"converted {source} ({fmt}, {report.layout or 'tower'}) -> {output}: {what}")
    _print_report(report)
    return 0


def _export(cfg) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.models import convert
    from grainvl.models.factory import load_model

    fmt, source, output = cfg.target_format, Path(cfg.input), Path(cfg.output)
    config_file = source / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{source}: no config.json (expected a grainvl model or tower folder)")
    if convert.TOWER_FILE_KEY in convert.read_json_config(config_file):
        if not fmt.startswith("hf-"):
            raise ValueError(f"{source} is a tower folder; only hf-* formats can be written from it")
        tower, tower_config = convert.load_tower(source)
    else:
        # The one resolver: a save_pretrained folder, or a run folder (its config.json names no tower).
        model = load_model(source).eval()
        if fmt.startswith("official-"):
            convert.save_official(model, output, fmt, cfg.layout)
            layout = "CrossViewLM" if model.config.text.layout == "cross" else cfg.layout
            print(f"wrote {fmt} ({layout} layout) checkpoint {output}")
            return 0
        tower, tower_config = convert.model_tower(model, fmt)
    convert.save_hf_tower(tower, tower_config, fmt, output, overwrite=cfg.overwrite)
    print(f"wrote Hugging Face {fmt} folder {output}")
    return 0


def _tokenizer(folder: Path | None):
    if folder is None:
        return None
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.tokenization import load_tokenizer

    return load_tokenizer(folder)


def _print_report(report) -> None:
    for label in ("missing", "unexpected", "ignored", "resized", "notes"):
        items = getattr(report, label)
        if items:
            shown = ", ".join(items[:6]) + (f" ... (+{len(items) - 6})" if len(items) > 6 else "")
            print(f"  {label} ({len(items)}): {shown}")
