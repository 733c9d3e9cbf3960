"""TACO vs. MLM: pre-training steps to the same downstream score, measured side by side in one run.

    python benchmarks/bench_taco.py [--steps 1000] [--eval-every 250] [--model bert-tiny] [--out runs/bench_taco]

What one run does (the paper's protocol, Fu et al. 2022 Table 1 / Fig. 5, scaled to a CPU):

1. A world (generated into OUT/world unless ``--world`` is given) supplies the GLUE-format tasks.
2. Corpus: real English prose (``builtin:english``, the Python standard library's docstrings) plus the
   world's *training* text; a WordPiece vocabulary is trained on it (deterministic).
3. One initial encoder (``--model`` preset, seed ``--seed``) is pre-trained twice on the same blocks,
   with the same masks and data order: ``--objective mlm`` and ``--objective taco`` (MLM + TC), each
   exporting a Hugging Face folder every ``--eval-every`` steps.
4. The initial encoder and every exported checkpoint are fine-tuned on each task
   (:func:`grainvl.tasks.text_classification.finetune_text_classifier`, same recipe and seeds for all)
   and scored on the task's dev set with its GLUE main metric; the average over tasks is the curve.
5. The headline: the first step at which TACO's average reaches MLM's average at MLM's final step
   (linearly interpolated between checkpoints), and the speed-up ``final_steps / that_step`` (the
   paper: 250k / 50k = 5x). When TACO never reaches it, that is reported as such.

Everything lands in OUT/bench_taco.json and OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from grainvl.data.text_corpus import load_corpora
from grainvl.data.tokenization import train_wordpiece
from grainvl.tasks.text_classification import TextFinetuneConfig, finetune_text_classifier
from grainvl.train.logging import append_result
from grainvl.train.loop import TrainConfig
from grainvl.train.pretrain_text import (
    TextPretrainConfig,
    TextPretrainData,
    build_text_model,
    run_text_pretrain,
    save_hf_bert,
)

DEFAULT_TASKS = ("scene_cola", "relation_qqp", "color_qnli", "size_sst")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench_taco"))
    p.add_argument("--world", type=Path, help="existing world folder (default: generate OUT/world)")
    p.add_argument("--model", default="bert-tiny", help="preset or architecture JSON (default bert-tiny)")
    p.add_argument("--steps", type=int, default=1000, help="pre-training steps of each objective")
    p.add_argument("--eval-every", type=int, default=250, help="checkpoint period evaluated downstream")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4, help="peak pre-training lr (paper: 1e-4 at 250k steps)")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated world GLUE task names")
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-examples", type=int, default=128, help="train examples per task (a limited-data regime)")
    p.add_argument("--finetune-seeds", type=int, default=1, help="fine-tuning seeds averaged per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="processes (one torch thread each): the two pre-trainings run side by side, then the fine-tunings "
        "are shared out; tiny models run faster this way than with intra-op threads",
    )
    return p.parse_args()


def prepare_world(args: argparse.Namespace) -> Path:
    if args.world is not None:
        return args.world
    from grainvl.data.world.generate import WorldConfig, generate_world

    world = args.out / "world"
    if not (world / "manifest.json").is_file():
        cfg = WorldConfig(images=300, videos=0, resolution=64, text_train=400, text_dev=300, seed=args.seed)
        generate_world(cfg, world)
    return world


def finetune_score(encoder: str, task_dir: str, seed: int, steps: int, lr: float, examples: int) -> float:
    """Main dev metric (x100) of one fine-tuning run (a worker job: one torch thread)."""
    torch.set_num_threads(1)
    cfg = TextFinetuneConfig(steps=steps, batch_size=16, lr=lr, max_length=64, seed=seed, max_train_examples=examples)
    return 100 * finetune_text_classifier(encoder, Path(task_dir), cfg).score


def downstream(
    pool: ProcessPoolExecutor, encoders: list[Path], world: Path, args: argparse.Namespace
) -> dict[Path, dict[str, float]]:
    """{encoder: {task: main dev metric x100, mean over fine-tuning seeds}} for every encoder folder."""
    names = args.tasks.split(",")
    jobs = {
        (encoder, name, seed): pool.submit(
            finetune_score,
            str(encoder),
            str(world / "text" / "glue" / name),
            seed,
            args.finetune_steps,
            args.finetune_lr,
            args.finetune_examples,
        )
        for encoder in encoders
        for name in names
        for seed in range(args.finetune_seeds)
    }
    return {
        encoder: {
            name: statistics.fmean(jobs[(encoder, name, seed)].result() for seed in range(args.finetune_seeds))
            for name in names
        }
        for encoder in encoders
    }


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """First step (linear interpolation between checkpoints) at which ``curve`` reaches ``target``."""
    previous: tuple[int, float] | None = None
    for step, value in curve:
        if value >= target:
            if previous is None or value == previous[1]:
                return float(step)
            (s0, v0), (s1, v1) = previous, (step, value)
            return s0 + (target - v0) / (v1 - v0) * (s1 - s0)
        previous = (step, value)
    return None


def mlm_loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, mean MLM loss of the logging window ending there) from a run's metrics.jsonl."""
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["mlm_loss"]) for r in map(json.loads, lines) if "mlm_loss" in r]


