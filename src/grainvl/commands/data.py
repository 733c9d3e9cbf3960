"""``grainvl data check``: validate a dataset file or folder (a world or real data in official formats)."""

from __future__ import annotations

import argparse
import sys

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
