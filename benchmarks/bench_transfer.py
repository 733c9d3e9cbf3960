"""Intermediate-task selection on the world's text suite: PET task embeddings vs TextEmb and TaskEmb.

    python benchmarks/bench_transfer.py --world W [--per-kind 4] [--layers 2] [--out RUN]

One run of ``grainvl.recipes.transfer.run_evaluate`` on the packaged MiniLM: every task is
PET-tuned with prompt, prefix, LoRA and BitFit (final and early-checkpoint parameters, raw / delta /
centered variants), embedded with TextEmb and TaskEmb (Fisher), and every in-class source -> target
transfer is really fine-tuned for the ground truth (cached under OUT/cache, so a rerun with more
tasks pays only for the new pairs). Prints NDCG (×100, exponential gain, 0–1 relevance), the mean
rank of the top-ranked source and regret@3 per class, and the seconds each method needed: PET =
tuning of all tasks; TextEmb = one forward pass; TaskEmb = fine-tuning every task + the Fisher pass.
Without ``--world`` a text-only world is generated under OUT/world.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", type=Path, default=None, help="world folder (default: generate a text-only one)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"), help="output folder")
    parser.add_argument("--per-kind", type=int, default=4, help="classification and QA tasks each (issue asks 11)")
    parser.add_argument("--layers", type=int, default=2, help="MiniLM layers kept (6 = the whole model)")
    parser.add_argument("--pet-steps", type=int, default=20, help="PET steps per task")
    parser.add_argument("--ft-steps", type=int, default=20, help="fine-tuning steps per ground-truth run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=96)
    parser.add_argument("--max-dev", type=int, default=60, help="dev examples scored per task")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--target-train", type=int, default=None, help="full -> limited regime: target training examples (Vu et al.)"
    )
    parser.add_argument("--k", type=int, default=3, help="k of regret@k (use 1 when few sources per target)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from grainvl.data.tokenization import packaged_minilm_path
    from grainvl.recipes.transfer import EvaluateConfig, discover_tasks, format_table, run_evaluate
    from grainvl.transfer.ground_truth import FinetuneSettings

    world = args.world
    if world is None:
        from grainvl.data.world.generate import WorldConfig, _generate_text

        world = args.out / "world"
        _generate_text(WorldConfig(), world)
    tasks = discover_tasks(world, per_kind=args.per_kind)
    encoder = str(packaged_minilm_path())
    settings = FinetuneSettings(
        encoder=encoder,
        num_layers=args.layers,
        steps=args.ft_steps,
        batch_size=args.batch_size,
        lr=2e-4,
        max_length=args.max_length,
        max_dev_examples=args.max_dev,
        target_train_examples=args.target_train,
    )
    cfg = EvaluateConfig(
        encoder=encoder,
        num_layers=args.layers,
        pet_steps=args.pet_steps,
        pet_batch_size=args.batch_size,
        snapshot_steps=(args.pet_steps // 4,),
        finetune=settings,
        baseline_examples=64,
        max_length=args.max_length,
        k=args.k,
    )
    print(f"tasks: {[t.name for t in tasks]}")
    print(f"settings: {json.dumps(vars(args), default=str)}")
    start = time.perf_counter()
    report = run_evaluate(tasks, cfg, args.out / "cache")
    print(format_table(report, args.k))
    print(
        f"total wall time {time.perf_counter() - start:.0f}s; "
        f"compute seconds per method: {json.dumps({k: round(v, 1) for k, v in report.seconds.items()})}"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(report.to_json(), indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