def loss_speedup(out: Path, steps: int) -> dict[str, Any]:
    """Steps TACO needs for the MLM loss that MLM has at its last logging window (same masks and data order)."""
    curves = {o: mlm_loss_curve(out / o) for o in ("mlm", "taco")}
    target = curves["mlm"][-1][1]
    reached = steps_to_reach([(step, -loss) for step, loss in curves["taco"]], -target)
    return {
        "mlm_loss_curves": curves,
        "mlm_final_mlm_loss": target,
        "taco_steps_to_mlm_final_mlm_loss": reached,
        "mlm_loss_speedup": steps / reached if reached else None,
    }


def pretrain(objective: str, corpus: list[str], tokenizer: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One pre-training run (a worker job: one torch thread)."""
    cfg = TextPretrainConfig(
        model=args.model,
        tokenizer=str(tokenizer),
        objective=objective,
        data=TextPretrainData(corpus=tuple(corpus), seq_len=args.seq_len, batch_size=args.batch_size),
        train=TrainConfig(
            steps=args.steps,
            run_dir=str(args.out / objective),
            seed=args.seed,
            log_every=50,
            progress=False,
            tensorboard=False,
            count_flops=True,
        ),
        export_every=args.eval_every,
        torch_threads=1,
    )
    cfg.optim.lr = args.lr
    start = time.perf_counter()
    report = run_text_pretrain(cfg)
    report["seconds"] = time.perf_counter() - start
    return report


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    world = prepare_world(args)
    corpus = ["builtin:english", str(world)]
    documents = load_corpora(corpus)
    tokenizer = train_wordpiece(documents, args.vocab_size, args.out / "tokenizer")
    print(f"corpus: {len(documents)} documents; WordPiece vocabulary of {len(tokenizer)} tokens")

    # The common initial encoder, exactly as run_text_pretrain builds it from the same seed.
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    encoder, head, tok = build_text_model(args.model, str(args.out / "tokenizer"))
    save_hf_bert(args.out / "init", encoder, head, tok)

    # Spawned workers: forking after torch has started its thread pools can deadlock.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=context) as pool:
        futures = {o: pool.submit(pretrain, o, corpus, args.out / "tokenizer", args) for o in ("mlm", "taco")}
        reports = {objective: future.result() for objective, future in futures.items()}
        start = time.perf_counter()
        checkpoints = {o: sorted((args.out / o / "encoders").iterdir()) for o in ("mlm", "taco")}
        encoders = [args.out / "init"] + [folder for o in ("mlm", "taco") for folder in checkpoints[o]]
        scores = downstream(pool, encoders, world, args)
        finetune_seconds = time.perf_counter() - start
    curves: dict[str, list[dict[str, Any]]] = {}
    for objective in ("mlm", "taco"):
        points = [(0, args.out / "init")] + [(int(f.name.split("_")[1]), f) for f in checkpoints[objective]]
        curves[objective] = [
            {"step": step, "scores": scores[folder], "average": statistics.fmean(scores[folder].values())}
            for step, folder in points
        ]

    target = curves["mlm"][-1]["average"]
    taco_curve = [(point["step"], point["average"]) for point in curves["taco"]]
    reached = steps_to_reach(taco_curve, target)
    # reached == 0: the initial encoder already scores as well as MLM's final one (no speed-up defined).
    speedup = args.steps / reached if reached else None
    result = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "pretrain": {
            o: {"seconds": r["seconds"], "final_losses": r["summary"]["final_losses"], "corpus": r["corpus"]}
            for o, r in reports.items()
        },
        "curves": curves,
        "mlm_final_average": target,
        "taco_steps_to_mlm_final": reached,
        "speedup": speedup,
        "finetune_seconds": finetune_seconds,
        **loss_speedup(args.out, args.steps),
    }
    (args.out / "bench_taco.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    for objective, curve in curves.items():
        for point in curve:
            append_result(
                args.out / "results.jsonl",
                {
                    "model": f"{args.model}-{objective}-step{point['step']}",
                    "task": "glue_average",
                    "dataset": "world:" + args.tasks,
                    "split": "id",
                    "metric": "dev_average",
                    "value": point["average"],
                    "seed": args.seed,
                },
            )
    print_table(curves, args, target, reached, speedup, reports)
    print(
        f"MLM loss (window mean) at MLM's final step: {result['mlm_final_mlm_loss']:.3f}; TACO reaches it at step "
        f"{result['taco_steps_to_mlm_final_mlm_loss']}: speed-up {result['mlm_loss_speedup']}"
    )


def print_table(
    curves: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
    target: float,
    reached: float | None,
    speedup: float | None,
    reports: dict[str, Any],
) -> None:
    names = args.tasks.split(",")
    print(f"\n{'objective':<10}{'step':>6}" + "".join(f"{n[:12]:>14}" for n in names) + f"{'average':>10}")
    for objective, curve in curves.items():
        for point in curve:
            cells = "".join(f"{point['scores'][n]:>14.1f}" for n in names)
            print(f"{objective:<10}{point['step']:>6}{cells}{point['average']:>10.1f}")
    for objective, report in reports.items():
        losses = ", ".join(f"{k} {v:.3f}" for k, v in report["summary"]["final_losses"].items())
        print(f"{objective}: {report['seconds']:.0f} s pre-training; final {losses}")
    print(f"MLM average at its final step {args.steps}: {target:.1f}")
    if reached is None:
        print("TACO never reached it within the run (speed-up < 1 at this scale)")
    elif speedup is None:
        print("the initial encoder already reaches it: these tasks do not separate the objectives at this scale")
    else:
        print(f"TACO reaches it at step {reached:.0f}: {speedup:.2f}x fewer steps (paper: 5x, 50k vs 250k)")


if __name__ == "__main__":
    main()
