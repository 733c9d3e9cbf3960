"""Persona prediction (arXiv 2111.15093, issue 18), side by side in one run.

    python benchmarks/bench_persona.py [--train-episodes 120] [--test-episodes 20] [--steps 250]
        [--batch-size 16] [--dd-dialogues 30] [--dd-steps 60] [--out runs/bench_persona]

On the world's ConvAI2-style dialogues (built in memory), it trains

1. a persona **generator** and a persona **approximator** (history -> self / partner persona), scored
   per turn against the facts the history has revealed (fact P/R/F1, BLEU-2 / ROUGE-L / F1, bank
   retrieval accuracy);
2. the persona-conditioned **responder** on gold personas, run with none / predicted self /
   predicted partner / both / gold personas (the generator predicts), with perplexity, F1, BLEU-2,
   Distinct-1/2, Hits@1 over 20 candidates, the C-score of a DNLI-style judge (against the GOLD
   persona), the exact world oracle, and the follow-up rate;
3. the transfer rows: the predictor applied to DailyDialog-style conversations, responder used as is
   and fine-tuned there.

It prints the tables (Markdown, as in docs/persona.md) and the three claims' readings; everything is
also in ``OUT/*/results.jsonl`` and ``OUT/bench_persona.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from grainvl.config import with_values
from grainvl.recipes.dialogue import (
    EvaluateConfig,
    TrainPredictorConfig,
    TrainResponderConfig,
    format_table,
    run_evaluate,
    run_train_predictor,
    run_train_responder,
)
from grainvl.utils.fileio import write_json


def _predictor_table(reports: dict[str, dict]) -> str:
    columns = ["fact_precision", "fact_recall", "fact_f1", "bleu2", "rouge_l", "f1", "retrieval_acc"]
    lines = ["| predictor | role | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for kind, report in reports.items():
        for role in ("self", "partner"):
            lines.append(f"| {kind} | {role} | " + " | ".join(f"{report[role][c]:.3f}" for c in columns) + " |")
    return "\n".join(lines)


def _claims(report: dict) -> str:
    table, dd = report["settings"], report["dailydialog"]
    lines = [
        f"predicted self raises consistency: C-score {table['none']['c_score']:.3f} (none) -> "
        f"{table['self']['c_score']:.3f} (self); oracle {table['none']['oracle']:.3f} -> {table['self']['oracle']:.3f}",
        f"predicted partner raises engagingness: follow-up {table['none']['follow_up']:.3f} (none) -> "
        f"{table['partner']['follow_up']:.3f} (partner)",
        f"the predictor transfers: DailyDialog F1 zero-shot {dd['zero-shot+none']['f1']:.3f} (none) vs "
        f"{dd['zero-shot+predicted']['f1']:.3f} (predicted); tuned {dd['tuned+none']['f1']:.3f} vs "
        f"{dd['tuned+predicted']['f1']:.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-episodes", type=int, default=120, help="world train episodes (default: 120)")
    parser.add_argument("--test-episodes", type=int, default=20, help="world test episodes (default: 20)")
    parser.add_argument("--steps", type=int, default=250, help="training steps of each model (default: 250)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--source-tokens", type=int, default=128, help="max source tokens (default: 128)")
    parser.add_argument("--dd-dialogues", type=int, default=30, help="DailyDialog-style train dialogues (default: 30)")
    parser.add_argument("--dd-steps", type=int, default=60, help="DailyDialog fine-tuning steps (default: 60)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_persona"), help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    data = {"data.train_episodes": args.train_episodes, "data.test_episodes": args.test_episodes}

    def sized(section: str) -> dict:
        return {
            f"{section}.fit.steps": args.steps,
            f"{section}.fit.batch_size": args.batch_size,
            f"{section}.model.max_source_tokens": args.source_tokens,
        }

    start = time.perf_counter()
    predictors = {}
    for kind in ("generator", "approximator"):
        cfg = TrainPredictorConfig(out=str(args.out / kind))
        cfg = with_values(cfg, {**data, **sized("predictor"), "predictor.kind": kind})
        predictors[kind] = run_train_predictor(cfg)
    responder_cfg = with_values(
        TrainResponderConfig(out=str(args.out / "responder")),
        {**data, **sized("responder"), "dailydialog_dialogues": args.dd_dialogues},
    )
    run_train_responder(responder_cfg)
    evaluate_cfg = EvaluateConfig(
        out=str(args.out / "evaluate"), predictor=str(args.out / "generator"), responder=str(args.out / "responder")
    )
    evaluate_cfg = with_values(
        evaluate_cfg,
        {
            **data,
            "nli.steps": args.steps,
            "dailydialog_dialogues": args.dd_dialogues,
            "dailydialog_steps": args.dd_steps,
        },
    )
    report = run_evaluate(evaluate_cfg)
    seconds = time.perf_counter() - start
    print(_predictor_table(predictors))
    print()
    print(format_table(report))
    print()
    print(_claims(report))
    print(f"\n{seconds:.0f} s in all; rows in {args.out}/*/results.jsonl")
    write_json(
        args.out / "bench_persona.json",
        {"predictors": predictors, "evaluate": report, "args": {k: str(v) for k, v in vars(args).items()}},
    )


if __name__ == "__main__":
    main()
