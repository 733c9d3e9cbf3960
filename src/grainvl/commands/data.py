"""``grainvl data check``: validate a dataset file or folder (a world or real data in official formats)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut
from grainvl.errors import EXIT_BAD_INPUT


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset utilities (check)", description="Dataset utilities.")
    dsub = p.add_subparsers(dest="data_command", required=True, metavar="{check}")
    c = dsub.add_parser(
        "check",
        help="validate a dataset file or folder and print counts and errors",
        description="Validate a dataset file or a folder (a world or real data in official formats): every record, "
        "every referenced image, and the manifest checksums when there is one. Exit 0 when clean, 2 otherwise.",
    )
    add_config_args(c, "grainvl.data.check:CheckConfig")
    shortcut(c, "path", field="path", nargs="?", help="file or folder")
    shortcut(c, "--image-root", field="image_root", help="folder image paths are relative to (default: the data root)")
    shortcut(c, "--format", field="format", help="force a format for a single file (see --list-formats)")
    shortcut(
        c, "--skip-bad", field="skip_bad", action="store_true", help="list every bad record, not the first per file"
    )
    shortcut(c, "--by-format", field="by_format", action="store_true", help="one table row per format, not per file")
    shortcut(
        c,
        "--allow-outside-root",
        field="allow_outside_root",
        action="store_true",
        help="accept image paths outside the image root (absolute, '..', symlinked folders); refused otherwise",
    )
    c.add_argument("--list-formats", action="store_true", help="print the known formats and exit")
    c.set_defaults(func=_cmd_data_check)


def _cmd_data_check(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.check import CheckConfig, check_layout, check_path, format_report, layout_from_config
    from grainvl.data.formats.registry import FORMATS, load_all

    if args.list_formats:
        load_all()
        for spec in FORMATS.values():
            print(f"{spec.name:<28} {', '.join(spec.patterns):<44} {spec.description}")
        return 0
    data_config = _data_config(args.config)
    if data_config is not None:  # a fine-tuning config (grainvl's or an official one): check what it reads
        layout, task = layout_from_config(data_config)
        if args.image_root:
            layout.files.image_root = args.image_root
        if args.path:
            layout.root = Path(args.path)
        if args.allow_outside_root:
            layout.files.allow_outside_root = True
        report = check_layout(layout, task, skip_bad=bool(args.skip_bad))
        print(format_report(report, by_format=bool(args.by_format)))
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
        return 0 if report.ok else EXIT_BAD_INPUT
    cfg = config_from_args(CheckConfig, args)
    if not cfg.path:
        raise ValueError("data check: give a PATH (a file or folder) or --config with a fine-tuning config")
    report = check_path(
        cfg.path, fmt=cfg.format, skip_bad=cfg.skip_bad, image_root=cfg.image_root, allow_outside=cfg.allow_outside_root
    )
    print(format_report(report, by_format=cfg.by_format))
    if not report.ok:
        for error in report.errors:
            print(f"error: {error}", file=sys.stderr)
    return 0 if report.ok else EXIT_BAD_INPUT


def _data_config(path: Path | None) -> dict | None:
    """The mapping of ``--config`` when it is a fine-tuning config (it names a task, a data root or files)."""
    if path is None:
        return None
    # Deferred: YAML is read only when the command runs.
    import yaml

    tree = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    keys = {"task", "world", "files", "train_file", "test_file", "val_file"}
    return tree if isinstance(tree, dict) and keys & set(tree) else None
