"""Teacher vs distilled + pruned + shrunk student, measured side by side in one run.

    python benchmarks/bench_compress.py [--teacher DIR] [--world DIR] [--pretrain-steps 60] [--steps 60]
                                        [--target-sparsity 0.5] [--out runs/bench_compress]

Without ``--teacher`` a small X²-VLM (BEiT-v2 vision, 6 blocks; 6-layer BERT, 3 of them fusion;
width 192) is pre-trained on the world for ``--pretrain-steps`` steps to serve as the teacher; without
``--world`` a small world is generated first. Then ``grainvl compress --recipe distill,prune,shrink``
runs on it, and both models are timed **at batch 1** (image + text + fusion + ITM head, fp32, the
process's threads), alternating teacher and student every repetition so that machine load hits both
alike. Reported: latency p50 and the teacher/student ratio, parameter and FLOP ratios, target vs
achieved sparsity per modality, and score retention on zero-shot retrieval of the world's test split
(student mean recall / teacher mean recall). The lead will switch retention to the five VLUE tasks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from pathlib import Path

import torch

from grainvl.compress.recipes import CompressConfig, format_report, run_compress
from grainvl.models.factory import get_model_config
from grainvl.models.xvlm import XVLM


def teacher_architecture(path: Path) -> Path:
    """A CPU-sized teacher with transformer towers on both sides (so that every modality can be pruned)."""
    cfg = get_model_config("xvlm-tiny")
    cfg = dataclasses.replace(
        cfg,
        name="bench-teacher",
        vision=dataclasses.replace(cfg.vision, width=192, depth=6, heads=6, resolution=64),
        text=dataclasses.replace(
            cfg.text,
            hidden_size=192,
            num_heads=6,
            num_layers=6,
            fusion_start=3,
            intermediate_size=768,
            encoder_width=192,
        ),
        embed_dim=64,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
    return path


def make_world(folder: Path, images: int) -> Path:
    from grainvl.data.world.generate import WorldConfig, generate_world

    if not (folder / "annotations").is_dir():
        cfg = WorldConfig(images=images, videos=0, resolution=64, text_scenes=0, dialogues=0)
        generate_world(cfg, folder)
    return folder


def pretrain_teacher(arch: Path, world: Path, steps: int, out: Path) -> Path:
    from grainvl.train.loop import TrainConfig
    from grainvl.train.pretrain import PretrainConfig, PretrainData, run_pretrain

    cfg = PretrainConfig(
        model=str(arch),
        data=PretrainData(world=str(world), image_batch_size=8, region_images=2),
        train=TrainConfig(
            steps=steps, run_dir=str(out), progress=False, tensorboard=False, track_energy=False, count_flops=False
        ),
    )
    cfg.eval.splits = ()
    return Path(run_pretrain(cfg)["model_dir"])


def structural_masks(model: XVLM, sparsity: float) -> dict[str, torch.Tensor]:
    """Masks keeping ``ceil((1 - sparsity) · units)`` units of every row (the first ones): a model of exactly
    that structured sparsity, to time what removal at the target buys. Says nothing about accuracy."""
    from grainvl.compress.prune import mask_sites

    masks = {}
    for site in mask_sites(model):
        keep = math.ceil((1.0 - sparsity) * site.units)
        row = torch.zeros(site.units)
        row[:keep] = 1.0
        masks[site.name] = row.expand(len(site.modules), -1).clone()
    return masks


@torch.no_grad()
def side_by_side_latency(models: dict[str, XVLM], repeats: int) -> dict[str, list[float]]:
    """Seconds per batch-1 forward (image + text + fusion + ITM head), alternating the models each repetition."""
    times: dict[str, list[float]] = {name: [] for name in models}
    for model in models.values():
        model.eval()
    res = next(iter(models.values())).config.vision.resolution
    length = next(iter(models.values())).config.max_tokens
    batch = {
        "image": torch.randn(1, 3, res, res),
        "text_ids": torch.randint(1000, 2000, (1, length)),
        "text_atts": torch.ones(1, length, dtype=torch.long),
    }

    def run(model: XVLM) -> None:
        model.itm_logits(model.extract_features(batch).fused)

    for model in models.values():  # warm-up
        for _ in range(3):
            run(model)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            run(model)
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", help="teacher model folder (default: pre-train the bench teacher)")
    parser.add_argument("--world", type=Path, help="world folder (default: generate one under --out)")
    parser.add_argument("--images", type=int, default=80, help="images of a generated world")
    parser.add_argument("--pretrain-steps", type=int, default=30)
    parser.add_argument("--steps", type=int, default=30, help="steps of each compression stage")
    parser.add_argument("--reg-lr", type=float, help="lr of log α and λ (default: the paper's 0.01)")
    parser.add_argument("--target-sparsity", type=float, default=0.5)
    parser.add_argument("--student", default="half", choices=("half", "efficientvlm"))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads while timing (default 1: least noise on a shared CPU)"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench_compress"))
    args = parser.parse_args()

    start = time.perf_counter()
    world = args.world or make_world(args.out / "world", args.images)
    teacher_dir = Path(args.teacher) if args.teacher else None
    if teacher_dir is None:
        arch = teacher_architecture(args.out / "bench-teacher.json")
        teacher_dir = pretrain_teacher(arch, world, args.pretrain_steps, args.out / "teacher")
    cfg = CompressConfig(
        teacher=str(teacher_dir),
        recipe=["distill", "prune", "shrink"],
        world=str(world),
        out=str(args.out / "compress"),
        steps=args.steps,
        target_sparsity=args.target_sparsity,
        student=args.student,
        reg_lr=args.reg_lr,
        progress=False,
        track_energy=False,
    )
    report = run_compress(cfg)
    print(format_report(report))

    teacher = XVLM.from_pretrained(teacher_dir)
    student = XVLM.from_pretrained(Path(cfg.out) / "shrink")
    distilled = XVLM.from_pretrained(Path(cfg.out) / "distill")
    from grainvl.compress.shrink import shrink

    at_target = shrink(distilled, structural_masks(distilled, args.target_sparsity))
    models = {"teacher": teacher, "distilled": distilled, "student": student, "at_target": at_target}
    torch.set_num_threads(args.threads)
    times = side_by_side_latency(models, args.repeats)
    p50 = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    best = {name: min(t) * 1e3 for name, t in times.items()}
    ev = report["evaluation"]
    prune = report["stages"]["prune"]
    results = {
        "threads": torch.get_num_threads(),
        "latency_ms_p50": p50,
        "latency_ms_min": best,
        "latency_ratio_min_teacher_over_student": best["teacher"] / best["student"],
        "latency_ratio_teacher_over_student": p50["teacher"] / p50["student"],
        "latency_ratio_teacher_over_distilled": p50["teacher"] / p50["distilled"],
        "latency_ratio_teacher_over_at_target": p50["teacher"] / p50["at_target"],
        "params_M_at_target": sum(p.numel() for p in at_target.parameters()) / 1e6,
        "params_M": {"teacher": ev["teacher"]["params_M"], "student": ev["student"]["params_M"]},
        "param_ratio_student_over_teacher": ev["student"]["params_M"] / ev["teacher"]["params_M"],
        "gflops_ratio_teacher_over_student": ev["teacher"]["gflops"] / ev["student"]["gflops"],
        "target_sparsity": prune["target_sparsity"],
        "achieved_sparsity": prune["achieved_sparsity"],
        "retrieval_r_mean": {"teacher": ev["teacher"]["r_mean"], "student": ev["student"]["r_mean"]},
        "retention": ev["student"]["r_mean"] / ev["teacher"]["r_mean"] if ev["teacher"]["r_mean"] else None,
        "wall_s": time.perf_counter() - start,
    }
    print(
        f"(at_target = the distilled model shrunk to exactly {args.target_sparsity:.0%} structured sparsity, "
        "first units kept: a speed reference only, no accuracy)"
    )
    print(f"\nbatch-1 latency p50 over {args.repeats} alternating runs ({results['threads']} threads):")
    for name, value in p50.items():
        print(f"  {name:<10}{value:>9.2f} ms  (min {best[name]:.2f} ms)")
    print(f"speed-up teacher/student {results['latency_ratio_teacher_over_student']:.2f}x "
          f"(distilled only {results['latency_ratio_teacher_over_distilled']:.2f}x); "
          f"params {results['param_ratio_student_over_teacher']:.1%} of the teacher; "
          f"FLOPs {results['gflops_ratio_teacher_over_student']:.2f}x fewer")  # fmt: skip
    achieved = ", ".join(f"{k} {v:.3f}" for k, v in prune["achieved_sparsity"].items())
    print(f"sparsity of the prunable student parameters: target {prune['target_sparsity']:.3f}; achieved {achieved}")
    retention = results["retention"]
    scores = f"zero-shot retrieval r_mean: teacher {ev['teacher']['r_mean']:.1f}, student {ev['student']['r_mean']:.1f}"
    print(scores + (f" (retention {retention:.1%})" if retention is not None else " (teacher at 0: no retention)"))
    (args.out / "bench_compress.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
