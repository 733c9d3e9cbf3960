"""The main job: the whole pipeline on the embedded synthetic world, on a CPU, in about a quarter hour.

Steps:
1. generate a seeded world (ID + OOD splits, every official format);
2. validate every file, record and image, and draw a contact sheet;
3. pre-train ``xvlm-small`` (``configs/pretrain/demo_small.yaml``) and print zero-shot retrieval and
   grounding on the ID test split and on test_ood next to chance;
4. compress it EfficientVLM-style (distill → prune → shrink) into a smaller dense student;
5. benchmark three models — the pre-trained ``xvlm-small``, its student and the tiny preset trained
   from scratch — on the five VLUE tasks (fine-tune, then evaluate ID and OOD) with latency,
   throughput, FLOPs, memory, energy and CO₂: ``OUT/report.md``, ``OUT/results.jsonl``,
   ``OUT/results.csv``, ``OUT/pareto.png`` and ``OUT/id_vs_ood.png``.

Every step is an ordinary command (``grainvl world``, ``data check``, ``pretrain``, ``compress``,
``bench``); the demo only chooses CPU-sized settings. The budget choices are documented in
``configs/demo.yaml`` and README.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grainvl.config import load_config
from grainvl.data.check import check_path, format_report
from grainvl.data.world.contact_sheet import make_contact_sheet
from grainvl.data.world.generate import WorldConfig, format_world_summary, generate_world, progress_printer
from grainvl.recipes.bench import BenchOptions, run_bench
from grainvl.recipes.compress import CompressConfig, run_compress
from grainvl.recipes.compress import format_report as format_compress
from grainvl.recipes.finetune import FinetuneConfig
from grainvl.recipes.pretrain import PretrainConfig, run_pretrain
from grainvl.recipes.pretrain import format_report as format_pretrain

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"  # the checkout root: src/grainvl/recipes/demo.py
DEMO_PRETRAIN = CONFIG_DIR / "pretrain" / "demo_small.yaml"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"


@dataclass
class DemoCompress:
    recipe: list[str] = field(default_factory=lambda: ["distill", "prune", "shrink"])
    steps: int = 40
    target_sparsity: float = 0.5


@dataclass
class DemoBench:
    tasks: list[str] = field(default_factory=lambda: ["retrieval", "vqa", "nlvr2", "grounding", "captioning"])
    finetune_steps: int = 30
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # every run (bench sets task, model, paths)
    task_finetune: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task, merged onto ``finetune``
    warmup: int = 3
    repeats: int = 20
    throughput_batch: int = 16
    throughput_repeats: int = 2
    budget_s: float = 5.0
    baseline: str = "xvlm-tiny"  # a third, much smaller model trained only by fine-tuning
    loyalty_examples: int = 64  # ID examples per task on which the others are compared with xvlm-small
    attack_examples: int = 8  # of those, attacked on the text side (TextFooler-style)


@dataclass
class DemoConfig:
    """``make demo`` / ``grainvl demo`` (``configs/demo.yaml``); pre-training settings: ``DEMO_PRETRAIN``."""

    out: str = "runs/demo"
    images: int = 500  # world images over all splits
    videos: int = 40  # world video clips
    resolution: int = 160  # world image side in pixels
    seed: int = 0  # seed of the world and the run
    workers: int = 2  # world generator processes (the world does not depend on it)
    steps: int | None = None  # pre-training steps; None: configs/pretrain/demo_small.yaml's
    skip_pretrain: bool = False  # stop after the world, the check and the contact sheet
    skip_bench: bool = False  # stop after pre-training (no compression, no benchmark)
    compress: DemoCompress = field(default_factory=DemoCompress)
    bench: DemoBench = field(default_factory=DemoBench)


def run_demo(demo: DemoConfig | None = None) -> int:
    """The whole pipeline; ``demo`` defaults to ``configs/demo.yaml``. Returns the exit status."""
    demo = demo if demo is not None else load_demo_config()
    start = time.perf_counter()
    out, seed, images, videos, resolution = Path(demo.out), demo.seed, demo.images, demo.videos, demo.resolution
    pretrain, bench = not demo.skip_pretrain, not (demo.skip_pretrain or demo.skip_bench)
    world = out / "world"
    total = 3 + int(pretrain) + 2 * int(bench)
    cfg = WorldConfig(images=images, videos=videos, seed=seed, resolution=resolution)
    print(f"[1/{total}] generating a world of {images} images and {videos} videos at {resolution} px (seed {seed})")
    t0 = time.perf_counter()
    summary = generate_world(cfg, world, workers=demo.workers, progress=progress_printer(True))
    print(f"      {summary.files} files in {time.perf_counter() - t0:.1f} s -> {world}")
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
    if not pretrain:
        return 0
    model_dir = _pretrain(out, world, seed, demo.steps, total)
    if not bench:
        return 0
    student_dir = _compress(out, world, model_dir, demo.compress, seed, total)
    status = _bench(out, world, model_dir, student_dir, demo.bench, seed, total)
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; report: {out / 'report.md'}")
    return status


def load_demo_config() -> DemoConfig:
    """``configs/demo.yaml`` (the defaults when run outside a checkout)."""
    return load_config(DemoConfig, DEMO_CONFIG if DEMO_CONFIG.exists() else None)


def _pretrain(out: Path, world: Path, seed: int, steps: int | None, total: int) -> Path:
    values: dict[str, Any] = {"data.world": str(world), "train.run_dir": str(out / "pretrain"), "train.seed": seed}
    if steps is not None:
        values["train.steps"] = steps
    if not DEMO_PRETRAIN.exists():
        raise FileNotFoundError(f"demo pre-training config not found: {DEMO_PRETRAIN} (run from a grainvl checkout)")
    cfg = load_config(PretrainConfig, DEMO_PRETRAIN, values=values)
    print(
        f"[4/{total}] pre-training {cfg.model} for {cfg.train.steps} steps (ITC, ITM, MLM on images, regions and "
        f"video; box regression) -> {cfg.train.run_dir}"
    )
    report = run_pretrain(cfg)
    print(format_pretrain(report))
    return Path(report["model_dir"])


def _compress(out: Path, world: Path, teacher: Path, cfg: DemoCompress, seed: int, total: int) -> Path:
    print(
        f"[5/{total}] compressing it: {' -> '.join(cfg.recipe)} ({cfg.steps} steps per training stage, "
        f"target sparsity {cfg.target_sparsity}) -> {out / 'compress'}"
    )
    report = run_compress(
        CompressConfig(
            teacher=str(teacher),
            recipe=list(cfg.recipe),
            world=str(world),
            out=str(out / "compress"),
            steps=cfg.steps,
            target_sparsity=cfg.target_sparsity,
            seed=seed,
        )
    )
    print(format_compress(report))
    return Path(report["model_dir"])


def _bench(out: Path, world: Path, model: Path, student: Path, cfg: DemoBench, seed: int, total: int) -> int:
    models = [f"xvlm-small={model}", f"xvlm-small-student={student}", cfg.baseline]
    print(
        f"[6/{total}] benchmarking {', '.join(m.split('=')[0] for m in models)} on {', '.join(cfg.tasks)}: "
        f"fine-tune {cfg.finetune_steps} steps, evaluate ID and OOD, measure cost -> {out / 'report.md'}"
    )
    options = BenchOptions(
        finetune_steps=cfg.finetune_steps,
        finetune=cfg.finetune,
        task_finetune=dict(cfg.task_finetune),
        seed=seed,
        warmup=cfg.warmup,
        repeats=cfg.repeats,
        throughput_batch=cfg.throughput_batch,
        throughput_repeats=cfg.throughput_repeats,
        budget_s=cfg.budget_s,
        teacher="xvlm-small",  # loyalty and robustness of the student (and the tiny model) against it
        loyalty_examples=cfg.loyalty_examples,
        attack_examples=cfg.attack_examples,
    )
    rows = run_bench(models, cfg.tasks, world, out, options, echo=None)
    failed = [r for r in rows if r.get("status") == "failed"]
    print((out / "report.md").read_text(encoding="utf-8"))
    return 1 if failed else 0
