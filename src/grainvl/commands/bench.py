"""``grainvl bench``: a VLUE-style benchmark of several models over several tasks, ID and OOD, with costs."""

from __future__ import annotations

import argparse
from pathlib import Path

from grainvl.commands import add_config_args, comma_list, config_from_args, key_values, shortcut


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="fine-tune and evaluate models on tasks (ID and OOD) with latency, FLOPs, memory, energy; Pareto report",
        description="For every model (each in its own subprocess, so a crash or out-of-memory fails one row) and "
        "every task: fine-tune (or reuse a fine-tuned run), evaluate the ID (test) and OOD (test_ood) splits, and "
        "measure parameters, FLOPs per sample, latency p50/p90 at batch 1 after warm-up, throughput at "
        "--throughput-batch, peak memory, and energy/CO2 through codecarbon's offline tracker. Writes "
        "OUT/results.jsonl (long schema), "
        "OUT/results.csv, OUT/leaderboard.csv, OUT/report.md, OUT/pareto.png and OUT/id_vs_ood.png "
        "(docs/benchmark.md). Settings: BenchOptions; fine-tuning settings of every run under finetune, e.g. "
        "--set finetune.data.batch_size=16 finetune.optim.lr=1e-4, per task under task_finetune.",
    )
    p.add_argument(
        "--models",
        help="comma-separated [LABEL=]SOURCE entries; SOURCE is a registered name (xvlm-tiny), a save_pretrained "
        "folder, a run folder holding model/, or a compressed-model folder (required unless --report-only; no default)",
    )
    p.add_argument("--tasks", help="comma-separated task names (default: the five VLUE tasks)")
    p.add_argument(
        "--world",
        type=Path,
        help="world (or real data) folder in the official formats (required unless --report-only; no default)",
    )
    # What to run and where (models, tasks, world, out) are arguments of run_bench, not BenchOptions fields.
    p.add_argument("--out", required=True, type=Path, help="output folder")
    add_config_args(p, "grainvl.recipes.bench:BenchOptions")
    shortcut(
        p,
        "--finetune-steps",
        field="finetune_steps",
        type=int,
        help="fine-tuning steps per (model, task); default: the task's",
    )
    shortcut(
        p,
        "--finetuned",
        field="finetuned",
        parse=_finetuned_map,
        nargs="*",
        metavar="LABEL:TASK=RUN",
        help="reuse an already fine-tuned run folder for that model label and task instead of fine-tuning",
    )
    shortcut(p, "--reuse", field="reuse", action="store_true", help="reuse OUT/runs/<model>/<task> if fine-tuned")
    shortcut(p, "--country", field="country", help="ISO 3166-1 alpha-3 country for carbon intensity (default FRA)")
    shortcut(
        p,
        "--no-codecarbon",
        field="use_codecarbon",
        action="store_false",
        help="energy by the fallback estimate only",
    )
    shortcut(p, "--precision", field="precision", choices=("fp32", "bf16", "fp16"), help="autocast precision")
    shortcut(p, "--device", field="device", help="auto (CUDA when available, default), cpu, cuda or cuda:N")
    shortcut(p, "--seed", field="seed", type=int, help="seed of fine-tuning and evaluation (default 0)")
    shortcut(p, "--warmup", field="warmup", type=int, help="untimed batch-1 calls before timing (default 10)")
    shortcut(p, "--repeats", field="repeats", type=int, help="timed batch-1 calls for p50/p90 (default 50)")
    shortcut(
        p,
        "--latency-backend",
        field="latency_backend",
        choices=("auto", "eager", "compile", "onnx"),
        help="what runs the image/text/fusion towers in the batch-1 latency: eager, torch.compile or the exported ONNX "
        "graphs on onnxruntime (CPU, fp32); auto (default): onnx for an X-VLM on the CPU in fp32, else eager. "
        "FLOPs, throughput and memory stay eager",
    )
    shortcut(
        p,
        "--throughput-batch",
        field="throughput_batch",
        type=int,
        help="throughput batch size (default 32)",
    )
    shortcut(
        p,
        "--budget",
        field="budget_s",
        type=float,
        help="time cap of each measurement (default 30 s)",
    )
    shortcut(
        p,
        "--teacher",
        field="teacher",
        metavar="LABEL",
        help=(
            "one of the benchmarked models: add label/probability loyalty to it and word-substitution robustness "
            "columns (nlvr2, vqa, retrieval; ID split)"
        ),
    )
    shortcut(
        p,
        "--loyalty-examples",
        field="loyalty_examples",
        type=int,
        help="ID examples for loyalty (default 256)",
    )
    shortcut(
        p,
        "--attack-examples",
        field="attack_examples",
        type=int,
        help="first M ID examples attacked per (model, task) with --teacher; 0: no attack (default 16)",
    )
    shortcut(
        p,
        "--timeout",
        field="timeout_s",
        type=float,
        help="seconds before a model's worker is killed",
    )
    p.add_argument("--resume", action="store_true", help="keep successful rows of OUT/results.jsonl, run the rest")
    p.add_argument("--report-only", action="store_true", help="only rebuild the report from OUT/results.jsonl")
    p.add_argument("--quiet", action="store_true", help="do not echo the workers' output")
    shortcut(
        p,
        "--backend",
        field="backend",
        metavar="MODULE:CLASS",
        help="advanced: the class providing finetune/load/evaluate (default: grainvl's tasks)",
    )
    p.set_defaults(func=_cmd_bench)


def _finetuned_map(entries: list[str]) -> dict[str, str]:
    mapping = {}
    for key, run in key_values(entries, "--finetuned", "LABEL:TASK=RUN"):
        if ":" not in key or not run:
            raise ValueError(f"--finetuned expects LABEL:TASK=RUN, got {key + '=' + run!r}")
        mapping[key] = run
    return mapping


def _cmd_bench(args: argparse.Namespace) -> int:
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.bench.report import write_report

    if args.report_only:
        paths = write_report(args.out / "results.jsonl", args.out)
        print(f"report: {paths['report_md']}")
        return 0
    # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
    from grainvl.recipes.bench import BenchOptions, run_bench

    if not args.models or args.world is None:
        raise ValueError("--models and --world are required (or use --report-only)")
    if args.tasks:
        tasks = comma_list(args.tasks)
    else:
        # Deferred: a command loads its recipe (and torch) only when it runs, so `grainvl --help` stays fast.
        from grainvl.tasks.registry import VLUE_TASKS

        tasks = list(VLUE_TASKS)
    options = config_from_args(BenchOptions, args)
    rows = run_bench(
        comma_list(args.models),
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
