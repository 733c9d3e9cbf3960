"""The main job: a world with every annotation kind, checked and drawn, then X²-VLM pre-training on it.

Steps: (1) generate a seeded world (ID + OOD splits, all formats); (2) validate every file, record
and image; (3) draw a contact sheet; (4) pre-train ``xvlm-small`` (configs/pretrain/demo_small.yaml)
and print zero-shot retrieval and grounding on the ID test split and on test_ood next to chance.
"""

from __future__ import annotations

import time
from pathlib import Path

from grainvl.data.check import check_path, format_report
from grainvl.data.world.contact_sheet import make_contact_sheet
from grainvl.data.world.generate import WorldConfig, format_world_summary, generate_world, progress_printer

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "pretrain" / "demo_small.yaml"


def run_demo(
    out: Path,
    images: int = 500,
    videos: int = 40,
    seed: int = 0,
    workers: int = 2,
    steps: int | None = None,
    resolution: int = 160,
    pretrain: bool = True,
) -> int:
    world = out / "world"
    cfg = WorldConfig(images=images, videos=videos, seed=seed, resolution=resolution)
    total = 4 if pretrain else 3
    print(f"[1/{total}] generating a world of {images} images and {videos} videos at {resolution} px (seed {seed})")
    start = time.perf_counter()
    summary = generate_world(cfg, world, workers=workers, progress=progress_printer(True))
    print(f"      {summary.files} files in {time.perf_counter() - start:.1f} s -> {world}")
    print(format_world_summary(summary))
    print(f"[2/{total}] checking every file, record and image (grainvl data check)")
    report = check_path(world)
    print(format_report(report, by_format=True))
    if not report.ok:
        return 2
    sheet = make_contact_sheet(world, out / "contact_sheet.png")
    print(f"[3/{total}] contact sheet: {sheet}")
    print(
        "      test_ood holds out colour-shape pairs, adds an unseen background and more crowded scenes "
        f"({world / 'manifest.json'})"
    )
    if pretrain:
        _pretrain(out, world, seed, steps)
    return 0


def _pretrain(out: Path, world: Path, seed: int, steps: int | None) -> None:
    from grainvl.config import load_config
    from grainvl.train.pretrain import PretrainConfig, run_pretrain
    from grainvl.train.pretrain import format_report as format_pretrain

    overrides = [f"data.world={world}", f"train.run_dir={out / 'pretrain'}", f"train.seed={seed}"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    if not DEMO_CONFIG.exists():
        raise FileNotFoundError(f"demo pre-training config not found: {DEMO_CONFIG} (run from a grainvl checkout)")
    cfg = load_config(PretrainConfig, DEMO_CONFIG, overrides)
    print(
        f"[4/4] pre-training {cfg.model} for {cfg.train.steps} steps (ITC, ITM, MLM on images, regions and "
        f"video; box regression) -> {cfg.train.run_dir}"
    )
    report = run_pretrain(cfg)
    print(format_pretrain(report))
