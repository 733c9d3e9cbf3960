"""The main job at this stage: a small world with every annotation kind, checked, summarised and drawn."""

from __future__ import annotations

import time
from pathlib import Path

from grainvl.data.check import check_path, format_report
from grainvl.data.world.contact_sheet import make_contact_sheet
from grainvl.data.world.generate import WorldConfig, generate_world


def run_demo(out: Path, images: int = 160, videos: int = 12, seed: int = 0, workers: int = 2) -> int:
    from grainvl.cli import _progress_printer, format_world_summary

    world = out / "world"
    cfg = WorldConfig(images=images, videos=videos, seed=seed)
    print(f"[1/3] generating a world of {images} images and {videos} videos (seed {seed}) in {world}")
    start = time.perf_counter()
    summary = generate_world(cfg, world, workers=workers, progress=_progress_printer(True))
    print(f"      {summary.files} files in {time.perf_counter() - start:.1f} s")
    print(format_world_summary(summary))
    print("[2/3] checking every file, record and image (grainvl data check)")
    report = check_path(world)
    print(format_report(report, by_format=True))
    sheet = make_contact_sheet(world, out / "contact_sheet.png")
    print(f"[3/3] contact sheet: {sheet}")
    print(
        "OOD split (test_ood): held-out colour-shape pairs, an unseen background and more crowded scenes; "
        f"see {world / 'manifest.json'}"
    )
    return 0 if report.ok else 2
