"""Persona prediction (arXiv 2111.15093, issue 18), side by side in one run.

    python benchmarks/bench_persona.py [--train-episodes 1500] [--test-episodes 60] [--predictor-steps 500]
        [--responder-steps 800] [--batch-size 64] [--nli-pairs 20000] [--nli-steps 2500]
        [--dd-dialogues 60] [--dd-steps 150] [--evaluate-with approximator] [--threads 1]
        [--out runs/bench_persona]

On the world's ConvAI2-style dialogues (built in memory; the approximator's threshold is chosen on
the valid split), it trains

1. a persona **generator** and a persona **approximator** (history -> self / partner persona), scored
   per turn against the facts the history has revealed (fact P/R/F1, BLEU-2 / ROUGE-L / F1, bank
   retrieval accuracy);
2. the persona-conditioned **responder** on gold personas, run with none / predicted self /
   predicted partner / both / gold personas (the generator predicts), with perplexity, F1, BLEU-2,
   Distinct-1/2, Hits@1 over 20 candidates, the C-score of a Dialogue-NLI judge (against the GOLD
   persona; its accuracy on held-out pairs is printed), the exact world oracle, and the follow-up rate;
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


def _claims(report: dict, predictors: dict[str, dict], predictor: str) -> str:
    table, dd, facts = report["settings"], report["dailydialog"], report["dailydialog_personas"]
    in_domain = " / ".join(f"{predictors[predictor][role]['fact_f1']:.3f}" for role in ("self", "partner"))
    out_domain = " / ".join(f"{facts[role]['fact_f1']:.3f}" for role in ("self", "partner"))
    lines = [
        f"predicted self raises consistency: C-score {table['none']['c_score']:.3f} (none) -> "
        f"{table['self']['c_score']:.3f} (self), {table['gold']['c_score']:.3f} (gold); oracle "
        f"{table['none']['oracle']:.3f} -> {table['self']['oracle']:.3f} (self), {table['gold']['oracle']:.3f} (gold)",
        f"predicted partner raises engagingness: follow-up {table['none']['follow_up']:.3f} (none) -> "
        f"{table['partner']['follow_up']:.3f} (partner), {table['gold']['follow_up']:.3f} (gold)",
        f"the predictor transfers: fact F1 self / partner {in_domain} (ConvAI2-style test) -> {out_domain} "
        f"(DailyDialog-style); response F1 zero-shot {dd['zero-shot+none']['f1']:.3f} (none) vs "
        f"{dd['zero-shot+predicted']['f1']:.3f} (predicted), tuned {dd['tuned+none']['f1']:.3f} vs "
        f"{dd['tuned+predicted']['f1']:.3f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-episodes", type=int, default=1500, help="world train episodes (default: 1500)")
    parser.add_argument("--test-episodes", type=int, default=60, help="world test episodes (default: 60)")
    parser.add_argument("--predictor-steps", type=int, default=500, help="steps of each predictor (default: 500)")
    parser.add_argument("--responder-steps", type=int, default=800, help="responder steps (default: 800)")
    parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
    parser.add_argument("--nli-pairs", type=int, default=20000, help="NLI judge train pairs (default: 20000)")
    parser.add_argument("--nli-steps", type=int, default=2500, help="NLI judge steps (default: 2500)")
    parser.add_argument("--dd-dialogues", type=int, default=60, help="DailyDialog-style train dialogues (default: 60)")
    parser.add_argument("--dd-steps", type=int, default=150, help="DailyDialog fine-tuning steps (default: 150)")
    parser.add_argument(
        "--evaluate-with",
        choices=("generator", "approximator"),
        default="approximator",
        help="the predictor whose personas condition the responder (default: approximator)",
    )
    # One thread by default: the models are small (matrices of a few hundred rows), and on a shared 2-core
    # machine two OpenMP threads spin against the other jobs -- measured: a 40-step run of the generator
    # took 105 s with 2 threads and 18 s with 1 while two other jobs ran.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_persona"), help="output folder")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = {"data.train_episodes": args.train_episodes, "data.test_episodes": args.test_episodes}

    def fit(section: str, steps: int) -> dict:
        return {f"{section}.fit.steps": steps, f"{section}.fit.batch_size": args.batch_size}

    start = time.perf_counter()
    stages, predictors = {}, {}
    for kind in ("generator", "approximator"):
        cfg = TrainPredictorConfig(out=str(args.out / kind))
        cfg = with_values(cfg, {**data, **fit("predictor", args.predictor_steps), "predictor.kind": kind})
        predictors[kind] = run_train_predictor(cfg)
        stages[kind] = time.perf_counter() - start - sum(stages.values())
    responder_cfg = with_values(
        TrainResponderConfig(out=str(args.out / "responder")),
        {**data, **fit("responder", args.responder_steps), "dailydialog_dialogues": args.dd_dialogues},
    )
    run_train_responder(responder_cfg)
    stages["responder"] = time.perf_counter() - start - sum(stages.values())
    evaluate_cfg = EvaluateConfig(
        out=str(args.out / "evaluate"),
        predictor=str(args.out / args.evaluate_with),
        responder=str(args.out / "responder"),
    )
    evaluate_cfg = with_values(
        evaluate_cfg,
        {
            **data,
            "nli.steps": args.nli_steps,
            "nli.train_pairs": args.nli_pairs,
            "dailydialog_dialogues": args.dd_dialogues,
            "dailydialog_steps": args.dd_steps,
        },
    )
    report = run_evaluate(evaluate_cfg)
    seconds = time.perf_counter() - start
    stages["evaluate"] = seconds - sum(stages.values())
    print(_predictor_table(predictors))
    print()
    print(format_table(report))
    print()
    print(_claims(report, predictors, args.evaluate_with))
    print(f"\nresponder conditioned on the {args.evaluate_with}'s personas")
    timing = ", ".join(f"{name} {value:.0f} s" for name, value in stages.items())
    print(f"{seconds:.0f} s in all ({timing}); {torch.get_num_threads()} threads; rows in {args.out}/*/results.jsonl")
    write_json(
        args.out / "bench_persona.json",
        {
            "predictors": predictors,
            "evaluate": report,
            "seconds": stages,
            "args": {k: str(v) for k, v in vars(args).items()},
        },
    )


if __name__ == "__main__":
    main()
