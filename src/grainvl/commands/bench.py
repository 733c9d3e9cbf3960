"""``grainvl bench``: a VLUE-style benchmark of several models over several tasks, ID and OOD, with costs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="fine-tune and evaluate models on tasks (ID and OOD) with latency, FLOPs, memory, energy; Pareto report",
        description="For every model (each in its own subprocess, so a crash or out-of-memory fails one row) and "
        "every task: fine-tune (or reuse a fine-tuned run), evaluate the ID (test) and OOD (test_ood) splits, and "
        "measure parameters, FLOPs per sample, latency p50/p90 at batch 1 after warm-up, throughput at batch 32, "
        "peak memory, and energy/CO2 through codecarbon's offline tracker. Writes OUT/results.jsonl (long schema), "
        "OUT/results.csv, OUT/leaderboard.csv, OUT/report.md, OUT/pareto.png and OUT/id_vs_ood.png "
        "(docs/benchmark.md).",
    )
    p.add_argument(
        "--models",
        help="comma-separated [LABEL=]SOURCE entries; SOURCE is a registered name (xvlm-tiny), a save_pretrained "
        "folder, a run folder holding model/, or a compressed-model folder",
    )
    p.add_argument("--tasks", help="comma-separated task names (default: the five VLUE tasks)")
    p.add_argument("--world", type=Path, help="world (or real data) folder in the official formats")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--finetune-steps", type=int, help="fine-tuning steps per (model, task) (default: the task's)")
    p.add_argument(
        "--finetuned",
        nargs="*",
        default=[],
        metavar="LABEL:TASK=RUN",
        help="reuse an already fine-tuned run folder for that model label and task instead of fine-tuning",
    )
    p.add_argument("--reuse", action="store_true", help="reuse OUT/runs/<model>/<task> when already fine-tuned")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="fine-tune overrides for every run")
    p.add_argument("--country", default="FRA", help="ISO 3166-1 alpha-3 country for carbon intensity (default FRA)")
    p.add_argument("--no-codecarbon", action="store_true", help="energy by grainvl's fallback estimate only")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=0, help="seed of fine-tuning and evaluation (default 0)")
    p.add_argument("--warmup", type=int, default=10, help="untimed batch-1 calls before timing (default 10)")
    p.add_argument("--repeats", type=int, default=50, help="timed batch-1 calls for p50/p90 (default 50)")
    p.add_argument("--throughput-batch", type=int, default=32, help="batch size of the throughput run (default 32)")
    p.add_argument(
        "--budget", type=float, default=30.0, help="seconds cap of each timed measurement (default 30; >= 5 calls)"
    )
    p.add_argument(
        "--teacher",
        metavar="LABEL",
        help=(
            "one of the benchmarked models: add label/probability loyalty to it and word-substitution robustness "
            "columns (nlvr2, vqa, retrieval; ID split)"
        ),
    )
    p.add_argument(
        "--loyalty-examples", type=int, default=256, help="first N ID examples scored for loyalty (default 256)"
    )
    p.add_argument(
        "--attack-examples",
        type=int,
        default=16,
        help="first M ID examples attacked per (model, task) with --teacher; 0: no attack (default 16)",
    )
    p.add_argument("--timeout", type=float, help="seconds per model before its worker is killed (default: none)")
    p.add_argument("--resume", action="store_true", help="keep successful rows of OUT/results.jsonl, run the rest")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from OUT/results.jsonl")
    p.add_argument("--quiet", action="store_true", help="do not echo the workers' output")
    p.add_argument(
        "--backend",
        default="grainvl.recipes.bench:FinetuneBackend",
        metavar="MODULE:CLASS",
        help="advanced: the class providing finetune/load/evaluate (default: grainvl's tasks)",
    )
    p.set_defaults(func=_cmd_bench)


def _split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def _finetuned_map(entries: list[str]) -> dict[str, str]:
    mapping = {}
    for entry in entries:
        key, sep, run = entry.partition("=")
        if not sep or ":" not in key or not run:
            raise ValueError(f"--finetuned expects LABEL:TASK=RUN, got {entry!r}")
        mapping[key] = run
    return mapping


def _cmd_bench(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.bench.report import write_report

    if args.report_only:
        paths = write_report(args.out / "results.jsonl", args.out)
        print(f"report: {paths['report_md']}")
        return 0
    from grainvl.recipes.bench import BenchOptions, run_bench

    if not args.models or args.world is None:
        raise ValueError("--models and --world are required (or use --report-only)")
    if args.tasks:
        tasks = _split_list(args.tasks)
    else:
        from grainvl.tasks.registry import VLUE_TASKS

        tasks = list(VLUE_TASKS)
    options = BenchOptions(
        finetune_steps=args.finetune_steps,
        finetuned=_finetuned_map(args.finetuned),
        overrides=list(args.set),
        country=args.country,
        use_codecarbon=not args.no_codecarbon,
        precision=args.precision,
        device=args.device,
        seed=args.seed,
        warmup=args.warmup,
        repeats=args.repeats,
        throughput_batch=args.throughput_batch,
        budget_s=args.budget,
        timeout_s=args.timeout,
        reuse=args.reuse,
        teacher=args.teacher,
        loyalty_examples=args.loyalty_examples,
        attack_examples=args.attack_examples,
        backend=args.backend,
    )
    rows = run_bench(
        _split_list(args.models),
        tasks,
        args.world,
        args.out,
        options,
        resume=args.resume,
        echo=None if args.quiet else print,
    )
    failed = sorted({(r["model"], r["task"]) for r in rows if r.get("status") == "failed"})
    print(f"wrote {args.out / 'results.jsonl'} ({len(rows)} rows), report {args.out / 'report.md'}")
    if failed:
        print(f"{len(failed)} (model, task) run(s) failed: " + ", ".join(f"{m}/{t}" for m, t in failed))
    return 0 if not failed else 1
