"""The main job: the whole pipeline on the embedded synthetic world, on a CPU, in about twenty minutes.

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

Disk: the pre-training run keeps its last checkpoint only (``keep_ckpts: 1``), the benchmark's task runs
keep no checkpoint and, in the demo, drop their fine-tuned weights once measured (``bench.keep_weights``).
The demo ends with each stage's wall time and the disk its files take under ``OUT`` (``du``-style: allocated
blocks, hard links once), printed and written to ``OUT/demo.json``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
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
from grainvl.utils.fileio import write_json

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs"  # the checkout root: src/grainvl/recipes/demo.py
DEMO_PRETRAIN = CONFIG_DIR / "pretrain" / "demo_small.yaml"
DEMO_CONFIG = CONFIG_DIR / "demo.yaml"
SUMMARY_FILE = "demo.json"
# What each stage writes under OUT; the benchmark writes the rest (runs/, logs/, report, results, plots).
STAGE_PATHS = {"world": ("world", "contact_sheet.png"), "pre-training": ("pretrain",), "compression": ("compress",)}
BENCH_STAGE = "benchmark"


@dataclass
class DemoCompress:
    recipe: list[str] = field(default_factory=lambda: ["distill", "prune", "shrink"])
    steps: int = 40
    target_sparsity: float = 0.5
    lagrangian: str = "auto"  # CompressConfig.lagrangian: auto | paper | penalty
    fast_dropout: bool = False  # CompressConfig.fast_dropout


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
    keep_weights: bool = False  # keep each task run's fine-tuned model/ + head (about 1.3 GB in all)
    loyalty_examples: int = 64  # ID examples per task on which the others are compared with xvlm-small
    attack_examples: int = 8  # of those, attacked on the text side (TextFooler-style)
    latency_backend: str = "auto"  # BenchOptions.latency_backend: auto | eager | compile | onnx


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
    out, seed = Path(demo.out), demo.seed
    world = out / "world"
    pretrain, bench = not demo.skip_pretrain, not (demo.skip_pretrain or demo.skip_bench)
    total = 3 + int(pretrain) + 2 * int(bench)
    clock = StageClock()
    if not clock.run("world", lambda: _world(demo, total)):
        return 2
    status = 0
    if pretrain:
        model = clock.run("pre-training", lambda: _pretrain(out, world, seed, demo.steps, total))
        if bench:
            student = clock.run("compression", lambda: _compress(out, world, model, demo.compress, seed, total))
            status = clock.run(BENCH_STAGE, lambda: _bench(out, world, model, student, demo.bench, seed, total))
    summary = clock.finish(out)
    print(format_stages(summary, out))
    report = f"; report: {out / 'report.md'}" if bench else ""
    print(f"demo finished in {summary['total']['seconds'] / 60:.1f} min{report}")
    return status


def _world(demo: DemoConfig, total: int) -> bool:
    """Steps 1-3: generate, check, contact sheet. False when the check found an error."""
    out, images, videos, resolution = Path(demo.out), demo.images, demo.videos, demo.resolution
    world = out / "world"
    cfg = WorldConfig(images=images, videos=videos, seed=demo.seed, resolution=resolution)
    print(
        f"[1/{total}] generating a world of {images} images and {videos} videos at {resolution} px (seed {demo.seed})"
    )
    t0 = time.perf_counter()
    summary = generate_world(cfg, world, workers=demo.workers, progress=progress_printer(True))
    print(f"      {summary.files} files in {time.perf_counter() - t0:.1f} s -> {world}")
    print(format_world_summary(summary))
    print(f"[2/{total}] checking every file, record and image (grainvl data check)")
    report = check_path(world)
    print(format_report(report, by_format=True))
    if not report.ok:
        return False
    sheet = make_contact_sheet(world, out / "contact_sheet.png")
    print(f"[3/{total}] contact sheet: {sheet}")
    print(
        "      test_ood holds out colour-shape pairs, adds an unseen background and more crowded scenes "
        f"({world / 'manifest.json'})"
    )
    return True


# ---------------------------------------------------------------------------------------------- time and disk
class StageClock:
    """Wall time of each demo stage, then the disk each one's files take (:func:`stage_disk`)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = {}

    def run(self, stage: str, body: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return body()
        finally:
            self.seconds[stage] = time.perf_counter() - t0

    def finish(self, out: Path) -> dict[str, Any]:
        """``{"stages": {stage: {seconds, disk_bytes}}, "total": {...}}``, also written to ``OUT/demo.json``."""
        total_s = time.perf_counter() - self.start
        disk = stage_disk(out, list(self.seconds))
        summary = {
            "stages": {s: {"seconds": round(t, 3), "disk_bytes": disk[s]} for s, t in self.seconds.items()},
            "total": {"seconds": round(total_s, 3), "disk_bytes": disk_bytes(out)},
        }
        write_json(out / SUMMARY_FILE, summary)
        return summary


def disk_bytes(path: Path) -> int:
    """What ``du -s --block-size=1 PATH`` reports: allocated blocks of every file and folder, hard links once.

    Allocated, not apparent, size: that is what fills a disk (a sparse or tiny file counts its blocks).
    """
    if not path.exists():
        return 0
    entries = [path]
    if path.is_dir():
        for root, dirs, files in os.walk(path):  # symlinks are not followed (lstat below counts the link)
            entries += [Path(root) / name for name in (*dirs, *files)]
    seen: set[tuple[int, int]] = set()
    used = 0
    for entry in entries:
        info = entry.lstat()
        if (info.st_dev, info.st_ino) not in seen:
            seen.add((info.st_dev, info.st_ino))
            used += info.st_blocks * 512  # st_blocks counts 512-byte units on every POSIX system
    return used


def stage_disk(out: Path, stages: list[str]) -> dict[str, int]:
    """Disk per stage: the paths in ``STAGE_PATHS``; the benchmark gets the rest of ``OUT`` (it writes at its top)."""
    disk = {s: sum(disk_bytes(out / p) for p in STAGE_PATHS[s]) for s in stages if s in STAGE_PATHS}
    if BENCH_STAGE in stages:
        disk[BENCH_STAGE] = disk_bytes(out) - sum(disk.values()) - disk_bytes(out / SUMMARY_FILE)
    return disk


def format_stages(summary: dict[str, Any], out: Path) -> str:
    """The end-of-demo table: minutes and MB (10^6 bytes) per stage, then the total."""
    rows = [*summary["stages"].items(), ("total", summary["total"])]
    lines = [f"demo stages (time, disk under {out}):", f"  {'stage':<14} {'min':>6} {'MB':>9}"]
    lines += [f"  {name:<14} {v['seconds'] / 60:>6.1f} {v['disk_bytes'] / 1e6:>9.1f}" for name, v in rows]
    return "\n".join(lines)


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
            lagrangian=cfg.lagrangian,
            fast_dropout=cfg.fast_dropout,
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
        keep_weights=cfg.keep_weights,
        latency_backend=cfg.latency_backend,
    )
    rows = run_bench(models, cfg.tasks, world, out, options, echo=None)
    failed = [r for r in rows if r.get("status") == "failed"]
    print((out / "report.md").read_text(encoding="utf-8"))
    return 1 if failed else 0
