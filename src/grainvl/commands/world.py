"""``grainvl world``: generate the synthetic world in the official dataset formats."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "world",
        help="generate the synthetic world (images, videos, multilingual text) in official dataset formats",
        description="Generate a seeded synthetic world in the official formats of COCO, VQA v2, NLVR2, RefCOCO+, "
        "X-VLM pre-training json, MSR-VTT, IGLUE, VLUE, GLUE, SQuAD and ConvAI2 (layout: docs/world_layout.md). "
        "The same WorldConfig gives byte-identical files and manifest.",
    )
    # --out, --workers and --quiet say where and how fast, not what: they are not WorldConfig fields.
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_config_args(p, "grainvl.data.world.generate:WorldConfig")
    shortcut(p, "--images", field="images", type=int, help="still images over all splits (default 200)")
    shortcut(p, "--videos", field="videos", type=int, help="video clips over all splits (default 10)")
    shortcut(p, "--seed", field="seed", type=int, help="world seed (default 0)")
    shortcut(p, "--resolution", field="resolution", type=int, help="image side in pixels, 64-384 (default 224)")
    shortcut(p, "--frames", field="frames", type=int, help="frames per video clip (default 8)")
    shortcut(
        p,
        "--dialogues",
        field="dialogues",
        type=int,
        help="ConvAI2 persona episodes over train/valid/test, with the DailyDialog-style and Dialogue-NLI-style "
        "sets beside them (default 60; 0: no dialogue data)",
    )
    shortcut(p, "--shards", field="shards", action="store_true", help="also write WebDataset tar shards")
    shortcut(p, "--shard-size", field="shard_size", type=int, help="samples per shard (default 1000)")
    p.add_argument("--workers", type=int, default=1, help="generator processes (output does not depend on it)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an --out folder that is not empty and not a world (its contents are deleted); an earlier "
        "world is always replaced",
    )
    p.set_defaults(func=_cmd_world)


def is_world_folder(path: Path) -> bool:
    """A folder ``grainvl world`` wrote (it holds ``manifest.json``): regenerating replaces it."""
    return (path / "manifest.json").is_file()


def _world_config(args: argparse.Namespace):
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.world.generate import WorldConfig

    return config_from_args(WorldConfig, args)


def _cmd_world(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.data.world.generate import format_world_summary, generate_world, progress_printer
    from grainvl.utils.fileio import staged_dir

    cfg = _world_config(args)
    start = time.perf_counter()
    # Generated beside --out and swapped in: an earlier world leaves no stale files (the manifest hashes every
    # file in the folder), an interrupted run leaves the old world whole, and a folder of other files is kept
    # unless --overwrite.
    with staged_dir(args.out, overwrite=args.overwrite, replaceable=is_world_folder) as staged:
        summary = generate_world(cfg, staged, workers=args.workers, progress=progress_printer(not args.quiet))
    elapsed = time.perf_counter() - start
    print(format_world_summary(summary))
    rate = cfg.images / max(elapsed, 1e-9)
    print(f"wrote {summary.files} files to {args.out} in {elapsed:.1f} s ({rate:.0f} images/s overall)")
    return 0
