"""``grainvl demo``: the main job on the embedded synthetic world (what ``make demo`` runs)."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, config_from_args, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job on the embedded synthetic world (what `make demo` runs)",
        description="The whole pipeline on the synthetic world: generate it (ID and OOD splits, every official "
        "format), check it, draw a contact sheet, pre-train xvlm-small and print zero-shot retrieval and grounding "
        "next to chance, compress it (distill -> prune -> shrink), then benchmark three models on the five VLUE "
        "tasks (fine-tune, ID and OOD evaluation, latency, FLOPs, energy): OUT/report.md, OUT/results.jsonl, "
        "OUT/pareto.png; at the end each stage's wall time and disk (OUT/demo.json). Settings: DemoConfig "
        "(configs/demo.yaml, the default --config) and "
        "configs/pretrain/demo_small.yaml.",
    )
    add_config_args(p, "grainvl.recipes.demo:DemoConfig")
    shortcut(p, "--out", field="out", type=Path, help="output folder (default runs/demo)")
    shortcut(p, "--images", field="images", type=int, help="world images over all splits (default 500)")
    shortcut(p, "--videos", field="videos", type=int, help="world video clips (default 40)")
    shortcut(p, "--resolution", field="resolution", type=int, help="world image side in pixels (default 160)")
    shortcut(p, "--seed", field="seed", type=int, help="seed of the world and the run (default 0)")
    shortcut(p, "--workers", field="workers", type=int, help="world generator processes (default 2)")
    shortcut(p, "--steps", field="steps", type=int, help="pre-training steps (default: demo_small.yaml's, 160)")
    shortcut(
        p,
        "--no-pretrain",
        field="skip_pretrain",
        action="store_true",
        help="stop after the world, the check and the contact sheet",
    )
    shortcut(
        p, "--no-bench", field="skip_bench", action="store_true", help="stop after pre-training (no compress, bench)"
    )
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.demo import DEMO_CONFIG, DemoConfig, run_demo

    return run_demo(config_from_args(DemoConfig, args, default_yaml=DEMO_CONFIG if DEMO_CONFIG.exists() else None))
